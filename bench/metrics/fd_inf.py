"""FD∞ (Chong & Forsyth 2020, "Effectively unbiased FID and Inception Score and where to find them"): the Fréchet
distance is biased upwards at finite N, and the bias is linear in 1/N to first order, so FD is computed on random
subsets of ``points`` sizes evenly spaced from N/5 to N, a line is fitted to FD against 1/N, and its intercept
(1/N = 0) is the FD of infinitely many samples. Their code draws subsets of 5000..50000 of 50k images (N/10..N);
here N/5..N, so the smallest subset still estimates a covariance at the N = 500..1000 the studies score.

Subsets are drawn with ``numpy.random.default_rng(seed)``: one permutation per size, so the value is reproducible.
"""
from __future__ import annotations

import numpy as np

from bench.metrics.distances import frechet_distance
from bench.metrics.stats import FeatureStats


def fd_infinity(feats, ref_mu, ref_sigma, points: int = 15, seed: int = 0) -> dict:
    """FD∞ of the generated ``feats`` (N, d) against the reference Gaussian (``ref_mu``, ``ref_sigma``), with the
    fit's slope and the subset sizes, for a results row."""
    feats = np.asarray(feats, dtype=np.float64)
    n = len(feats)
    sizes = np.unique(np.linspace(n // 5, n, points).astype(np.int64))
    if points < 2 or len(sizes) < points or sizes[0] < 2:
        raise ValueError(f"FD-infinity needs {points} distinct subset sizes >= 2 between N/5 and N; N={n} is too few")
    rng = np.random.default_rng(seed)
    fds = []
    for m in sizes:
        s = FeatureStats.from_features(feats[rng.permutation(n)[:m]], keep_features=False)
        fds.append(frechet_distance(s.mu, s.sigma, ref_mu, ref_sigma))
    slope, intercept = np.polyfit(1.0 / sizes, np.asarray(fds), 1)
    return {"fd_inf": float(intercept), "fd_inf_slope": float(slope), "fd_inf_points": int(points),
            "fd_inf_n_min": int(sizes[0]), "fd_inf_n_max": int(sizes[-1]), "fd_inf_seed": int(seed),
            "fd_inf_fd_at_n": float(fds[-1])}
