"""Statistics over a table cell's rows: mean, and the error bar (over its seeds, or the one a row carries); ties."""
from __future__ import annotations

import math

import pandas as pd
from scipy.stats import t as student_t

from bench.metric_spec import spec

from .formatting import round12
from .load import norm, sort_key


def groups(df: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """Rows grouped by keys, groups in the fixed sort order; [({}, df)] without keys."""
    if not keys:
        return [({}, df)]
    out: dict = {}
    for i, r in df.iterrows():
        out.setdefault(tuple(norm(r[k]) for k in keys), []).append(i)
    order = sorted(out, key=lambda t: tuple(sort_key(v) for v in t))
    return [(dict(zip(keys, t)), df.loc[out[t]]) for t in order]


def own_error(row, metric: str) -> tuple:
    """(std, se, ci95) that a single row carries for ``metric``, when it is an error bar: the spread over the cell's
    independent seed blocks (``<metric>_std_over == "seeds"``), a bootstrap, or for latency the IQR of its timed
    batches. KID's std over random subsets and IS's over splits are spreads of sub-estimates, not errors: none."""
    std = norm(row.get(f"{metric}_std"))
    over = norm(row.get(f"{metric}_std_over"))
    if over is None and metric == "fid" and std is not None:  # rows from before <metric>_std_over: the scorer
        over = "bootstrap" if (norm(row.get("fid_bootstrap")) or 0) > 0 else "seeds"  # wrote fid_std for these only
    if std is not None and over == "seeds":
        r = int(norm(row.get(f"{metric}_repeats")) or norm(row.get("repeats")) or 1)
        if r < 2:
            return std, None, None  # a spread over seeds whose count the row does not say
        se = std / math.sqrt(r)
        return std, se, float(student_t.ppf(0.975, r - 1) * se)
    if std is not None and over == "bootstrap":
        lo, hi = norm(row.get(f"{metric}_ci_low")), norm(row.get(f"{metric}_ci_high"))
        return std, std, (hi - lo) / 2 if lo is not None and hi is not None else 1.96 * std
    if metric == "latency_p50" and norm(row.get("latency_iqr")) is not None and norm(row.get("latency_batches")):
        sd = norm(row.get("latency_iqr")) / 1.349  # IQR of a normal = 1.349 sd
        se = 1.2533 * sd / math.sqrt(int(norm(row.get("latency_batches"))))  # standard error of a median
        return sd, se, 1.96 * se
    return None, None, None


def aggregate(ok: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Long form: keys…, mean, std, se (standard error of the mean), ci95 (half-width of the 95% interval), n —
    sorted by keys. Over a cell's rows (its seeds: the plan never puts two configurations in one cell) when it has
    n > 1; else the row's own error bar (:func:`own_error`) or none."""
    d = ok[ok[metric].notna()]
    recs = []
    for coords, g in groups(d, keys):
        vals = g[metric].astype(float)
        n = len(vals)
        if n > 1:
            std = float(vals.std(ddof=1))
            se = std / math.sqrt(n)
            ci = float(student_t.ppf(0.975, n - 1) * se)
        else:
            std, se, ci = own_error(g.iloc[0], metric)
        recs.append({**coords, "mean": float(vals.mean()), "std": std, "se": se, "ci95": ci, "n": n})
    return pd.DataFrame(recs, columns=[*keys, "mean", "std", "se", "ci95", "n"])


def best(values: list, errs: list, metric: str, d: int) -> set:
    """Indices of the best value and of every value tied with it: equal as displayed (``d`` decimals after
    ``round12``, as the tables show them, so that two equal values stay tied whatever their last bits), or within 2
    standard errors of it (sqrt(se_a² + se_b²)) when both carry one. Empty when fewer than two values."""
    shown = [(i, round(round12(v), d), errs[i]) for i, v in enumerate(values) if v is not None]
    if len(shown) < 2:
        return set()
    pick = max if spec(metric).higher_is_better else min
    b, top_shown, eb = pick(shown, key=lambda t: t[1])
    top = values[b]
    return {i for i, v, e in shown if v == top_shown
            or (e is not None and eb is not None and abs(values[i] - top) <= 2 * math.hypot(e, eb))}
