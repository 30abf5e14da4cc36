"""How numbers and names are shown: labels, arrows, decimals, "mean ± error", captions."""
from __future__ import annotations

import math

from bench.metric_spec import spec

from .load import norm

# Labels of the factor columns (metric labels come from bench.metric_spec).
FACTOR_LABELS = {"num_inference_steps": "steps", "guidance_scale": "guidance scale",
                 "classifier_scale": "classifier scale", "eta": "η", "timestep_spacing": "spacing",
                 "distill_method": "distillation", "distill_steps": "distill steps"}
ERR_WORDS = {"se": "standard error", "std": "std", "ci95": "95% CI (Student t)"}
BOLD_NOTE = ("**bold** = best per column, and every cell within 2 standard errors of it (a tie) "
             "({}); 'failed' = every run of the cell failed (see Failed cells); '—' = not run.")


def fmt_value(v) -> str:
    """A coordinate value as shown in tables: 7.5, 20, ddim; missing → —."""
    v = norm(v)
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def label(col: str) -> str:
    return FACTOR_LABELS.get(col) or spec(col).label


def arrow(metric: str) -> str:
    return "↑" if spec(metric).higher_is_better else "↓"


def direction(metric: str) -> str:
    return "higher" if spec(metric).higher_is_better else "lower"


def decimals(metric: str, values) -> int:
    """Fixed decimals for metrics with a known scale, else one count for the whole column: at least 3 significant
    digits of its largest and 2 of its smallest value (so every value is readable and all line up)."""
    if spec(metric).decimals is not None:
        return spec(metric).decimals
    vals = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not vals:
        return 3
    d = max(2 - math.floor(math.log10(max(vals))), 1 - math.floor(math.log10(min(vals))))
    return min(6, max(0, d))


def round12(v: float) -> float:
    """``v`` rounded to 12 significant digits, before any shorter rounding for display: a value sitting on a rounding
    tie (precision 1011/1200 = 0.8425 shown with 3 decimals) rounds the same way whatever its last bits (the order its
    seed blocks were summed in, a machine's SIMD path)."""
    return float(f"{v:.12g}")


def fixed(v: float, d: int) -> str:
    """``v`` with ``d`` decimals, after :func:`round12`."""
    return f"{round12(v):.{d}f}" if math.isfinite(v) else f"{v:.{d}f}"


def fmt_stat(mean, err, n, d, show_n) -> str:
    s = fixed(mean, d)
    if err is not None and math.isfinite(err):
        s += f" ± {fixed(err, d)}"
    if show_n:
        s += f" (n={n})"
    return s


def split_title(split: dict) -> str:
    return (" — " + ", ".join(f"{k}={fmt_value(v)}" for k, v in split.items())) if split else ""


def stats_note(longs, err: str) -> tuple[bool, str]:
    """(show n in every cell, the caption's sentence on ±) for tables built from these aggregates."""
    ns = sorted({int(n) for lg in longs for n in lg["n"]})
    what = ERR_WORDS[err]
    if ns == [1]:
        if not any(lg["se"].notna().any() for lg in longs):
            return False, "one seed per cell: no ± (KID's subset and IS's split spreads are not error bars); "
        return False, (f"± = {what} over the cell's independent seed blocks (latency: from the IQR of its timed "
                       "batches); no ± = one seed block; ")
    return len(ns) > 1, f"± = {what} over the n seeds of each cell{' (no ± where n=1)' if 1 in ns else ''}; "
