"""Metric agreement: do the study's quality metrics rank its cells alike, and can each one tell the cells apart at
this N? Read from the rows' means and their spreads over seed blocks; nothing is recomputed.

- Kendall τ (tau-b, ties allowed) between the rankings two metrics give the cells, each metric oriented so that
  better is higher: τ = 1, the same order; 0, unrelated; -1, reversed (a fidelity and a diversity score can disagree
  on purpose: precision against recall).
- seed spread: the median over cells of a metric's std over the cell's independent seed blocks (its rows, or the
  ``<metric>_std`` a row holds over ``seeds``); median gap: the median |difference| between two cells' means;
  spread / gap: how much of a typical gap one seed block's noise is; resolved: the share of cell pairs whose
  difference exceeds two standard errors of it (the tables' rule for a tie).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from bench.metric_spec import spec

from .formatting import label, round12, split_title
from .load import norm
from .plan import Plan
from .stats import groups
from .tables import Cell, Table

# The scores beyond FID: a study whose rows carry one of them gets the agreement section without being asked.
NEW_SCORES = ("precision", "recall", "density", "coverage", "cmmd", "fd_inf", "sfid", "fd_dinov2")
MIN_CELLS = 3


def wanted(ok: pd.DataFrame, plan: Plan, asked: bool | None) -> bool:
    """Shown when asked (--agreement), or by default when the rows carry a score beyond FID."""
    if asked is not None:
        return asked
    return any(m in plan.metrics for m in NEW_SCORES)


def cell_stats(ok: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    """Per table cell: mean, std over its seed blocks (None when it has one block and no std over seeds), blocks."""
    recs = []
    for coords, g in groups(ok[ok[metric].notna()], keys):
        vals = g[metric].astype(float)
        std, n = (float(vals.std(ddof=1)), len(vals)) if len(vals) > 1 else _own_seed_std(g.iloc[0], metric)
        recs.append({**coords, "mean": float(vals.mean()), "std": std, "blocks": n})
    return pd.DataFrame(recs, columns=[*keys, "mean", "std", "blocks"])


def _own_seed_std(row, metric: str) -> tuple[float | None, int]:
    std, over = norm(row.get(f"{metric}_std")), norm(row.get(f"{metric}_std_over"))
    if metric == "fid" and over is None and std is not None and not norm(row.get("fid_bootstrap")):
        over = "seeds"  # rows written before <metric>_std_over: the scorer wrote fid_std over seeds only
    blocks = int(norm(row.get(f"{metric}_repeats")) or norm(row.get("repeats")) or 1)
    return (std, blocks) if over == "seeds" and std is not None and blocks > 1 else (None, 1)


def resolution(st: pd.DataFrame) -> dict:
    """Seed spread against the gaps between cells (see the module docstring). Means and spreads are taken at 12
    significant digits, so that two cells with the same value (a gap of 0) stay unresolved whatever their last bits."""
    means = np.array([round12(v) for v in st["mean"].to_numpy(float)])
    stds = np.array([None if s is None else round12(float(s)) for s in st["std"].to_numpy(object)], dtype=object)
    blocks = st["blocks"].to_numpy(int)
    pairs = list(itertools.combinations(range(len(st)), 2))
    gaps = [abs(means[i] - means[j]) for i, j in pairs]
    out = {"median_gap": float(np.median(gaps)) if gaps else None, "seed_spread": None, "spread_over_gap": None,
           "resolved": None}
    if all(s is not None for s in stds):
        se = [float(s) / math.sqrt(b) for s, b in zip(stds, blocks)]
        out["seed_spread"] = float(np.median([float(s) for s in stds]))
        out["resolved"] = float(np.mean([abs(means[i] - means[j]) > 2 * math.hypot(se[i], se[j]) for i, j in pairs]))
        if out["median_gap"]:
            out["spread_over_gap"] = out["seed_spread"] / out["median_gap"]
    return out


def agreement_table(ok: pd.DataFrame, plan: Plan, split: dict, asked: bool | None = None):
    """The metric-agreement table of one split: a row per quality metric, Kendall τ against every other, then its
    seed spread, median gap, their ratio and the share of resolved cell pairs. None: not wanted, or < 3 cells or
    < 2 metrics."""
    if not wanted(ok, plan, asked):
        return None
    keys = plan.rows + plan.cols
    metrics = [m for m in plan.metrics if spec(m).kind == "quality" and m in ok and ok[m].notna().all()]
    stats = {m: cell_stats(ok, keys, m) for m in metrics}
    if len(metrics) < 2 or len(stats[metrics[0]]) < MIN_CELLS:
        return None
    # ranked on 6 significant digits (the CSVs' precision): a last-bit difference between machines swaps no ranks
    oriented = {m: np.array([float(f"{v:.6g}") for v in st["mean"]]) * (1 if spec(m).higher_is_better else -1)
                for m, st in stats.items()}
    body, recs = [], []
    for m in metrics:
        tau = {o: _tau(oriented[m], oriented[o]) for o in metrics}
        res = resolution(stats[m])
        scale = spec(m).scale
        shown = [res["seed_spread"], res["median_gap"]]
        body.append([Cell(label(m))] + [Cell(_num(tau[o], 2)) for o in metrics]
                    + [Cell(_sig(v * scale if v is not None else None)) for v in shown]
                    + [Cell(_num(res["spread_over_gap"], 2)), Cell(_pct(res["resolved"]))])
        recs.append({"metric": m, **{f"tau_{o}": tau[o] for o in metrics}, **res, "cells": len(stats[m])})
    header = ["metric"] + [f"τ {label(o)}" for o in metrics] + ["seed spread", "median gap", "spread / gap",
                                                                 "pairs resolved"]
    title = f"Metric agreement over the {len(stats[metrics[0]])} cells" + split_title(split)
    notes = ["Kendall τ (tau-b) between the rankings of the cells by two metrics, each oriented so that better is "
             "higher (1: the same order, -1: reversed); seed spread: median over cells of the std over the cell's "
             "independent seed blocks (display units); median gap: median |difference| between two cells' means; "
             "pairs resolved: share of cell pairs farther apart than 2 standard errors of their difference "
             "(the tables' tie rule). '—': the rows hold no spread over seed blocks."]
    return Table("agreement", title, header, 1, body, notes, pd.DataFrame(recs), split)


def _tau(a: np.ndarray, b: np.ndarray) -> float | None:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # a metric that ranks every cell the same orders nothing
    return float(kendalltau(a, b).statistic)


def _num(v, d: int) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{round12(v) + 0.0:.{d}f}".replace("-0.00", "0.00")


def _sig(v) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{round12(v):.3g}"


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.0f} %"
