"""Sampling cost, measured rather than inferred: real model calls, wall time, peak memory.

``nfe`` is the number of network function evaluations per image: rows pushed through the model divided by
images produced, so a batched classifier-free-guidance call (cond + uncond, 2B rows for B images) counts 2 and
Heun's extra evaluation per step counts too. ``nfe_classifier`` counts a guiding classifier's forward+backward
passes per image the same way (classifier guidance: one per model evaluation), apart from ``nfe``.

Latency protocol (so identical cells agree): the first ``warmup_batches`` batches are produced but not timed;
latency is the median (p50, with its IQR and p95) of the per-image time of the timed batches; every model call is
timed too, and ``per_call_s`` (median seconds of one image-forward) lets a reader check latency against
NFE × per-call cost. Times come from ``time.perf_counter`` after a device synchronise (CUDA: events per call, so no
host sync per step). The thread count and the 1-minute load average before/after are recorded; a cell measured
while the load exceeded the core count is flagged ``cost_under_load``.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psutil
import torch

log = logging.getLogger("bench")


def load_average() -> float:
    """1-minute load average (NaN where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


class CostMeter:
    """Counters for one sampling run on ``device``.

    Use :func:`counting` to wrap the model, and ``with meter.batch(n):`` around the production of n images
    (synchronised on CUDA, so the time covers the GPU work). Memory: ``torch.cuda.max_memory_allocated`` since the
    meter was created (mem_kind "cuda"), else the process resident set size sampled at every model call and batch
    end (mem_kind "rss"; ru_maxrss would include whatever the process did before sampling, e.g. training).
    """

    def __init__(self, device="cpu", warmup_batches: int = 0, min_timed_batches: int = 0):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.warmup_batches, self.min_timed_batches = int(warmup_batches), int(min_timed_batches)
        self.calls = 0  # model forward calls
        self.rows = 0  # rows (image-forwards) pushed through the model
        self.images = 0
        self.classifier_rows = 0  # rows pushed through a guiding classifier (forward + backward)
        self.batch_seconds: list[float] = []
        self.batch_sizes: list[int] = []
        self.call_batch: list[int] = []  # index of the batch each timed call belongs to
        self.call_rows: list[int] = []
        self._call_seconds: list[float] = []
        self._call_events: list = []  # CUDA (start, end) events, read once at summary time
        self.extra_timings: list[dict] = []  # re-timings of the same cell (cost.repeats), pooled into latency
        self._rss_peak = 0
        self._proc = psutil.Process()
        self.load_before = load_average()
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

    def record_classifier_call(self, rows: int) -> None:
        self.classifier_rows += int(rows)

    @contextmanager
    def call(self, rows: int) -> Iterator[None]:
        """Time one model forward of ``rows`` rows and count it."""
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._call_events.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._call_seconds.append(time.perf_counter() - t0)
        self.call_batch.append(len(self.batch_seconds))
        self.call_rows.append(int(rows))
        self.record_call(rows)

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

    def timings(self) -> dict:
        """Per-image seconds of the timed batches and per-row seconds of their model calls (warm-up excluded; a
        cell with no batch after the warm-up keeps all its batches, ``warmup_excluded`` says which)."""
        if self._call_events:
            self._sync()
            self._call_seconds += [s.elapsed_time(e) / 1000 for s, e in self._call_events]
            self._call_events = []
        sec, size = np.asarray(self.batch_seconds, float), np.maximum(np.asarray(self.batch_sizes, float), 1)
        w = self.warmup_batches if len(sec) > self.warmup_batches else 0
        calls = np.asarray(self._call_seconds, float) / np.maximum(np.asarray(self.call_rows, float), 1)
        timed_call = np.asarray(self.call_batch, int) >= w
        return {"per_image": sec[w:] / size[w:], "seconds": sec[w:], "images": size[w:],
                "per_row": calls[timed_call] if len(calls) == len(timed_call) else calls, "warmup_excluded": w}

    def add_timing(self, other: CostMeter) -> None:
        """Pool the timed batches of a re-timing of the same cell (``cost.repeats``) into this meter's latency."""
        self.extra_timings.append(other.timings())

    def summary(self) -> dict[str, float | str]:
        """nfe (per image); latency_p50/p95/iqr (s per image, over the timed batches) and latency_batches;
        per_call_s (median s per image-forward); images_per_s (timed batches); peak_mem_mb, mem_kind; sample_s
        (seconds producing all images, warm-up included); num_threads; load_before/after, cost_under_load."""
        parts = [self.timings(), *self.extra_timings]
        per_image = np.concatenate([p["per_image"] for p in parts])
        per_row = np.concatenate([p["per_row"] for p in parts])
        sec, imgs = sum(float(p["seconds"].sum()) for p in parts), sum(float(p["images"].sum()) for p in parts)
        q = (lambda a, p: float(np.percentile(a, p)) if len(a) else float("nan"))  # noqa: E731
        load_after = load_average()
        cores = os.cpu_count() or 1
        if 0 < self.min_timed_batches and len(per_image) < self.min_timed_batches:
            log.warning("latency from %d timed batches (< cost.min_timed_batches=%d): lower sampling.batch_size or "
                        "raise cost.repeats for a stable median", len(per_image), self.min_timed_batches)
        return {
            "nfe": self.rows / self.images if self.images else 0.0,
            "latency_p50": q(per_image, 50),
            "latency_p95": q(per_image, 95),
            "latency_iqr": q(per_image, 75) - q(per_image, 25),
            "latency_batches": int(len(per_image)),
            "latency_warmup_batches": int(parts[0]["warmup_excluded"]),
            "per_call_s": q(per_row, 50),
            "images_per_s": imgs / sec if sec > 0 else float("nan"),
            "peak_mem_mb": float(self.peak_mem_mb()),
            "mem_kind": "cuda" if self.cuda else "rss",
            "wall_s": float(np.sum(self.batch_seconds)),
            "sample_s": float(np.sum(self.batch_seconds)),
            "num_threads": int(torch.get_num_threads()),
            "load_before": self.load_before,
            "load_after": load_after,
            "cost_under_load": bool(max(self.load_before, load_after) > cores),
            # only with classifier guidance: rows of other cells stay as they were
            **({"nfe_classifier": self.classifier_rows / self.images if self.images else 0.0}
               if self.classifier_rows else {}),
        }


class counting:
    """Wraps a model, or a module's bound ``forward``, so every call is timed and recorded on ``meter`` (calls and
    batch rows: the first positional argument's, or the ``sample`` / ``hidden_states`` / ``x`` keyword's, for a
    diffusers denoiser called by its pipeline)."""

    ROW_KWARGS = ("sample", "hidden_states", "x")

    def __init__(self, model, meter: CostMeter):
        self.model, self.meter = model, meter

    def __call__(self, *args, **kwargs):
        x = args[0] if args else next(v for k, v in kwargs.items() if k in self.ROW_KWARGS)
        with self.meter.call(x.shape[0]):
            return self.model(*args, **kwargs)
