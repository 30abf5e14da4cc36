"""2-D toy distributions with exact samplers, so metrics can draw fresh samples of the true distribution."""
from __future__ import annotations

import numpy as np
import torch

from bench.schema import ConfigError

from .memory import InMemoryDataset

TOYS = ("moons", "gmm")

MOONS_NOISE = 0.1
# Exact mean/std of the noisy two-moons mixture below (outer: (cos θ, sin θ), inner: (1 - cos θ, 0.5 - sin θ),
# θ ~ U(0, π), + N(0, 0.1²)): E[x] = 0.5, Var[x] = 0.75 + 0.01; E[y] = 0.25, Var[y] = 0.625 - 1/π - 0.0625 + 0.01.
MOONS_MEAN = np.array([0.5, 0.25])
MOONS_STD = np.sqrt(np.array([0.75 + MOONS_NOISE**2, 0.5625 - 1 / np.pi + MOONS_NOISE**2]))
GMM_MODES, GMM_RADIUS, GMM_STD = 8, np.sqrt(2.0), 0.1  # radius √2 -> per-axis variance 1 + 0.1²

SPLIT_SEED_OFFSET = {"train": 1_000, "test": 2_000}  # train/test points never share a seed with each other


def sample_true(data_cfg, n: int, seed: int) -> np.ndarray:
    """``n`` i.i.d. points (float64, (n, 2)) of the toy2d true distribution ``data_cfg.toy``.

    moons: scikit-learn's ``make_moons`` shapes (uniform angle, Gaussian noise 0.1), standardised per axis with the
    exact moments; gmm: 8 equal Gaussians (std 0.1) on a ring of radius √2.
    """
    rng = np.random.default_rng(seed)
    if data_cfg.toy == "moons":
        theta = rng.uniform(0.0, np.pi, n)
        inner = rng.random(n) < 0.5
        x = np.where(inner, 1.0 - np.cos(theta), np.cos(theta))
        y = np.where(inner, 0.5 - np.sin(theta), np.sin(theta))
        pts = np.stack([x, y], 1) + rng.normal(0.0, MOONS_NOISE, (n, 2))
        return (pts - MOONS_MEAN) / MOONS_STD
    if data_cfg.toy == "gmm":
        k = rng.integers(0, GMM_MODES, n)
        angle = 2 * np.pi * k / GMM_MODES
        centres = GMM_RADIUS * np.stack([np.cos(angle), np.sin(angle)], 1)
        return centres + rng.normal(0.0, GMM_STD, (n, 2))
    raise ConfigError("data.toy", data_cfg.toy, " | ".join(TOYS))


class PointsDataset(InMemoryDataset):
    """``data.num_train`` points (train) or ``num_train * test_fraction`` (test), unlabelled (y = -1)."""

    def __init__(self, data_cfg, split: str):
        n = int(data_cfg.num_train) or 20_000
        if split == "test":
            n = max(1, int(round(n * data_cfg.test_fraction)))
        pts = sample_true(data_cfg, n, seed=int(data_cfg.split_seed) + SPLIT_SEED_OFFSET[split])
        self.x = torch.from_numpy(pts).float()
        self.y = torch.full((n,), -1, dtype=torch.int64)
