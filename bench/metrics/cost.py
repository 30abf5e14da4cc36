"""Sampling cost, measured rather than inferred (STYLE habit 7): real model calls, wall time, peak memory.

``nfe`` is the number of network function evaluations per image: rows pushed through the model divided by
images produced, so a batched classifier-free-guidance call (cond + uncond, 2B rows for B images) counts 2 and
Heun's extra evaluation per step counts too.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Dict, Iterator, List

import numpy as np
import psutil
import torch


class CostMeter:
    """Counters for one sampling run on ``device``.

    Use :func:`counting` to wrap the model, and ``with meter.batch(n):`` around the production of n images
    (synchronised on CUDA, so the time covers the GPU work). Memory: ``torch.cuda.max_memory_allocated`` since the
    meter was created (mem_kind "cuda"), else the process resident set size sampled at every model call and batch
    end (mem_kind "rss"; ru_maxrss would include whatever the process did before sampling, e.g. training).
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.calls = 0  # model forward calls
        self.rows = 0  # rows (image-forwards) pushed through the model
        self.images = 0
        self.batch_seconds: List[float] = []
        self.batch_sizes: List[int] = []
        self._rss_peak = 0
        self._proc = psutil.Process()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def record_call(self, rows: int) -> None:
        self.calls += 1
        self.rows += int(rows)
        if not self.cuda:
            self._rss_peak = max(self._rss_peak, self._proc.memory_info().rss)

    @contextmanager
    def batch(self, n: int) -> Iterator[None]:
        """Time the production of ``n`` images."""
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.batch_seconds.append(time.perf_counter() - t0)
        self.batch_sizes.append(int(n))
        self.images += int(n)
        if not self.cuda:
            self._rss_peak = max(self._rss_peak, self._proc.memory_info().rss)

    def peak_mem_mb(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return max(self._rss_peak, self._proc.memory_info().rss) / 2**20

    def summary(self) -> Dict[str, float | str]:
        """nfe (per image), latency_p50/p95 (s per image, per batch), images_per_s, peak_mem_mb, mem_kind, wall_s
        (seconds spent producing images, excluding the consumer's work between batches)."""
        per_image = np.asarray(self.batch_seconds) / np.maximum(np.asarray(self.batch_sizes), 1)
        wall = float(np.sum(self.batch_seconds))
        return {
            "nfe": self.rows / self.images if self.images else 0.0,
            "latency_p50": float(np.percentile(per_image, 50)) if len(per_image) else float("nan"),
            "latency_p95": float(np.percentile(per_image, 95)) if len(per_image) else float("nan"),
            "images_per_s": self.images / wall if wall > 0 else float("nan"),
            "peak_mem_mb": float(self.peak_mem_mb()),
            "mem_kind": "cuda" if self.cuda else "rss",
            "wall_s": wall,
        }


class counting(torch.nn.Module):
    """Wraps a model so every forward call is recorded on ``meter`` (calls and batch rows)."""

    def __init__(self, model, meter: CostMeter):
        super().__init__()
        self.model, self.meter = model, meter

    def forward(self, x, *args, **kwargs):
        out = self.model(x, *args, **kwargs)
        self.meter.record_call(x.shape[0])
        return out
