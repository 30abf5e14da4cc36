"""Offline digits evaluator: a small CNN trained by the harness on the digits train split.

Penultimate-layer activations (64-d) are the FID/KID features, its 10 logits give IS (so IS is in [1, 10]). The
scores it gives are "digits-FID" / "digits-KID" / "digits-IS": comparable between runs of this harness (its
weights hash is recorded beside every score), not with Inception FID numbers in papers. It is trained once (a few
seconds on CPU), must reach ``MIN_ACCURACY`` on the held-out test split, and is cached under
``<cache_dir>/evaluators/digits_cnn-<key>/`` with the sha256 of its weights.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from bench.data import build_dataset
from bench.data.digits import resize_images
from bench.images import quantize_uint8
from bench.schema import DataConfig
from bench.utils import config_hash, umask_mode

from .common import EvaluatorError, find_evaluator, one_thread, publish, verified_meta

log = logging.getLogger("bench")

MIN_ACCURACY = 0.97
NATIVE_SIZE = 8
# Everything that changes the trained weights; part of the cache key.
TRAIN = {"arch": "digits_cnn_v2", "epochs": 20, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0,
         "shift_augment": 1}


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10, dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 2x2
            nn.Flatten(), nn.Linear(256, dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(dim, num_classes))
        # Features are standardised by train-split statistics (fixed after training, saved with the weights) so
        # that KID's cubic kernel (x.y/d + 1)^3 sees O(1) inner products, as with Inception's pool3 features.
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))

    def forward(self, x):
        """x: float (B, 1, 8, 8) in [-1, 1] -> (standardised features (B, dim), logits (B, 10))."""
        h = self.body(x)
        return (h - self.feat_mean) / self.feat_std, self.head(h)


def _dequantize(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1.0


def _random_shift(x: torch.Tensor, g: torch.Generator, k: int) -> torch.Tensor:
    """Translate each image by up to ±k pixels (background -1 fills in)."""
    b, _, h, w = x.shape
    xp = F.pad(x, (k, k, k, k), value=-1.0)
    dy, dx = (torch.randint(0, 2 * k + 1, (2, b), generator=g))
    rows = (dy[:, None] + torch.arange(h))[:, :, None].expand(b, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, :].expand(b, h, w)
    return xp[torch.arange(b)[:, None, None], 0, rows, cols][:, None]


def _digits_cfg(data_cfg):
    """The evaluator always sees native 8x8 grey digits, split like the run's data (split_seed, test_fraction)."""
    return OmegaConf.structured(DataConfig(name="digits", image_size=NATIVE_SIZE, channels=1, num_train=0,
                                           test_fraction=float(data_cfg.test_fraction),
                                           split_seed=int(data_cfg.split_seed)))


def _split(data_cfg, split: str):
    ds = build_dataset(data_cfg, split)
    # train and test on what a saved PNG holds, as the scores will
    return _dequantize(quantize_uint8(ds.x)), ds.y


def train_digits_cnn(data_cfg) -> tuple[DigitsCNN, dict]:
    """Train on the train split; returns the model and its held-out accuracy (test split)."""
    torch.manual_seed(TRAIN["seed"])
    g = torch.Generator().manual_seed(TRAIN["seed"])
    x, y = _split(data_cfg, "train")
    xt, yt = _split(data_cfg, "test")
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"])
    steps = TRAIN["epochs"] * ((len(x) + TRAIN["batch_size"] - 1) // TRAIN["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=TRAIN["lr"], total_steps=steps)
    t0 = time.time()
    model.train()
    for _ in range(TRAIN["epochs"]):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), TRAIN["batch_size"]):
            i = perm[s:s + TRAIN["batch_size"]]
            xb = _random_shift(x[i], g, TRAIN["shift_augment"])
            loss = F.cross_entropy(model(xb)[1], y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        h = model.body(x)
        model.feat_mean.copy_(h.mean(0))
        model.feat_std.copy_(h.std(0).clamp(min=1e-6))
        acc = float((model(xt)[1].argmax(1) == yt).float().mean())
    return model, {"test_accuracy": acc, "n_train": len(x), "n_test": len(xt), "train_seconds": time.time() - t0}


class DigitsFeatureNet:
    """FeatureNet wrapper: uint8 images of any size / channels -> grey 8x8 -> (64-d features, 10 logits)."""

    name = "digits_cnn"

    def __init__(self, model: DigitsCNN, weights_hash: str, in_shape: tuple, meta: dict):
        self.model, self.weights_hash, self.meta, self.dim = model.eval(), weights_hash, meta, 64
        c, h, w = in_shape
        steps = []
        if c == 3:
            steps.append("rgb->luma")
        if (h, w) != (NATIVE_SIZE, NATIVE_SIZE):
            steps.append(f"bilinear-antialias {h}x{w}->{NATIVE_SIZE}x{NATIVE_SIZE}")
        self.resize = ", ".join(steps) or f"none ({NATIVE_SIZE}x{NATIVE_SIZE})"

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor):
        x = _dequantize(images_uint8)
        if x.shape[1] == 3:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = resize_images(x, NATIVE_SIZE)
        return self.model(x)


def load_digits_cnn(cfg, info=None, use_shipped: bool = True) -> DigitsFeatureNet:
    """The digits CNN for this split convention: the shipped frozen one for the default split, else the cached one,
    trained (and cached) on first use. ``use_shipped=False`` retrains into the cache (``bench-evaluator train``)."""
    data_cfg = _digits_cfg(cfg.data)
    key = config_hash({"train": TRAIN, "split_seed": data_cfg.split_seed, "test_fraction": data_cfg.test_fraction})
    root = Path(cfg.cache_dir) / "evaluators"
    path = find_evaluator(cfg.cache_dir, f"digits_cnn-{key}", use_shipped)  # shipped (the default split) or cached
    if path is None:
        path = root / f"digits_cnn-{key}"
        log.info("training the digits-CNN evaluator (once; cached at %s, about a minute on one CPU core)", path)
        with one_thread():
            model, meta = train_digits_cnn(data_cfg)
        log.info("digits-CNN evaluator: held-out accuracy %.4f in %.0f s", meta["test_accuracy"], meta["train_seconds"])
        if meta["test_accuracy"] < MIN_ACCURACY:
            raise EvaluatorError(f"digits_cnn reached held-out accuracy {meta['test_accuracy']:.4f} < "
                                 f"{MIN_ACCURACY} required; not cached (training config {TRAIN})")
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".digits_cnn-{key}."))
        umask_mode(tmp)
        save_file(model.state_dict(), str(tmp / "model.safetensors"))
        publish(tmp, path, "model.safetensors", {**meta, "key": key, "train": TRAIN})
    meta = verified_meta(path, "model.safetensors")
    model = DigitsCNN()
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    shape = tuple(info.shape) if info is not None else (1, NATIVE_SIZE, NATIVE_SIZE)
    return DigitsFeatureNet(model, meta["weights_sha256"][:16], shape,
                            {"test_accuracy": meta["test_accuracy"], "path": str(path)})
