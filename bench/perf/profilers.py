"""The two profilers ``bench-perf`` uses to explain a missed goal, returning rows (the renderer writes the tables)."""
from __future__ import annotations

import cProfile
import io
import pstats
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Profile:
    """Top entries of one profiled call: ``kind`` "ops" (torch.profiler, self CPU time), "own" or "cumulative"
    (cProfile); each row (name, where or None, calls, milliseconds, share of the total in %)."""

    kind: str
    rows: list


def torch_profile(fn, top: int = 6) -> Profile:
    """Top ops by self CPU time of one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile  # lazy: only a missed goal is profiled

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1
    return Profile("ops", [(e.key, None, e.count, e.self_cpu_time_total / 1e3, 100 * e.self_cpu_time_total / total)
                           for e in ev[:top]])


def py_profile(fn, top: int = 8, cumulative: bool = False, only: str | None = None) -> Profile:
    """Top Python functions of one call of ``fn`` (cProfile) by own time, or by cumulative time for functions
    whose file path contains ``only``."""
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    col = 3 if cumulative else 2
    items = [kv for kv in st.stats.items() if only is None or only in kv[0][0]]
    rows = sorted(items, key=lambda kv: kv[1][col], reverse=True)[:top]
    total = max(v[3] for v in st.stats.values()) if cumulative else sum(v[2] for v in st.stats.values())
    out = []
    for (file, line, name), v in rows:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        out.append((name, where, v[1], v[col] * 1e3, 100 * v[col] / (total or 1)))
    return Profile("cumulative" if cumulative else "own", out)
