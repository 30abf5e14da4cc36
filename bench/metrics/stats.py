"""Feature statistics: streamed in float64, saved as npz so anyone can recompute a distance from files.

Images are never held all at once: each batch is quantised, pushed through the feature network and folded into
running statistics (mean and centred scatter, merged per batch with the parallel update of Chan, Golub & LeVeque
1979, which stays accurate where the textbook ``sum(x x^T) - n mu mu^T`` cancels). The features themselves are
small for our networks (d <= 2048) and are kept for KID and the bootstrap.
"""
from __future__ import annotations

import io
import os

import numpy as np
import torch

from bench.utils import atomic_write_bytes


class FeatureStats:
    """Running mean / covariance of features in float64 (Heusel et al. 2017 fit a Gaussian to these).

    ``sigma`` is the unbiased covariance (ddof = 1), as ``np.cov`` in clean-fid and torchmetrics use.
    """

    def __init__(self, keep_features: bool = True):
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None  # centred scatter sum_i (f_i - mean)(f_i - mean)^T
        self.keep_features = keep_features
        self._features: list[np.ndarray] = []

    def update(self, feats) -> None:
        f = feats.detach().cpu().double().numpy() if torch.is_tensor(feats) else np.asarray(feats, np.float64)
        if f.ndim != 2 or f.shape[0] == 0:
            raise ValueError(f"features must be a non-empty (batch, dim) array, got shape {f.shape}")
        b, mean_b = f.shape[0], f.mean(axis=0)
        c = f - mean_b
        m2_b = c.T @ c
        if self.n == 0:
            self.mean, self.m2 = mean_b, m2_b
        else:
            if f.shape[1] != self.mean.shape[0]:
                raise ValueError(f"feature dim changed from {self.mean.shape[0]} to {f.shape[1]}")
            n = self.n + b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * (b / n)
            self.m2 = self.m2 + m2_b + np.outer(delta, delta) * (self.n * b / n)
        self.n += b
        if self.keep_features:
            self._features.append(f.astype(np.float32))

    @property
    def dim(self) -> int:
        return 0 if self.mean is None else int(self.mean.shape[0])

    @property
    def mu(self) -> np.ndarray:
        self._need(1)
        return self.mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        self._need(2)
        return self.m2 / (self.n - 1)

    def features(self) -> np.ndarray:
        if not self.keep_features:
            raise RuntimeError("FeatureStats(keep_features=False) keeps no features")
        self._need(1)
        return np.concatenate(self._features)

    def _need(self, n: int) -> None:
        if self.n < n:
            raise ValueError(f"need at least {n} feature vectors, have {self.n}")

    @classmethod
    def from_features(cls, feats, keep_features: bool = True) -> FeatureStats:
        s = cls(keep_features)
        s.update(feats)
        return s

    def save_npz(self, path: str | os.PathLike, with_features: bool = False) -> None:
        """``mu``, ``sigma`` (float64), ``n`` — the clean-fid / pytorch-fid layout — plus ``features`` if asked."""
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n)}
        if with_features:
            arrays["features"] = self.features()
        save_npz_atomic(path, **arrays)


def save_npz_atomic(path: str | os.PathLike, **arrays) -> None:
    """np.savez to a temp file, then rename (readers never see a torn file)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
