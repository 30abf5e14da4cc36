"""Exact-distribution metrics for 2-D toy data: generated points vs fresh samples of the true distribution.

- Sliced Wasserstein-1 (Rabin et al. 2011; Bonneel et al. 2015): mean over seeded random unit directions θ of
  W1(θ·X, θ·Y), each 1-D W1 from scipy.stats.wasserstein_distance (sorted samples; n and m may differ).
- MMD² with a Gaussian RBF kernel (Gretton et al. 2012, "A kernel two-sample test"), unbiased estimator (can be
  slightly negative when the two sets come from one distribution); bandwidth by the median heuristic unless fixed.
Everything in float64.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import wasserstein_distance


def sliced_wasserstein(x, y, num_projections: int = 256, seed: int = 0) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    theta = np.random.default_rng(seed).standard_normal((num_projections, x.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    px, py = x @ theta.T, y @ theta.T
    return float(np.mean([wasserstein_distance(px[:, k], py[:, k]) for k in range(num_projections)]))


def median_bandwidth(x, y, max_points: int = 1000, seed: int = 0) -> float:
    """Median pairwise distance of (a seeded subset of) the pooled sample (Gretton et al. 2012's heuristic)."""
    z = np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    if len(z) > max_points:
        z = z[np.random.default_rng(seed).choice(len(z), max_points, replace=False)]
    d = np.sqrt(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1))
    return float(np.median(d[np.triu_indices(len(z), k=1)]))


def _kernel_sum(a, b, gamma: float, chunk: int = 2048, exclude_diagonal: bool = False) -> float:
    """sum_ij exp(-gamma |a_i - b_j|²) in chunks (memory stays O(chunk · len(b)))."""
    total, b2 = 0.0, (b ** 2).sum(1)
    for s in range(0, len(a), chunk):
        ai = a[s:s + chunk]
        d2 = np.maximum((ai ** 2).sum(1)[:, None] + b2[None, :] - 2 * ai @ b.T, 0.0)
        total += np.exp(-gamma * d2).sum()
    if exclude_diagonal:  # k(a_i, a_i) = 1
        total -= len(a)
    return float(total)


def mmd_rbf(x, y, bandwidth: float | None = None, seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD²_u with k(a, b) = exp(-|a - b|² / (2 h²)). Returns (mmd2, h); h = median heuristic if None."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"MMD needs at least 2 points on each side, got {n} and {m}")
    h = float(bandwidth) if bandwidth else median_bandwidth(x, y, seed=seed)
    gamma = 1.0 / (2 * h * h)
    kxx = _kernel_sum(x, x, gamma, exclude_diagonal=True) / (n * (n - 1))
    kyy = _kernel_sum(y, y, gamma, exclude_diagonal=True) / (m * (m - 1))
    kxy = _kernel_sum(x, y, gamma) / (n * m)
    return kxx + kyy - 2 * kxy, h
