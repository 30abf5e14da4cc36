"""Offline evaluators: a small CNN trained by the harness on a data set's train split (digits, and the standard
sets mnist, fashion_mnist, cifar10: one entry of ``CNN_SPECS`` each).

Penultimate-layer activations (64-d) are the FID/KID features, its 10 logits give IS (so IS is in [1, 10]). The
scores it gives are "<set>-FID" / "-KID" / "-IS" (feature_net ``digits_cnn``, ``mnist_cnn``, ...): comparable
between runs of this harness (its weights hash is recorded beside every score), not with Inception FID numbers in
papers. It is trained once (seeded, one CPU thread), must reach its set's ``min_accuracy`` on the held-out test
split, and is cached under ``<cache_dir>/evaluators/<set>_cnn-<key>/`` with the sha256 of its weights; the key
holds its training settings and, for the standard sets, the content fingerprint of the files it was trained on.
The digits CNN of the default split ships with the package (``bench-evaluator list``).
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from bench.data import build_dataset, get_data_info
from bench.data.digits import resize_images
from bench.data.standard import LUMA
from bench.images import quantize_uint8
from bench.schema import DataConfig
from bench.utils import config_hash, umask_mode

from .common import EvaluatorError, find_evaluator, one_thread, publish, verified_meta

log = logging.getLogger("bench")

MIN_ACCURACY = 0.97
NATIVE_SIZE = 8
EVAL_CHUNK = 4096  # images per forward pass after training (digits' 1437 in one, as the shipped weights were made)
# Everything that changes the trained weights; part of the cache key.
TRAIN = {"arch": "digits_cnn_v2", "epochs": 20, "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0,
         "shift_augment": 1}
# The standard sets: 28x28 / 32x32 images, tens of thousands of them: fewer epochs of larger batches
STANDARD_TRAIN = {"arch": "small_cnn_v1", "epochs": 5, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4,
                  "seed": 0, "shift_augment": 2}


@dataclass(frozen=True)
class CNNSpec:
    """A data set's offline evaluator: the native shape it sees, the accuracy it must reach, its training."""

    channels: int
    size: int
    min_accuracy: float
    train: dict


CNN_SPECS = {
    "digits": CNNSpec(1, NATIVE_SIZE, MIN_ACCURACY, TRAIN),
    "mnist": CNNSpec(1, 28, 0.98, STANDARD_TRAIN),
    "fashion_mnist": CNNSpec(1, 28, 0.85, STANDARD_TRAIN),
    "cifar10": CNNSpec(3, 32, 0.60, {**STANDARD_TRAIN, "hflip": True}),
}


def cnn_name(data_name: str) -> str:
    return f"{data_name}_cnn"


class DigitsCNN(nn.Module):
    """conv-conv-pool-conv-pool -> ``dim`` features -> logits; images of 16 px and more are pooled once after the
    first convolution (28 -> 14 -> 7 -> 3, 32 -> 16 -> 8 -> 4), 8x8 digits are not (8 -> 4 -> 2)."""

    def __init__(self, num_classes: int = 10, dim: int = 64, in_channels: int = 1, size: int = NATIVE_SIZE):
        super().__init__()
        stem = [nn.MaxPool2d(2)] if size >= 16 else []
        side = (size // 2 if stem else size) // 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), *stem,
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * side * side, dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.2), nn.Linear(dim, num_classes))
        # Features are standardised by train-split statistics (fixed after training, saved with the weights) so
        # that KID's cubic kernel (x.y/d + 1)^3 sees O(1) inner products, as with Inception's pool3 features.
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))

    def forward(self, x):
        """x: float (B, C, size, size) in [-1, 1] -> (standardised features (B, dim), logits (B, 10))."""
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
    return xp[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (b, h, w, C) -> NCHW


def _random_hflip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), torch.flip(x, dims=[-1]), x)


def _native_cfg(data_cfg):
    """What the evaluator is trained on: the set at its native size and channels, all of its train split. Digits
    are split like the run's data (split_seed, test_fraction); the standard sets have their published split."""
    name = data_cfg.name
    spec = CNN_SPECS[name]
    if name == "digits":
        return OmegaConf.structured(DataConfig(name="digits", image_size=NATIVE_SIZE, channels=1, num_train=0,
                                               test_fraction=float(data_cfg.test_fraction),
                                               split_seed=int(data_cfg.split_seed)))
    return OmegaConf.structured(DataConfig(name=name, root=str(data_cfg.root), image_size=spec.size,
                                           channels=spec.channels, num_train=0))


def _cache_key(data_cfg) -> str:
    spec = CNN_SPECS[data_cfg.name]
    if data_cfg.name == "digits":  # the key of the shipped digits CNN: unchanged
        return config_hash({"train": spec.train, "split_seed": data_cfg.split_seed,
                            "test_fraction": data_cfg.test_fraction})
    return config_hash({"train": spec.train, "data_id": get_data_info(data_cfg).id})


def _split(data_cfg, split: str):
    ds = build_dataset(data_cfg, split)
    # train and test on what a saved PNG holds, as the scores will
    return _dequantize(quantize_uint8(ds.x)), ds.y


def train_digits_cnn(data_cfg) -> tuple[DigitsCNN, dict]:
    """Train the CNN of ``data_cfg.name`` (a native config, :func:`_native_cfg`) on its train split; returns the
    model and its held-out accuracy (test split)."""
    spec = CNN_SPECS[data_cfg.name]
    train = spec.train
    torch.manual_seed(train["seed"])
    g = torch.Generator().manual_seed(train["seed"])
    x, y = _split(data_cfg, "train")
    xt, yt = _split(data_cfg, "test")
    model = DigitsCNN(in_channels=spec.channels, size=spec.size)
    opt = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])
    steps = train["epochs"] * ((len(x) + train["batch_size"] - 1) // train["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train["lr"], total_steps=steps)
    t0 = time.time()
    model.train()
    for _ in range(train["epochs"]):
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), train["batch_size"]):
            i = perm[s:s + train["batch_size"]]
            xb = _random_shift(x[i], g, train["shift_augment"])
            if train.get("hflip"):
                xb = _random_hflip(xb, g)
            loss = F.cross_entropy(model(xb)[1], y[i])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        h = torch.cat([model.body(c) for c in x.split(EVAL_CHUNK)])
        model.feat_mean.copy_(h.mean(0))
        model.feat_std.copy_(h.std(0).clamp(min=1e-6))
        pred = torch.cat([model(c)[1].argmax(1) for c in xt.split(EVAL_CHUNK)])
        acc = float((pred == yt).float().mean())
    return model, {"test_accuracy": acc, "n_train": len(x), "n_test": len(xt), "train_seconds": time.time() - t0}


class DigitsFeatureNet:
    """FeatureNet wrapper: uint8 images of any size / channels -> the CNN's native shape -> (64-d features, 10
    logits). ``name``: ``<set>_cnn``."""

    def __init__(self, model: DigitsCNN, weights_hash: str, in_shape: tuple, meta: dict, data_name: str = "digits"):
        self.model, self.weights_hash, self.meta, self.dim = model.eval(), weights_hash, meta, 64
        self.name, spec = cnn_name(data_name), CNN_SPECS[data_name]
        self.channels, self.size = spec.channels, spec.size
        c, h, w = in_shape
        steps = []
        if c == 3 and spec.channels == 1:
            steps.append("rgb->luma")
        elif c == 1 and spec.channels == 3:
            steps.append("grey->rgb")
        if (h, w) != (spec.size, spec.size):
            steps.append(f"bilinear-antialias {h}x{w}->{spec.size}x{spec.size}")
        self.resize = ", ".join(steps) or f"none ({spec.size}x{spec.size})"

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor):
        x = _dequantize(images_uint8)
        if x.shape[1] == 3 and self.channels == 1:
            x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        elif x.shape[1] == 1 and self.channels == 3:
            x = x.repeat(1, 3, 1, 1)
        x = resize_images(x, self.size)
        return self.model(x)


def load_digits_cnn(cfg, info=None, use_shipped: bool = True) -> DigitsFeatureNet:
    """The CNN of ``cfg.data``'s set (digits or a standard set, ``CNN_SPECS``): the shipped frozen one (digits'
    default split), else the cached one, trained (and cached) on first use. ``use_shipped=False`` retrains into the
    cache (``bench-evaluator train``)."""
    data_cfg = _native_cfg(cfg.data)
    name, spec = data_cfg.name, CNN_SPECS[data_cfg.name]
    key = _cache_key(data_cfg)
    root = Path(cfg.cache_dir) / "evaluators"
    path = find_evaluator(cfg.cache_dir, f"{cnn_name(name)}-{key}", use_shipped)  # shipped or cached
    if path is None:
        path = root / f"{cnn_name(name)}-{key}"
        log.info("training the %s evaluator (once; cached at %s)", cnn_name(name), path)
        # digits: one thread, as its shipped weights were made; a standard set's tens of thousands of images use
        # the process's threads (its weights are trained where they are used, and hashed into every row)
        with one_thread() if name == "digits" else contextlib.nullcontext():
            model, meta = train_digits_cnn(data_cfg)
        log.info("%s evaluator: held-out accuracy %.4f in %.0f s", cnn_name(name), meta["test_accuracy"],
                 meta["train_seconds"])
        if meta["test_accuracy"] < spec.min_accuracy:
            raise EvaluatorError(f"{cnn_name(name)} reached held-out accuracy {meta['test_accuracy']:.4f} < "
                                 f"{spec.min_accuracy} required; not cached (training config {spec.train})")
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{cnn_name(name)}-{key}."))
        umask_mode(tmp)
        save_file(model.state_dict(), str(tmp / "model.safetensors"))
        extra = {} if name == "digits" else {"data_id": get_data_info(data_cfg).id}
        publish(tmp, path, "model.safetensors", {**meta, "key": key, "train": spec.train, **extra})
    meta = verified_meta(path, "model.safetensors")
    model = DigitsCNN(in_channels=spec.channels, size=spec.size)
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    shape = tuple(info.shape) if info is not None else (spec.channels, spec.size, spec.size)
    return DigitsFeatureNet(model, meta["weights_sha256"][:16], shape,
                            {"test_accuracy": meta["test_accuracy"], "path": str(path)}, name)
