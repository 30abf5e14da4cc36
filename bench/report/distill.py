"""The distillation study's own table: each cell's quality and latency, the speed-up of every student at matched
quality over the DDIM teacher (speedup.py), the quality-vs-latency Pareto front, and what the
distillation cost. Derived from the rows (means and stds over repeats), never from re-scored samples."""
from __future__ import annotations

import pandas as pd

from bench.metric_spec import spec

from .formatting import decimals, fixed, fmt_value, label
from .load import norm
from .plan import Plan
from .speedup import pareto_front, speedup_at_matched_fid
from .stats import aggregate
from .tables import Cell, Table

KEYS = ["method", "num_inference_steps"]


def _is_teacher(g: pd.DataFrame) -> bool:
    return "distill_method" not in g or norm(g["distill_method"].iloc[0]) in (None, "none")


def speedup_table(ok: pd.DataFrame, plan: Plan, split: dict) -> Table | None:
    """One row per (method, steps); students get 'speed-up at matched <metric>' = teacher latency interpolated
    (log-latency vs metric, along the teacher's monotone part) to the student's value ÷ the student's latency,
    ± the bootstrap std from the metric's std over repeats; '≥' where the student beats every teacher cell."""
    metric = next((m for m in plan.metrics if spec(m).kind == "quality" and not spec(m).higher_is_better), None)
    if metric is None or "latency_p50" not in ok or ok["latency_p50"].isna().any() or "num_inference_steps" not in ok:
        return None
    q, lat = aggregate(ok, KEYS, metric), aggregate(ok, KEYS, "latency_p50")
    cells = q.merge(lat, on=KEYS, suffixes=("", "_lat"))
    teachers = {norm(m) for m, g in ok.groupby("method") if _is_teacher(g)}
    if len(teachers) != 1:
        return None  # no teacher, or several samplers: which one a student should be compared with is ambiguous
    teacher = teachers.pop()
    t = cells[cells["method"] == teacher]
    front = set(zip(*pareto_front(cells["mean_lat"], cells["mean"])))
    extra = {c: aggregate(ok, KEYS, c).set_index(KEYS)["mean"]
             for c in ("nfe", "distill_train_steps", "distill_seconds") if c in ok and ok[c].notna().any()}
    # Rows with per_call_s (bench.metrics.cost's protocol) get a second speed-up from the model's cost alone:
    # NFE x measured per-call time, so a reader sees where it and the latency speed-up disagree.
    model_cost = None
    if "per_call_s" in ok and ok["per_call_s"].notna().all() and "nfe" in extra:
        pc = aggregate(ok, KEYS, "per_call_s").set_index(KEYS)["mean"]
        model_cost = {k: extra["nfe"].get(k) * pc.get(k) for k in pc.index}
        t_cost = [model_cost[(teacher, n)] for n in t["num_inference_steps"]]
    scale = spec(metric).scale
    d = decimals(metric, [v * scale for v in cells["mean"]])
    body, recs = [], []
    for _, r in cells.iterrows():
        key = (r["method"], r["num_inference_steps"])
        same = t[t["num_inference_steps"] == r["num_inference_steps"]]
        s = None
        if r["method"] != teacher:
            s = speedup_at_matched_fid(t["mean_lat"], t["mean"], r["mean_lat"], r["mean"],
                                       t["std"].astype(float).fillna(0.0), norm(r["std"]))
        s_cost = None
        if model_cost is not None and r["method"] != teacher:
            s_cost = speedup_at_matched_fid(t_cost, t["mean"], model_cost[key], r["mean"],
                                            t["std"].astype(float).fillna(0.0), norm(r["std"]))
        std = norm(r["std"])
        cost_cells = [] if model_cost is None else [Cell(fixed(model_cost[key] * 1000, 2)),
                                                     Cell(s_cost.text() if s_cost else "—")]
        body.append([Cell(fmt_value(v)) for v in key] + [
            Cell(fmt_value(extra["nfe"].get(key)) if "nfe" in extra else "—"),
            Cell(fixed(r["mean"] * scale, d) + (f" ± {fixed(std * scale, d)}" if std is not None else "")),
            Cell(fixed(r["mean_lat"] * 1000, 2)),
            Cell(fixed(same["mean"].iloc[0] * scale, d) if len(same) and r["method"] != teacher else "—"),
            Cell(fixed(s.teacher_latency * 1000, 2) if s else "—"),
            Cell(s.text() if s else "—", best=bool(s and s.speedup >= 10 and s.bound != "<=")),
            Cell(f"{s.lo:.1f}–{s.hi:.1f}×" if s and s.lo is not None else "—"), *cost_cells,
            Cell(fmt_value(extra["distill_train_steps"].get(key)) if "distill_train_steps" in extra
                 and r["method"] != teacher else "—"),
            Cell(f"{extra['distill_seconds'].get(key):.0f}" if "distill_seconds" in extra and r["method"] != teacher
                 and norm(extra["distill_seconds"].get(key)) is not None else "—"),
            Cell("✓" if (r["mean_lat"], r["mean"]) in front else ""),
        ])
        recs.append({**dict(zip(KEYS, key)), metric: r["mean"], f"{metric}_std": std, "latency_p50": r["mean_lat"],
                     "teacher_latency_at_match": s.teacher_latency if s else None,
                     "speedup": s.speedup if s else None, "speedup_bound": s.bound if s else None,
                     "speedup_std": s.std if s else None, "speedup_p16": s.lo if s else None,
                     "speedup_p84": s.hi if s else None, "pareto": (r["mean_lat"], r["mean"]) in front,
                     **({} if model_cost is None else {
                         "nfe_x_per_call": model_cost[key],
                         "speedup_nfe_x_per_call": s_cost.speedup if s_cost else None,
                         "speedup_nfe_x_per_call_bound": s_cost.bound if s_cost else None})})
    m = label(metric)
    header = ["method", "steps", "NFE", f"{m} ↓", "latency p50 (ms/img)", f"DDIM {m} at same steps",
              f"teacher latency at this {m} (ms)", f"speed-up at matched {m}", "68% interval",
              *([] if model_cost is None else ["NFE × per-call (ms/img)",
                                               f"speed-up at matched {m} from NFE × per-call"]),
              "distill train steps", "distill time (s)", "Pareto"]
    notes = [f"Speed-up at matched {m} = the teacher ({teacher}) latency at the student's {m} — log-latency "
             f"interpolated linearly in {m} along the teacher's monotone part — ÷ the student's latency. ± = std and "
             f"68% interval of a parametric bootstrap over the {m} std of every cell (metric repeats); '≥' = the "
             f"student beats every teacher cell (a lower bound, the teacher's best latency); '≤' = worse than the "
             f"teacher's cheapest cell. **bold** = ≥ 10×. Pareto ✓ = no cell is both faster and better. Distill "
             f"cost = training steps and seconds of all rounds that made the student (cumulative)."]
    if model_cost is not None:
        notes.append(f"NFE × per-call = the model's own cost per image (per_call_s: median time of one image-forward "
                     f"of that cell); its speed-up is the same matched-{m} interpolation on that cost instead of "
                     f"latency. Where the two speed-ups disagree, latency carries cost outside the model (scheduler "
                     f"steps, noise, Python) or was measured under other load.")
    title = f"Speed-up at matched {m} vs the {teacher} teacher, Pareto front and distillation cost" + (
        " — " + ", ".join(f"{k}={fmt_value(v)}" for k, v in split.items()) if split else "")
    return Table("speedup", title, header, 2, body, notes, pd.DataFrame(recs), split)
