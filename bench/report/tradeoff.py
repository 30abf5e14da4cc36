"""The editing study's own table and figure: realism against faithfulness over the SDEdit strength (Meng et al. 2022,
Fig. 3), one curve per edit target, and its Pareto front. Read from the rows (means over a cell's rows), never from
re-scored images."""
from __future__ import annotations

from dataclasses import replace

import matplotlib.pyplot as plt
import pandas as pd

from bench.metric_spec import spec

from .formatting import arrow, decimals, fmt_value, label, split_title
from .load import norm, sort_key
from .plan import Plan
from .plots import STYLES, Figure, _save, _slug, _split_caption
from .speedup import pareto_front
from .stats import aggregate, groups
from .tables import Cell, Table

STRENGTH, TARGET = "task.strength", "task.target"
FAITHFULNESS = "edit_l2"  # x of the curve: distance to the input (lower = more faithful), as SDEdit's L2
COLUMNS = ("fid", "kid", "edit_l2", "edit_psnr", "edit_ssim", "edit_accuracy", "clip_score", "clip_direction", "nfe",
           "latency_p50")


def realism(ok: pd.DataFrame, plan: Plan) -> str | None:
    """The curve's y: the plan's first quality metric that is a distance to the reference set (FID, else KID)."""
    return next((m for m in plan.metrics if spec(m).role == "distance" and m in ok and ok[m].notna().any()), None)


def _curves(ok: pd.DataFrame, plan: Plan):
    """Per edit target (and any other row factor but the strength): its cells' means by strength, ascending."""
    line_keys = [k for k in plan.rows + plan.cols if k != STRENGTH]
    cols = [c for c in COLUMNS if c in ok and ok[c].notna().any()]
    for coords, g in groups(ok, line_keys):
        frame = None
        for c in cols:
            a = aggregate(g, [STRENGTH], c)[[STRENGTH, "mean"]].rename(columns={"mean": c})
            frame = a if frame is None else frame.merge(a, on=STRENGTH, how="outer")
        frame = frame.sort_values(STRENGTH, key=lambda s: s.map(sort_key)).reset_index(drop=True)
        yield coords, frame


def _front(frame: pd.DataFrame, y: str) -> set[int]:
    """Indices of the strengths on the realism–faithfulness Pareto front (no other strength is both more faithful
    and more realistic)."""
    x, v = frame[FAITHFULNESS].astype(float), frame[y].astype(float)
    front = set(zip(*pareto_front(x, v)))
    return {i for i in frame.index if (float(x[i]), float(v[i])) in front}


def tradeoff_table(ok: pd.DataFrame, plan: Plan, split: dict) -> Table | None:
    """The strengths on the Pareto front of realism (FID, else KID, against the target classes' reference images)
    against faithfulness (L2 to the input): where no other strength of this target is both more faithful and more
    realistic, with their faithfulness, edit success and cost."""
    y = realism(ok, plan)
    if STRENGTH not in ok or FAITHFULNESS not in ok or y is None:
        return None
    body, frames = [], []
    for coords, frame in _curves(ok, plan):
        on = sorted(_front(frame, y))
        cols = [y] + [c for c in COLUMNS if c in frame and c != y]
        dec = {c: decimals(c, [v * spec(c).scale for v in frame[c].dropna()]) for c in cols}
        for i in on:
            r = frame.loc[i]
            body.append([Cell(fmt_value(v)) for v in coords.values()] + [Cell(fmt_value(r[STRENGTH]))]
                        + [Cell("—" if norm(r[c]) is None else f"{r[c] * spec(c).scale:.{dec[c]}f}") for c in cols])
        frames.append(frame.loc[on].assign(**coords))
    header = [label(k) for k in coords] + ["strength"] + [f"{label(c)} {arrow(c)}" for c in cols]
    title = f"Pareto front: {label(y)} against L2 to the input over the strength" + split_title(split)
    notes = [f"The strengths at which no other strength of the same target gives edits both closer to their inputs "
             f"(L2, pixels in [0, 1]) and closer to the target classes' reference images ({label(y)}); "
             "means over the cell's rows."]
    return Table("pareto", title, header, len(coords) + 1, body, notes, pd.concat(frames, ignore_index=True), split)


def tradeoff_plots(df: pd.DataFrame, plan: Plan, plots) -> list[Figure]:
    """One realism–faithfulness figure per data set (SDEdit's Fig. 3): y realism, x L2 to the input, one curve per
    target, points labelled by strength, each curve's Pareto front a wide pale step line."""
    ok = df[df["status"] == "ok"]
    y = realism(ok, plan)
    if STRENGTH not in ok or FAITHFULNESS not in ok or y is None:
        return []
    figs = []
    for split, part in groups(ok, [k for k in plan.split_by if k == "data"]):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        scale = spec(y).scale
        lines = replace(plan, rows=[k for k in plan.split_by + plan.rows if k not in split])
        for i, (coords, frame) in enumerate(_curves(part, lines)):
            xs, ys = frame[FAITHFULNESS].astype(float), frame[y].astype(float) * scale
            name = ", ".join(f"{label(k)}={fmt_value(v)}" for k, v in coords.items()) or "edits"
            line = ax.plot(xs, ys, ms=5, label=name, **STYLES[i % len(STYLES)])[0]
            for s, xv, yv in zip(frame[STRENGTH], xs, ys):
                ax.annotate(f"{fmt_value(s)}", (xv, yv), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.step(*pareto_front(xs, ys), where="post", color=line.get_color(), lw=4, alpha=0.2)
        ax.set_xlabel(f"{label(FAITHFULNESS)} {arrow(FAITHFULNESS)} (less faithful →)")
        ax.set_ylabel(f"{label(y)} vs the target classes {arrow(y)}")
        ax.set_title(f"SDEdit realism vs faithfulness{_split_caption(split)}")
        ax.legend(fontsize=7)
        figs.append(_save(fig, plots, f"tradeoff{_slug(split)}",
                          f"{label(y)} (realism, against the reference images of each target's classes) vs L2 to the "
                          f"input (faithfulness) over the SDEdit strength (point labels), one curve per target; the "
                          f"wide pale step line is each curve's Pareto front{_split_caption(split)}"))
    return figs
