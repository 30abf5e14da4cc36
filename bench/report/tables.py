"""Which study the rows are, the mixed-settings guard, and ablation tables (pandas pivot + fixed formatting)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pandas as pd
from scipy.stats import t as student_t

from .load import ReportError, fmt_value, norm, sort_key

# Coordinates of a cell (what a sweep varies). `seed` is not one: rows differing only in seed are repeats. `name`
# and `model_key` are, so two sweeps or two trained models are never averaged together as if they were seeds.
FACTORS = ("name", "data", "model", "objective", "schedule", "sampler", "method", "eta", "timestep_spacing",
           "num_inference_steps", "guidance_scale", "classifier_scale", "distill_method", "distill_steps", "batch_size",
           "train_steps", "model_key")
QUALITY = ("fid", "kid", "is", "clip_score", "swd", "mmd")
COST = ("latency_p50", "latency_p95", "images_per_s", "peak_mem_mb", "nfe", "wall_s")
DEFAULT_METRICS = QUALITY + ("latency_p50",)
HIGHER_IS_BETTER = {"is", "clip_score", "images_per_s"}
# Every choice that moves a score must be equal down a column, else the column mixes incomparable numbers.
# (Columns as written by bench.metrics.scorer; absent ones are skipped.)
_IMAGE = ("feature_net", "feature_net_hash", "resize", "quantize", "ref_id", "ref_hash", "n_ref", "num_samples",
          "repeats")
_TOY = ("n_ref", "num_samples")  # toy2d ref_id carries the seed (fresh true samples per seed): not a setting
SETTINGS = {"fid": _IMAGE + ("fid_n",), "kid": _IMAGE + ("kid_subset_size",), "is": _IMAGE + ("is_splits",),
            "clip_score": ("clip_net", "clip_net_hash", "feature_net_hash", "resize", "num_samples"),
            "swd": _TOY + ("swd_projections",), "mmd": _TOY + ("mmd_bandwidth_rule",)}
SETTINGS.update({m: ("hardware", "device") for m in COST})
LABELS = {"fid": "FID", "kid": "KID ×10³", "is": "IS", "clip_score": "CLIP score", "swd": "SWD", "mmd": "MMD",
          "latency_p50": "latency p50 (ms/img)", "latency_p95": "latency p95 (ms/img)", "images_per_s": "images/s",
          "peak_mem_mb": "peak memory (MB)", "nfe": "NFE", "nfe_classifier": "classifier NFE", "wall_s": "wall (s)",
          "num_params": "parameters", "classifier_num_params": "classifier parameters",
          "num_inference_steps": "steps", "guidance_scale": "guidance scale", "classifier_scale": "classifier scale",
          "eta": "η",
          "timestep_spacing": "spacing", "distill_method": "distillation", "distill_steps": "distill steps"}
# Display scales (CSV keeps raw units): s → ms per image; KID ×10³ as in the GAN/diffusion literature.
SCALE = {"latency_p50": 1000.0, "latency_p95": 1000.0, "kid": 1000.0}
DECIMALS = {"fid": 2, "kid": 2, "is": 2, "clip_score": 2, "nfe": 0, "nfe_classifier": 0, "images_per_s": 1,
            "peak_mem_mb": 0, "num_params": 0, "classifier_num_params": 0}
KINDS = ("auto", "steps", "eta", "guidance", "distill", "generic")
KIND_TITLES = {"steps": "sampler × steps", "eta": "DDIM η × steps", "guidance": "classifier-free guidance scale",
               "distill": "distillation vs DDIM", "generic": "ablation"}


def label(col: str) -> str:
    return LABELS.get(col, col)


def arrow(metric: str) -> str:
    return "↑" if metric in HIGHER_IS_BETTER else "↓"


@dataclass
class Plan:
    kind: str
    rows: list[str]
    cols: list[str]
    metrics: list[str]
    split_by: list[str] = field(default_factory=list)
    err: str = "se"  # se | std | ci95: what ± shows where a cell has seeds (rows or seed blocks)
    notes: list[str] = field(default_factory=list)  # what auto did (shown under the tables and on stderr)


@dataclass
class Cell:
    text: str
    best: bool = False


@dataclass
class Table:
    name: str  # file stem: table_<name>.csv
    title: str
    header: list[str]
    nkeys: int  # leading key columns (left-aligned)
    body: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    long: pd.DataFrame | None = None  # tidy numbers behind the table (CSV, W&B)
    split: dict = field(default_factory=dict)


def varying(df: pd.DataFrame, cols=FACTORS) -> list[str]:
    return [c for c in cols if c in df and len({norm(v) for v in df[c]}) > 1]


def has_distill(df: pd.DataFrame) -> bool:
    return "distill_method" in df and any(norm(v) not in (None, "none") for v in df["distill_method"])


def plan_study(df: pd.DataFrame, kind="auto", rows=None, cols=None, metrics=None, split_by=(), err="se") -> Plan:
    """Pick rows × columns from what varies (or take them from the command line), and check nothing else varies."""
    if kind not in KINDS:
        raise ReportError(f"--kind={kind!r} is not allowed: one of {', '.join(KINDS)}")
    for c in [*(rows or []), *(cols or []), *split_by]:
        if c not in df:
            raise ReportError(f"column {c!r} is not in the result rows (have: {', '.join(sorted(map(str, df.columns)))})")
    ok = df[df["status"] == "ok"]
    if ok.empty:
        raise ReportError(f"no row has status 'ok' ({len(df)} failed); nothing to tabulate")
    var = varying(df)
    if kind == "auto":
        kind = ("distill" if has_distill(df) else "guidance" if "guidance_scale" in var else
                "eta" if "eta" in var else "steps" if {"sampler", "num_inference_steps"} & set(var) else "generic")
    steps = ["num_inference_steps"] if "num_inference_steps" in var else []
    auto_rows = {"steps": ["sampler"] if "sampler" in var else [], "eta": ["eta"], "guidance": ["guidance_scale"],
                 "distill": ["method"], "generic": []}[kind]
    auto_cols = [] if kind == "guidance" else [c for c in steps if c not in auto_rows]
    if err not in ("se", "std", "ci95"):
        raise ReportError(f"--err={err!r} is not allowed: se, std or ci95")
    plan = Plan(kind, list(rows) if rows is not None else auto_rows, list(cols) if cols is not None else auto_cols,
                [], list(split_by), err)
    # Anything else that varies inside a cell would silently mix rows: add it to the rows (auto) or refuse.
    for f in var:
        keys = plan.split_by + plan.rows + plan.cols
        if f in keys:
            continue
        clash = _values_within(df, keys, f)
        if clash is None:
            continue
        if rows is not None:
            raise ReportError(f"{f} varies within table cells ({', '.join(map(fmt_value, clash))}) but is not in "
                              f"--rows/--cols/--split-by; add it or filter with --where {f}=...")
        plan.rows.append(f)
        plan.notes.append(f"{f} varies too, so it was added to the rows")
    if not plan.rows:  # one varying factor (or none): rows of that factor × metric columns
        plan.rows, plan.cols = plan.cols or (["name"] if "name" in df else ["cell_key"]), []
    plan.metrics = _pick_metrics(ok, metrics, plan)
    return plan


def _values_within(df, keys, f):
    """The values of f inside the first cell (by keys) where it takes more than one, else None."""
    seen: dict = {}
    for _, r in df.iterrows():
        seen.setdefault(tuple(norm(r[k]) for k in keys), set()).add(norm(r[f]))
    for vals in seen.values():
        if len(vals) > 1:
            return sorted(vals, key=sort_key)
    return None


def present(part: pd.DataFrame, metric: str) -> bool:
    """Some row of ``part`` has ``metric``."""
    return metric in part and part[metric].notna().any()


def _pick_metrics(ok, metrics, plan):
    """The metrics to tabulate. A metric must be in every ok row, or (with --split-by) in every row of the splits
    that have it at all: a split without it (CLIP score on digits beside shapes) shows no such table."""
    parts = groups(ok, plan.split_by)

    def declared(rows, m):  # rows that say why they have no m (`<m>_skipped`: CLIP score of unconditional samples)
        skip = f"{m}_skipped"
        return rows[rows[skip].notna()] if skip in rows else rows.iloc[0:0]

    def gaps(m):  # rows missing m inside splits that have it (every ok row without --split-by), unless they say why
        missing = pd.concat([part[part[m].isna()] if m in part else part for _, part in parts if present(part, m)]
                            or [ok.iloc[0:0]]) if plan.split_by else ok[ok[m].isna()] if m in ok else ok
        return missing.drop(declared(missing, m).index)

    def skipped_note(m):
        rows = declared(ok[ok[m].isna()] if m in ok else ok, m)
        if len(rows):
            where = "; ".join(", ".join(f"{k}={fmt_value(r[k])}" for k in plan.split_by + plan.rows + plan.cols)
                              for _, r in rows.iterrows())
            plan.notes.append(f"{m}: — where the row records why it has none ({where}: "
                              f"{'; '.join(sorted(set(map(str, rows[f'{m}_skipped']))))})")

    def absent_note(m):
        absent = [_split_title(split)[3:] for split, part in parts if not present(part, m)]
        if absent:
            plan.notes.append(f"{m}: not in the rows of {'; '.join(absent)}, so their tables leave it out")

    if metrics:
        for m in metrics:
            if not present(ok, m):
                have = [c for c in (*QUALITY, *COST) if present(ok, c)]
                raise ReportError(f"no ok row has metric {m!r} (present: {', '.join(have) or 'none'})")
            missing = gaps(m)
            if len(missing):
                r = missing.iloc[0]
                where = ", ".join(f"{k}={fmt_value(r[k])}" for k in plan.split_by + plan.rows + plan.cols) or \
                    f"cell_key={r['cell_key']}"
                raise ReportError(f"column {m} missing in {len(missing)} of {len(ok)} ok rows (e.g. {where}); "
                                  f"filter with --where or choose --metric")
            absent_note(m)
            skipped_note(m)
        return list(metrics)
    picked = []
    for m in DEFAULT_METRICS:
        if not present(ok, m):
            continue
        if len(gaps(m)):
            plan.notes.append(f"{m} skipped: present in only {int(ok[m].notna().sum())} of {len(ok)} ok rows")
            continue
        absent_note(m)
        skipped_note(m)
        picked.append(m)
    if not picked:
        raise ReportError(f"ok rows carry none of the metric columns {', '.join(DEFAULT_METRICS)}")
    return picked


def guard_settings(ok: pd.DataFrame, metric: str, split_by: list[str]) -> None:
    """Refuse a column that mixes feature networks, reference sets, N, resize (quality) or hardware (cost)."""
    for s in SETTINGS.get(metric, ()):
        if s not in ok:
            continue
        vals = sorted({norm(v) for v in ok.loc[ok[metric].notna(), s]}, key=sort_key)
        if len(vals) > 1:
            shown = "{" + ",".join(fmt_value(v) if v is not None else "missing" for v in vals) + "}"
            raise ReportError(f"column {metric} mixes {s} {shown}; split with --split-by {s} or filter with "
                              f"--where {s}={fmt_value(vals[0])}")


def groups(df: pd.DataFrame, keys: list[str]) -> list[tuple[dict, pd.DataFrame]]:
    """Rows grouped by keys, groups in the fixed sort order; [({}, df)] without keys."""
    if not keys:
        return [({}, df)]
    out: dict = {}
    for i, r in df.iterrows():
        out.setdefault(tuple(norm(r[k]) for k in keys), []).append(i)
    order = sorted(out, key=lambda t: tuple(sort_key(v) for v in t))
    return [(dict(zip(keys, t)), df.loc[out[t]]) for t in order]


def _own_error(row, metric: str) -> tuple:
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
    sorted by keys. Over a cell's rows (seeds) when it has n > 1; else the row's own error bar (:func:`_own_error`)
    or none."""
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
            std, se, ci = _own_error(g.iloc[0], metric)
        recs.append({**coords, "mean": float(vals.mean()), "std": std, "se": se, "ci95": ci, "n": n})
    return pd.DataFrame(recs, columns=[*keys, "mean", "std", "se", "ci95", "n"])


def decimals(metric: str, values) -> int:
    """Fixed decimals for metrics with a known scale, else one count for the whole column: at least 3 significant
    digits of its largest and 2 of its smallest value (so every value is readable and all line up)."""
    if metric in DECIMALS:
        return DECIMALS[metric]
    vals = [abs(v) for v in values if v is not None and math.isfinite(v) and v != 0]
    if not vals:
        return 3
    d = max(2 - math.floor(math.log10(max(vals))), 1 - math.floor(math.log10(min(vals))))
    return min(6, max(0, d))


def fmt_stat(mean, std, n, d, show_n) -> str:
    s = f"{mean:.{d}f}"
    if std is not None and math.isfinite(std):
        s += f" ± {std:.{d}f}"
    if show_n:
        s += f" (n={n})"
    return s


def _best(values: list, errs: list, metric: str, d: int) -> set:
    """Indices of the best value and of every value tied with it: equal as displayed, or within 2 standard errors
    of it (sqrt(se_a² + se_b²)) when both carry one. None when fewer than two values."""
    shown = [(i, round(v, d), errs[i]) for i, v in enumerate(values) if v is not None]
    if len(shown) < 2:
        return set()
    pick = max if metric in HIGHER_IS_BETTER else min
    b, _, eb = pick(shown, key=lambda t: t[1])
    best = values[b]
    return {i for i, v, e in shown
            if v == round(best, d) or (e is not None and eb is not None and abs(values[i] - best) <= 2 * math.hypot(e, eb))}


def _failed_coords(failed: pd.DataFrame, keys: list[str]) -> set:
    return {tuple(norm(r[k]) for k in keys) for _, r in failed.iterrows()}


ERR_WORDS = {"se": "standard error", "std": "std", "ci95": "95% CI (Student t)"}
BOLD_NOTE = ("**bold** = best per column, and every cell within 2 standard errors of it (a tie) "
             "({}); 'failed' = every run of the cell failed (see Failed cells); '—' = not run.")


def _stats_note(longs: list[pd.DataFrame], err: str) -> tuple[bool, str]:
    ns = sorted({int(n) for lg in longs for n in lg["n"]})
    what = ERR_WORDS[err]
    if ns == [1]:
        if not any(lg["se"].notna().any() for lg in longs):
            return False, "one seed per cell: no ± (KID's subset and IS's split spreads are not error bars); "
        return False, (f"± = {what} over the cell's independent seed blocks (latency: from the IQR of its timed "
                       "batches); no ± = one seed block; ")
    return len(ns) > 1, f"± = {what} over the n seeds of each cell{' (no ± where n=1)' if 1 in ns else ''}; "


def _err(r, plan: Plan, scale: float):
    e = r[plan.err]
    return e * scale if e is not None and not pd.isna(e) else None


def pivot_table(ok, failed, plan: Plan, metric: str, split: dict) -> Table:
    """metric by plan.rows × plan.cols; best per column in bold."""
    keys = plan.rows + plan.cols
    lg = aggregate(ok, keys, metric)
    scale = SCALE.get(metric, 1.0)
    d = decimals(metric, [v * scale for v in lg["mean"]])
    show_n, note = _stats_note([lg], plan.err)
    cells = {tuple(norm(r[k]) for k in keys): r for _, r in lg.iterrows()}
    fails = _failed_coords(failed, keys)
    row_vals = sorted({k[:len(plan.rows)] for k in cells | dict.fromkeys(fails)}, key=lambda t: tuple(map(sort_key, t)))
    col_vals = sorted({k[len(plan.rows):] for k in cells | dict.fromkeys(fails)}, key=lambda t: tuple(map(sort_key, t)))
    body = [[Cell(fmt_value(v)) for v in rv] for rv in row_vals]
    for ci, cv in enumerate(col_vals):
        means = [cells[rv + cv]["mean"] * scale if rv + cv in cells else None for rv in row_vals]
        ses = [norm(cells[rv + cv]["se"]) * scale if rv + cv in cells and norm(cells[rv + cv]["se"]) is not None
               else None for rv in row_vals]
        best = _best(means, ses, metric, d)
        for ri, rv in enumerate(row_vals):
            r = cells.get(rv + cv)
            if r is None:
                body[ri].append(Cell("failed" if rv + cv in fails else "—"))
            else:
                body[ri].append(Cell(fmt_stat(r["mean"] * scale, _err(r, plan, scale), int(r["n"]), d, show_n),
                                     ri in best))
    col_label = ", ".join(label(c) for c in plan.cols)
    header = [label(c) for c in plan.rows] + [", ".join(fmt_value(v) for v in cv) for cv in col_vals]
    if plan.cols:
        header[0] = f"{header[0]} \\ {col_label}" if len(plan.rows) == 1 else header[0]
    dims = " × ".join(filter(None, [" × ".join(label(c) for c in plan.rows), col_label]))
    title = f"{label(metric)} {arrow(metric)} by {dims}" + _split_title(split)
    notes = [note + BOLD_NOTE.format(f"{'higher' if metric in HIGHER_IS_BETTER else 'lower'} is better")]
    return Table(metric, title, header, len(plan.rows), body, notes, _csv_frame(lg, metric), split)


def metrics_table(ok, failed, plan: Plan, split: dict) -> Table:
    """One-factor studies (e.g. guidance scale): rows × metrics, best per metric column in bold."""
    keys = plan.rows
    longs = {m: aggregate(ok, keys, m) for m in plan.metrics}
    show_n, note = _stats_note(list(longs.values()), plan.err)
    fails = _failed_coords(failed, keys)
    row_vals = sorted({tuple(norm(r[k]) for k in keys) for lg in longs.values() for _, r in lg.iterrows()} | fails,
                      key=lambda t: tuple(map(sort_key, t)))
    body = [[Cell(fmt_value(v)) for v in rv] for rv in row_vals]
    for m, lg in longs.items():
        scale = SCALE.get(m, 1.0)
        cells = {tuple(norm(r[k]) for k in keys): r for _, r in lg.iterrows()}
        d = decimals(m, [v * scale for v in lg["mean"]])
        best = _best([cells[rv]["mean"] * scale if rv in cells else None for rv in row_vals],
                     [norm(cells[rv]["se"]) * scale if rv in cells and norm(cells[rv]["se"]) is not None else None
                      for rv in row_vals], m, d)
        for ri, rv in enumerate(row_vals):
            r = cells.get(rv)
            if r is None:
                body[ri].append(Cell("failed" if rv in fails else "—"))
            else:
                body[ri].append(Cell(fmt_stat(r["mean"] * scale, _err(r, plan, scale), int(r["n"]), d, show_n),
                                     ri in best))
    header = [label(c) for c in keys] + [f"{label(m)} {arrow(m)}" for m in plan.metrics]
    title = f"{', '.join(label(m) for m in plan.metrics)} by {' × '.join(label(c) for c in keys)}" + _split_title(split)
    notes = [note + BOLD_NOTE.format("arrow: ↓ lower / ↑ higher is better")]
    return Table("summary", title, header, len(keys), body, notes, None, split)


def _split_title(split: dict) -> str:
    return (" — " + ", ".join(f"{k}={fmt_value(v)}" for k, v in split.items())) if split else ""


def _csv_frame(lg: pd.DataFrame, metric: str) -> pd.DataFrame:
    return lg.rename(columns={"mean": metric, "std": f"{metric}_std", "se": f"{metric}_se", "ci95": f"{metric}_ci95"})


def build_tables(df: pd.DataFrame, plan: Plan, study_tables=()) -> tuple[list[Table], dict[str, pd.DataFrame]]:
    """Display tables (per metric when there are columns, one metrics table otherwise) and one tidy frame per metric;
    then each of ``study_tables`` (``fn(ok_part, plan, split) -> Table | None``, e.g. the distillation study's
    speed-up table) per split, its tidy frame under the table's name."""
    ok, failed = df[df["status"] == "ok"], df[df["status"] == "failed"]
    tables, csvs = [], {}
    # each split with the metrics its rows have (CLIP score on shapes, not on digits)
    split_groups = [(split, part, [m for m in plan.metrics if present(part, m)])
                    for split, part in groups(ok, plan.split_by)]
    for split, part, metrics in split_groups:
        for m in metrics:
            try:
                guard_settings(part, m, plan.split_by)
            except ReportError as e:
                if split:
                    raise ReportError(f"{e} (within {_split_title(split)[3:]})") from None
                raise
    for m in plan.metrics:
        frames = []
        for split, part in ((split, part) for split, part, metrics in split_groups if m in metrics):
            lg = _csv_frame(aggregate(part, plan.rows + plan.cols, m), m)
            frames.append(pd.concat([pd.DataFrame({k: [v] * len(lg) for k, v in split.items()}), lg], axis=1))
        csvs[m] = pd.concat(frames, ignore_index=True)
    for split, part, metrics in split_groups:
        fpart = failed
        for k, v in split.items():
            fpart = fpart[[norm(x) == v for x in fpart[k]]] if k in fpart else fpart.iloc[0:0]
        here = replace(plan, metrics=metrics)
        if plan.cols:
            tables += [pivot_table(part, fpart, here, m, split) for m in here.metrics]
        else:
            tables.append(metrics_table(part, fpart, here, split))
        for study_table in study_tables:
            t = study_table(part, plan, split)
            if t is not None:
                tables.append(t)
                csvs[t.name + "".join(f"_{k}={fmt_value(v)}" for k, v in split.items())] = t.long
    return tables, csvs


FIRST_STAGE = [("latent_shape", "latent shape", None), ("vae_num_params", "VAE params", 0),
               ("vae_train_steps", "VAE train steps", 0), ("vae_psnr", "recon. PSNR (dB) ↑", 2),
               ("vae_rfid", "recon. FID ↓", 3), ("real_fid", "held-out real FID", 3), ("vae_rfid_n", "N", 0)]


def first_stage_table(ok: pd.DataFrame, plan: Plan, split: dict) -> Table | None:
    """A latent family's first stage, one row per (model, VAE): what the autoencoder alone costs. Reconstruction
    FID (the VAE's decodes of the held-out split) beside those held-out images' own FID against the same reference
    statistics (the floor at that N), and PSNR; read from the rows (the values a VAE's cells share)."""
    if "vae_key" not in ok or ok["vae_key"].isna().all():
        return None
    latent = ok[ok["vae_key"].notna()]
    cols = [(c, h, d) for c, h, d in FIRST_STAGE if c in latent]
    body, frames = [], []
    for (model, vae), g in latent.groupby(["model", "vae_key"], sort=True):
        # one value per VAE (the mean, should its cells' rows differ)
        vals = {c: g[c].iloc[0] if d is None else g[c].astype(float).mean() for c, _, d in cols}
        body.append([Cell(fmt_value(model)), Cell(str(vae))] + [
            Cell(fmt_value(vals[c]) if d is None or norm(vals[c]) is None else f"{vals[c]:.{d}f}") for c, _, d in cols])
        frames.append({"model": model, "vae_key": vae, **vals})
    title = "First stage (latent families): the VAE's reconstructions of the held-out split" + _split_title(split)
    have = {c for c, _, _ in cols}
    notes = [" ".join(filter(None, [
        "recon. FID: the VAE's decodes D(mode q(z|x)) of the held-out images against the cells' reference statistics, "
        "in their feature network; held-out real FID: those images themselves (FID's floor at that N)."
        if "vae_rfid" in have else "",
        "recon. PSNR over every pixel of the held-out images in [-1, 1]." if "vae_psnr" in have else ""]))]
    return Table("first_stage", title, ["model", "VAE key"] + [h for _, h, _ in cols], 2, body, notes,
                 pd.DataFrame(frames), split)
