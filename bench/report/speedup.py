"""Speed-up at matched quality: how much faster a student is than its teacher *at the student's FID*.

The teacher's curve (latency, FID) over its step counts is reduced to its monotone part (the Pareto front: points
with lower FID than every cheaper point), and log-latency is interpolated linearly in FID along it. The speed-up is
teacher latency at the student's FID ÷ student latency. A student better than the teacher's best point cannot be
matched: the teacher's best latency gives a lower bound (``bound=">="``); a student worse than the teacher's
cheapest point gives an upper bound (``"<="``). Uncertainty: a parametric bootstrap that redraws every FID from
N(mean, std) (std from the metric's repeats) and reports the spread of the speed-up. Pure numpy; no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Speedup:
    speedup: float  # at the mean FIDs
    bound: str  # "=" (interpolated), ">=" (student beats the teacher's best), "<=" (worse than its cheapest)
    teacher_latency: float  # teacher latency at the student's FID (or the bounding point's)
    std: float | None = None  # bootstrap std of the speed-up
    lo: float | None = None  # bootstrap 16th / 84th percentiles (a ±1σ interval, asymmetric in general)
    hi: float | None = None
    frac_bound: float | None = None  # share of bootstrap draws where the student could not be matched

    def text(self) -> str:
        """'12.3× ± 2.1' / '≥ 25.0×' — the table cell."""
        s = f"{self.speedup:.1f}×"
        if self.bound != "=":
            return ("≥ " if self.bound == ">=" else "≤ ") + s
        return s + (f" ± {self.std:.1f}" if self.std is not None and np.isfinite(self.std) else "")


def pareto_front(latency, fid) -> tuple[np.ndarray, np.ndarray]:
    """Points (sorted by latency) with lower FID than every cheaper point: the quality-vs-latency front."""
    latency, fid = np.asarray(latency, float), np.asarray(fid, float)
    order = np.lexsort((fid, latency))
    keep, best = [], np.inf
    for i in order:
        if fid[i] < best:
            keep.append(i)
            best = fid[i]
    return latency[keep], fid[keep]


def matched_latency(teacher_latency, teacher_fid, fid: float) -> tuple[float, str]:
    """Teacher latency at ``fid``: log-latency linear in FID between the two front points around it."""
    lat, f = pareto_front(teacher_latency, teacher_fid)  # latency up, FID strictly down
    if fid < f[-1]:
        return float(lat[-1]), ">="
    if fid > f[0]:
        return float(lat[0]), "<="
    # np.interp needs increasing x: FID reversed
    return float(np.exp(np.interp(fid, f[::-1], np.log(lat[::-1])))), "="


def speedup_at_matched_fid(teacher_latency, teacher_fid, student_latency: float, student_fid: float,
                           teacher_fid_std=None, student_fid_std: float | None = None, n_boot: int = 2000,
                           seed: int = 0) -> Speedup:
    """Speed-up of a student (latency, FID ± std) over a teacher curve (latency_i, FID_i ± std_i) at matched FID."""
    tl, tf = np.asarray(teacher_latency, float), np.asarray(teacher_fid, float)
    if len(tl) == 0 or len(tl) != len(tf):
        raise ValueError(f"teacher curve needs >= 1 point with latency and FID each (got {len(tl)}, {len(tf)})")
    lat, bound = matched_latency(tl, tf, float(student_fid))
    out = Speedup(lat / float(student_latency), bound, lat)
    ts = np.zeros_like(tf) if teacher_fid_std is None else np.nan_to_num(np.asarray(teacher_fid_std, float))
    ss = 0.0 if student_fid_std is None or not np.isfinite(student_fid_std) else float(student_fid_std)
    if n_boot > 0 and (ts.any() or ss):
        rng = np.random.default_rng(seed)
        draws, bounded = np.empty(n_boot), 0
        for b in range(n_boot):
            lb, kind = matched_latency(tl, tf + ts * rng.standard_normal(len(tf)),
                                       float(student_fid) + ss * rng.standard_normal())
            draws[b], bounded = lb / float(student_latency), bounded + (kind != "=")
        out.std = float(draws.std(ddof=1))
        out.lo, out.hi = (float(v) for v in np.percentile(draws, [16, 84]))
        out.frac_bound = bounded / n_boot
    return out
