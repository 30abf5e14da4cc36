"""Distances between feature sets. The arithmetic is the libraries' own; this file fixes seeds and dtypes.

- FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash equilibrium"):
  d² = |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½), via clean-fid's ``frechet_distance`` (Parmar et al. 2022,
  "On aliased resizing and surprising subtleties in GAN evaluation"), float64.
- KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / d + 1)³, averaged over random subsets; torchmetrics' ``KernelInceptionDistance``.
- IS (Salimans et al. 2016, "Improved techniques for training GANs"): exp E_x KL(p(y|x) || p(y)) over splits;
  torchmetrics' ``InceptionScore``.
- CLIPScore (Hessel et al. 2021, "CLIPScore: a reference-free evaluation metric for image captioning"), with
  torchmetrics' scaling: 100 · max(cos(image, text), 0).

torchmetrics draws its subsets / split permutation from the global torch RNG: we run it inside
``torch.random.fork_rng`` with a fixed seed, so scores are reproducible and the caller's RNG is untouched.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import torch


class _Precomputed(torch.nn.Module):
    """Feature 'network' for torchmetrics when the features are already computed (one pass per cell)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


@contextlib.contextmanager
def _seeded(seed: int):
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        torch.manual_seed(seed)
        yield


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) in float64 (clean-fid's implementation)."""
    from cleanfid.fid import frechet_distance as _fd  # lazy: clean-fid pulls in its download stack; FID only

    args = [np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2)]
    if args[0].shape != args[2].shape or args[1].shape != args[3].shape:
        raise ValueError(f"feature dims differ: mu {args[0].shape} vs {args[2].shape}, "
                         f"sigma {args[1].shape} vs {args[3].shape}")
    # clean-fid prints when it regularises a singular product, and passes scipy's deprecated sqrtm(disp=False)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        return float(_fd(*args))


def kid(feats_gen, feats_ref, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float, int]:
    """KID mean and std over ``subsets`` random subsets of ``min(subset_size, n_gen, n_ref)`` each (float64).

    Returns (kid, kid_std, subset_size_used). std is over subsets (torchmetrics' convention).
    """
    from torchmetrics.image.kid import KernelInceptionDistance  # lazy: torchmetrics.image imports slowly; KID only

    fg = torch.as_tensor(np.asarray(feats_gen), dtype=torch.float64)
    fr = torch.as_tensor(np.asarray(feats_ref), dtype=torch.float64)
    m = int(min(subset_size, fg.shape[0], fr.shape[0]))
    if m < 2:
        raise ValueError(f"KID needs at least 2 features on each side, got {fg.shape[0]} and {fr.shape[0]}")
    with _seeded(seed):
        metric = KernelInceptionDistance(feature=_Precomputed(fg.shape[1]), subsets=subsets, subset_size=m)
        metric.update(fr, real=True)
        metric.update(fg, real=False)
        mean, std = metric.compute()
    return float(mean), float(std), m


def inception_score(logits, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """IS mean and std over ``splits`` splits of a seeded permutation of the samples (torchmetrics, float64)."""
    from torchmetrics.image.inception import InceptionScore  # lazy: torchmetrics.image imports slowly; IS only

    lg = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    with _seeded(seed):
        metric = InceptionScore(feature=_Precomputed(lg.shape[1]), splits=splits)
        metric.update(lg)
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")
        mean, std = metric.compute()
    return float(mean), float(std) if splits > 1 else 0.0  # one split: no spread (torchmetrics gives NaN)


def clip_score(image_embeds, text_embeds) -> torch.Tensor:
    """Per-pair CLIPScore = 100 · max(cos(image_i, text_i), 0) (Hessel et al. 2021, torchmetrics' scaling)."""
    img = torch.nn.functional.normalize(torch.as_tensor(image_embeds).double(), dim=-1)
    txt = torch.nn.functional.normalize(torch.as_tensor(text_embeds).double(), dim=-1)
    return 100 * (img * txt).sum(-1).clamp(min=0)
