"""Figures from result rows (matplotlib Agg): metric vs NFE, Pareto front vs latency, CFG curves, distillation,
sample grids. Each is saved as PNG and PDF without dates so re-running gives the same files."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import pandas as pd

from bench.metric_spec import METRICS, spec

from .formatting import ERR_WORDS, arrow, fmt_value, label
from .load import norm, sort_key
from .plan import Plan
from .speedup import pareto_front, speedup_at_matched_fid
from .stats import aggregate, groups

META = {"png": {"Software": None}, "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None}}
plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                     "svg.hashsalt": "bench-report", "pdf.compression": 6})


@dataclass
class Figure:
    stem: str  # plots/<stem>.png and .pdf
    caption: str


def _log_x(ax, xs) -> None:
    """Log x axis ticked at the values actually run (5, 10, 20 … rather than 2×10¹)."""
    ax.set_xscale("log")
    ticks = []
    for v in sorted(set(xs)):  # of two ticks that would overprint (Heun's 19 beside 20), keep the larger
        if ticks and v / ticks[-1] < 1.25:
            ticks.pop()
        ticks.append(v)
    if len(ticks) <= 12:
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _save(fig, plots: Path, stem: str, caption: str) -> Figure:
    plots.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(plots / f"{stem}.{ext}", metadata=META[ext], bbox_inches="tight")
    plt.close(fig)
    return Figure(stem, caption)


def _slug(split: dict) -> str:
    return "".join("__" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{k}-{fmt_value(v)}") for k, v in split.items())


# Lines that coincide (DDIM and Euler are the same sampler for an ε model) must stay visible: each series gets its
# own marker and dash pattern, drawn with decreasing size so an identical curve underneath still shows.
STYLES = [dict(marker=m, ls=ls) for m, ls in zip("osD^vPX*", ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)),
                                                            (0, (1, 1)), (0, (5, 3))])]


def _series(ok: pd.DataFrame, plan: Plan, x: str, metric: str):
    """(line label, x, mean, error bar) per group of the table rows, x ascending; the error bar is what the
    tables' ± shows (plan.err), 0 where a point has none."""
    line_keys = [k for k in plan.rows + plan.cols if k not in (x, "num_inference_steps", "nfe")]
    scale = spec(metric).scale
    for coords, g in groups(ok, line_keys):
        lg = aggregate(g, [x], metric).sort_values(x, key=lambda s: s.map(sort_key))
        err = [(e or 0.0) * scale for e in map(norm, lg[plan.err])]
        name = ", ".join(f"{fmt_value(v)}" if k in ("sampler", "method") else f"{label(k)}={fmt_value(v)}"
                         for k, v in coords.items()) or metric
        yield name, lg[x].astype(float).tolist(), (lg["mean"] * scale).tolist(), err


def _log_y_if_wide(ax, ys) -> bool:
    """Log y when positive values span more than a decade (few-step FIDs dwarf the rest on a linear axis)."""
    pos = [y for y in ys if y is not None and y > 0]
    if pos and len(pos) == len([y for y in ys if y is not None]) and max(pos) / min(pos) > 10:
        ax.set_yscale("log")
        return True
    return False


def vs_nfe(ok, plan, metric, plots, split) -> Figure | None:
    x = "nfe" if "nfe" in ok and ok["nfe"].notna().all() else "num_inference_steps"
    if x not in ok or len({norm(v) for v in ok[x]}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    allx, ally, any_err = [], [], False
    series = list(_series(ok, plan, x, metric))
    for i, (name, xs, ys, es) in enumerate(series):
        sty = STYLES[i % len(STYLES)]
        ax.errorbar(xs, ys, yerr=es if any(es) else None, ms=6 - 3 * i / max(1, len(series) - 1), capsize=2,
                    label=name, mfc="none" if i % 2 else None, **sty)
        allx, ally, any_err = allx + xs, ally + ys, any_err or any(es)
    _log_x(ax, allx)
    log_y = _log_y_if_wide(ax, ally)
    ax.set_xlabel("NFE (model evaluations per image)" if x == "nfe" else "steps")
    ax.set_ylabel(f"{label(metric)} {arrow(metric)}")
    ax.set_title(f"{label(metric)} vs {'NFE' if x == 'nfe' else 'steps'}{_split_caption(split)}")
    ax.legend(fontsize=7, ncol=2)
    bars = f"error bars: {ERR_WORDS[plan.err]} over seeds" if any_err else "one seed per point: no error bars"
    return _save(fig, plots, f"{metric}_vs_nfe{_slug(split)}", f"{label(metric)} vs NFE per "
                 f"{' × '.join(label(k) for k in plan.rows) or 'cell'} (log x{', log y' if log_y else ''}; {bars}; "
                 "coinciding curves keep their own marker and dashes)")


def pareto(points: list[tuple[float, float]], higher: bool) -> list[tuple[float, float]]:
    """Points not beaten on both latency (lower) and the metric; ascending latency."""
    sign = -1.0 if higher else 1.0
    lat, m = pareto_front([p[0] for p in points], [sign * p[1] for p in points])
    return [(float(a), sign * float(b)) for a, b in zip(lat, m)]


def vs_latency(ok, plan, metric, plots, split) -> Figure | None:
    if "latency_p50" not in ok or ok["latency_p50"].isna().any() or len(ok) < 2:
        return None
    keys = plan.rows + plan.cols
    line_keys = [k for k in plan.rows if k not in ("num_inference_steps",)]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    scale = spec(metric).scale
    pts = []
    for coords, g in groups(ok, line_keys):
        lat = aggregate(g, keys, "latency_p50")
        val = aggregate(g, keys, metric)
        xs, ys = (lat["mean"] * 1000).tolist(), (val["mean"] * scale).tolist()
        name = ", ".join(fmt_value(v) for v in coords.values()) or metric
        ax.plot(xs, ys, "o", ms=4, label=name)
        for (_, r), xv, yv in zip(val.iterrows(), xs, ys):
            tag = ",".join(fmt_value(r[c]) for c in plan.cols)
            if tag:
                ax.annotate(tag, (xv, yv), fontsize=6, xytext=(2, 2), textcoords="offset points")
        pts += list(zip(xs, ys))
    front = pareto(pts, spec(metric).higher_is_better)
    ax.step(*zip(*front), where="post", color="k", lw=1, alpha=0.6, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("latency p50 (ms per image, log)")
    ax.set_ylabel(f"{label(metric)} {arrow(metric)}")
    ax.set_title(f"{label(metric)} vs latency{_split_caption(split)}")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, plots, f"{metric}_vs_latency{_slug(split)}",
                 f"{label(metric)} vs latency p50 with the Pareto front (labels: {', '.join(map(label, plan.cols))})")


def cfg_curves(ok, plan, metrics, plots, split) -> Figure | None:
    # the trade-off guidance makes: a distance to the data (left axis) against alignment with the condition
    # (CLIP score), else a sample score (IS), on the right
    left = next((m for m in METRICS if m in metrics and METRICS[m].role == "distance"), None)
    right = next((m for role in ("alignment", "score") for m in METRICS if m in metrics and METRICS[m].role == role),
                 None)
    if "guidance_scale" not in ok or left is None:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    p = Plan(plan.kind, [k for k in plan.rows if k != "guidance_scale"], [], [])
    lines, any_err = [], False
    for name, xs, ys, es in _series(ok, p, "guidance_scale", left):
        any_err = any_err or any(es)
        lines.append(ax.errorbar(xs, ys, yerr=es if any(es) else None, marker="o", ms=3.5, capsize=2, color="C0",
                                 label=f"{label(left)} {arrow(left)}" + ("" if name == left else f" ({name})")))
    ax.set_xlabel("guidance scale (diffusers: 0 uncond., 1 cond., > 1 CFG)")
    ax.set_ylabel(f"{label(left)} {arrow(left)}", color="C0")
    if right:
        ax2 = ax.twinx()
        ax2.grid(False)
        for name, xs, ys, es in _series(ok, p, "guidance_scale", right):
            any_err = any_err or any(es)
            lines.append(ax2.errorbar(xs, ys, yerr=es if any(es) else None, marker="s", ms=3.5, capsize=2,
                                      color="C1", ls="--",
                                      label=f"{label(right)} {arrow(right)}" + ("" if name == right else f" ({name})")))
        ax2.set_ylabel(f"{label(right)} {arrow(right)}", color="C1")
    ax.legend(handles=lines, fontsize=7, loc="best")
    ax.set_title(f"Classifier-free guidance{_split_caption(split)}")
    both = f"{label(left)} and {label(right)}" if right else label(left)
    return _save(fig, plots, f"cfg_{left}{'_' + right if right else ''}{_slug(split)}",
                 f"{both} vs guidance scale (twin axes; "
                 f"{'error bars: standard error over seeds' if any_err else 'one seed per point: no error bars'})")


def distill(ok, plan, metric, plots, split) -> Figure | None:
    """Teacher (DDIM) and students: metric vs steps and vs latency, with the Pareto front and each student's
    speed-up at matched metric over the teacher (speedup.py; lower-is-better metrics)."""
    if "num_inference_steps" not in ok:
        return None
    has_lat = "latency_p50" in ok and ok["latency_p50"].notna().all()
    fig, axes = plt.subplots(1, 2 if has_lat else 1, figsize=(9 if has_lat else 5, 3.6), squeeze=False)
    scale = spec(metric).scale
    dm = ok["distill_method"] if "distill_method" in ok else pd.Series([None] * len(ok), index=ok.index)
    teacher = ok[[norm(v) in (None, "none") for v in dm]]
    ref = None
    if has_lat and len(teacher) and not spec(metric).higher_is_better and teacher["method"].nunique() == 1:
        ref = (aggregate(teacher, ["num_inference_steps"], "latency_p50")["mean"].to_numpy(),
               aggregate(teacher, ["num_inference_steps"], metric)["mean"].to_numpy())
    allx, ally = [], []
    top_student: dict = {}  # steps -> the highest student value there
    for _, g in groups(ok, ["method"]):
        if "distill_method" in g and norm(g["distill_method"].iloc[0]) not in (None, "none"):
            for _, r in aggregate(g, ["num_inference_steps"], metric).iterrows():
                k = float(r["num_inference_steps"])
                top_student[k] = max(top_student.get(k, -float("inf")), r["mean"])
    for i, (coords, g) in enumerate(groups(ok, ["method"])):
        name = fmt_value(coords["method"])
        student = norm(g["distill_method"].iloc[0]) not in (None, "none") if "distill_method" in g else False
        val = aggregate(g, ["num_inference_steps"], metric)
        sty = dict(marker="o" if student else "s", ms=4, ls="-" if student else "--", color=f"C{i}",
                   label=name + ("" if student else " (teacher)"))
        axes[0][0].plot(val["num_inference_steps"].astype(float), val["mean"] * scale, **sty)
        if has_lat:
            lat = aggregate(g, ["num_inference_steps"], "latency_p50")
            axes[0][1].plot(lat["mean"] * 1000, val["mean"] * scale, **sty)
            allx += list(lat["mean"] * 1000)
            ally += list(val["mean"] * scale)
            for (_, lr), (_, vr) in zip(lat.iterrows(), val.iterrows()):
                tag = f"{fmt_value(lr['num_inference_steps'])}"
                if student and ref and float(lr["num_inference_steps"]) <= 8:  # the few-step regime; less clutter
                    s = speedup_at_matched_fid(ref[0], ref[1], lr["mean"], vr["mean"], n_boot=0)
                    tag += " " + s.text().replace("× ", "×").split(" ±")[0]
                # of the students at one step, the highest is labelled above its point and the others below, so
                # their labels do not overlap
                below = student and vr["mean"] < top_student.get(float(lr["num_inference_steps"]), -float("inf"))
                axes[0][1].annotate(tag, (lr["mean"] * 1000, vr["mean"] * scale), fontsize=6,
                                    xytext=(2, -8) if below else (2, 2), textcoords="offset points")
    _log_x(axes[0][0], [float(v) for v in ok["num_inference_steps"]])
    axes[0][0].set_xlabel("steps")
    axes[0][0].set_title(f"{label(metric)} vs steps{_split_caption(split)}")
    if has_lat:
        if not spec(metric).higher_is_better:
            fx, fy = zip(*pareto(list(zip(allx, ally)), higher=False))
            axes[0][1].step(fx, fy, where="post", color="0.6", lw=3, alpha=0.4, zorder=0, label="Pareto front")
        axes[0][1].set_xscale("log")
        axes[0][1].set_xlabel("latency p50 (ms per image, log)")
        axes[0][1].set_title(f"{label(metric)} vs latency" + (" (labels: steps, speed-up at matched "
                                                             f"{label(metric)})" if ref else ""))
    for ax in axes[0]:
        ax.set_ylabel(f"{label(metric)} {arrow(metric)}")
        ax.legend(fontsize=7)
        if ally and min(ally) > 0 and max(ally) / min(ally) > 10:
            ax.set_yscale("log")  # few-step teachers are orders of magnitude worse than students
    cap = f"Distillation vs DDIM: {label(metric)} vs steps" + (
        f" and vs latency with the Pareto front; labels: steps and (students, ≤ 8 steps) the speed-up over the "
        f"teacher at matched {label(metric)}" if ref else "")
    return _save(fig, plots, f"distill_{metric}{_slug(split)}", cap)


def grid_path(row) -> Path | None:
    cd = norm(row.get("cell_dir"))
    if not cd:
        return None
    p = Path(cd)
    p = p if p.is_absolute() else Path(row["_results_dir"]) / p
    return p / "grid.png" if (p / "grid.png").is_file() else None


def sample_grids(ok, plan, plots, split) -> Figure | None:
    """Each cell's grid.png (lowest seed) placed as in the table: table rows × table columns."""
    if "cell_dir" not in ok:
        return None
    rows, cols = plan.rows, plan.cols
    cells = {}
    for coords, g in groups(ok, rows + cols):
        g = g.sort_values("seed", key=lambda s: s.map(sort_key)) if "seed" in g else g
        path = next((p for p in map(grid_path, (r for _, r in g.iterrows())) if p), None)
        if path:
            cells[tuple(coords.values())] = path
    if not cells:
        return None
    if not cols:  # one-factor study: lay the cells out in a row, not a tall column
        rows, cols = [], rows
    rv = sorted({k[:len(rows)] for k in cells}, key=lambda t: tuple(map(sort_key, t)))
    cv = sorted({k[len(rows):] for k in cells}, key=lambda t: tuple(map(sort_key, t)))
    fig, axes = plt.subplots(len(rv), len(cv), figsize=(1.7 * len(cv) + 0.6, 1.7 * len(rv) + 0.4), squeeze=False)
    for i, r in enumerate(rv):
        for j, c in enumerate(cv):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            if r + c in cells:
                img = plt.imread(cells[r + c])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "—", ha="center", va="center", transform=ax.transAxes)
            if i == 0 and cols:
                ax.set_title(", ".join(f"{label(k)}={fmt_value(v)}" for k, v in zip(cols, c)), fontsize=8)
            if j == 0 and rows:
                ax.set_ylabel("\n".join(fmt_value(v) if k in ("sampler", "method") else f"{label(k)}={fmt_value(v)}"
                                         for k, v in zip(rows, r)), fontsize=8)  # a factor per line: no overlap
    fig.suptitle(f"Samples per cell{_split_caption(split)}", fontsize=10)
    return _save(fig, plots, f"grids{_slug(split)}", "Sample grids per cell (first seed), laid out as the tables")


def _split_caption(split: dict) -> str:
    return (" — " + ", ".join(f"{k}={fmt_value(v)}" for k, v in split.items())) if split else ""


def make_plots(df: pd.DataFrame, plan: Plan, plots: Path) -> list[Figure]:
    ok = df[df["status"] == "ok"]
    quality = [m for m in plan.metrics if spec(m).kind in ("quality", "other")]
    primary = (quality or plan.metrics)[0]
    figs = []
    for split, part in groups(ok, plan.split_by):
        if plan.kind == "guidance":
            figs.append(cfg_curves(part, plan, plan.metrics, plots, split))
        elif plan.kind == "distill":
            figs.append(distill(part, plan, primary, plots, split))
        elif plan.kind != "edit":
            figs.append(vs_nfe(part, plan, primary, plots, split))
        if plan.kind not in ("guidance", "distill", "edit") and primary != "latency_p50":
            figs.append(vs_latency(part, plan, primary, plots, split))
        figs.append(sample_grids(part, plan, plots, split))
    return [f for f in figs if f]
