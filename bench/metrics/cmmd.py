"""CMMD (Jayasumana et al. 2024, "Rethinking FID: towards a better evaluation metric for image generation"): MMD²
between CLIP image embeddings of the reference and generated images, as google-research's ``cmmd/distance.py``:

- embeddings L2-normalised (``cmmd/embedding.py`` divides by the norm; the harness's CLIP *features* are
  sqrt(d)-scaled for FID/KID, so they are normalised again here),
- Gaussian RBF kernel k(x, y) = exp(-|x - y|² / (2 σ²)) with σ = 10,
- the biased (V-statistic) estimator over the full sets, diagonals included: mean k(x, x') + mean k(y, y')
  - 2 mean k(x, y),
- scaled by 1000.

Kernel sums run over float64 tiles of ``TILE`` rows, so memory does not grow with N beyond the embeddings.
To first order in 1/σ² (unit vectors: |x - y|² <= 4), CMMD = 1000 |mean(x) - mean(y)|² / σ².
"""
from __future__ import annotations

import numpy as np
import torch

SIGMA = 10.0
SCALE = 1000.0
TILE = 4096


def unit(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    return x / torch.linalg.norm(x, dim=1, keepdim=True)


def _kernel_mean(a: torch.Tensor, b: torch.Tensor | None, gamma: float) -> float:
    """mean over all pairs (i, j) of exp(-gamma |a_i - b_j|²), summed tile by tile; ``b=None``: b is a, and the
    symmetric sum takes the tiles above the diagonal twice."""
    same = b is None
    b = a if same else b
    na, nb = (a * a).sum(1), (b * b).sum(1)
    total = 0.0
    for i in range(0, len(a), TILE):
        for j in range(i if same else 0, len(b), TILE):
            d2 = (a[i:i + TILE] @ b[j:j + TILE].T).mul_(-2.0).add_(na[i:i + TILE, None]).add_(nb[None, j:j + TILE])
            total += (2.0 if same and j > i else 1.0) * float(d2.mul_(-gamma).exp_().sum())
    return total / (len(a) * len(b))


def cmmd(ref_embeds, gen_embeds, sigma: float = SIGMA) -> float:
    """CMMD between two sets of CLIP image embeddings (N, d), normalised here; ``SCALE`` · biased MMD²."""
    x, y = unit(ref_embeds), unit(gen_embeds)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"embedding dims differ: {x.shape[1]} vs {y.shape[1]}")
    gamma = 1.0 / (2.0 * sigma ** 2)
    return SCALE * (_kernel_mean(x, None, gamma) + _kernel_mean(y, None, gamma) - 2.0 * _kernel_mean(x, y, gamma))
