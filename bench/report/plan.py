"""Which study the rows are: rows × columns of the tables, the metrics, and the rules that keep a table cell to one
configuration and a table column to comparable numbers."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bench.metric_spec import METRICS, names, spec

from .formatting import fmt_value, split_title
from .load import ReportError, norm, sort_key
from .stats import groups

# Coordinates of a cell (what a sweep varies). `seed` is not one: rows differing only in seed are repeats. `name`
# and `model_key` are, so two sweeps or two trained models are never averaged together as if they were seeds.
FACTORS = ("name", "data", "model", "objective", "schedule", "sampler", "method", "eta", "timestep_spacing",
           "num_inference_steps", "guidance_scale", "classifier_scale", "distill_method", "distill_steps", "batch_size",
           "train_steps", "model_key", "lora_scale", "conditioning_scale")
# Settings that rows written before `key_settings` record beside the factors and that change their numbers.
RECORDED_SETTINGS = ("classifier_key", "vae_key", "text_encoder", "model_dtype", "prompts_sha256", "negative_prompt",
                     "num_prompts", "images_per_prompt")
# Entries of a row's `key_settings` (bench.keys: every setting in the cell key, by dotted config key) in which two
# seed blocks of one configuration differ. Not metric.seed: rows differing in it alone score the same images.
SEED_KEYS = ("sampling.seed",)
KINDS = ("auto", "steps", "eta", "guidance", "distill", "adapter", "edit", "generic")
KIND_TITLES = {"steps": "sampler × steps", "eta": "DDIM η × steps", "guidance": "classifier-free guidance scale",
               "distill": "distillation vs DDIM", "adapter": "adapters on a base model",
               "edit": "SDEdit strength × target", "generic": "ablation"}
# an editing study: each (data, target) is scored against its own target classes' reference images, so it is split
EDIT_STRENGTH, EDIT_SPLIT = "task.strength", ("data", "task.target")


@dataclass
class Plan:
    kind: str
    rows: list[str]
    cols: list[str]
    metrics: list[str]
    split_by: list[str] = field(default_factory=list)
    err: str = "se"  # se | std | ci95: what ± shows where a cell has seeds (rows or seed blocks)
    notes: list[str] = field(default_factory=list)  # what auto did (shown under the tables and on stderr)


def varying(df: pd.DataFrame, cols=FACTORS) -> list[str]:
    return [c for c in cols if c in df and len({norm(v) for v in df[c]}) > 1]


def has_distill(df: pd.DataFrame) -> bool:
    return "distill_method" in df and any(norm(v) not in (None, "none") for v in df["distill_method"])


def has_adapter(df: pd.DataFrame) -> bool:
    return "adapter" in df and any(norm(v) not in (None, "none") for v in df["adapter"])


def key_setting_columns(df: pd.DataFrame) -> list[str]:
    """The `key_settings` entries (columns named by dotted config key, from bench.report.load) other than seeds."""
    return sorted(c for c in df.columns if isinstance(c, str) and "." in c and c not in SEED_KEYS)


def plan_study(df: pd.DataFrame, kind="auto", rows=None, cols=None, metrics=None, split_by=(), err="se") -> Plan:
    """Pick rows × columns from what varies (or take them from the command line), and check that every table cell
    holds seed blocks of one configuration only."""
    if kind not in KINDS:
        raise ReportError(f"--kind={kind!r} is not allowed: one of {', '.join(KINDS)}")
    for c in [*(rows or []), *(cols or []), *split_by]:
        if c not in df:
            have = ", ".join(sorted(map(str, df.columns)))
            raise ReportError(f"column {c!r} is not in the result rows (have: {have})")
    ok = df[df["status"] == "ok"]
    if ok.empty:
        raise ReportError(f"no row has status 'ok' ({len(df)} failed); nothing to tabulate")
    var = varying(df)
    if kind == "auto":
        kind = ("distill" if has_distill(df) else "adapter" if has_adapter(df) else
                "edit" if varying(df, (EDIT_STRENGTH,)) else
                "guidance" if "guidance_scale" in var else
                "eta" if "eta" in var else "steps" if {"sampler", "num_inference_steps"} & set(var) else "generic")
    if kind == "edit" and not split_by:
        split_by = varying(df, EDIT_SPLIT)
    steps = ["num_inference_steps"] if "num_inference_steps" in var else []
    auto_rows = {"steps": ["sampler"] if "sampler" in var else [], "eta": ["eta"], "guidance": ["guidance_scale"],
                 "distill": ["method"], "adapter": ["model_key", *(["lora_scale"] if "lora_scale" in var else [])],
                 "edit": [EDIT_STRENGTH], "generic": []}[kind]
    auto_cols = ([] if kind == "guidance" else ["data"] if kind == "adapter" and "data" in var else
                 [c for c in steps if c not in auto_rows])
    if err not in ("se", "std", "ci95"):
        raise ReportError(f"--err={err!r} is not allowed: se, std or ci95")
    plan = Plan(kind, list(rows) if rows is not None else auto_rows, list(cols) if cols is not None else auto_cols,
                [], list(split_by), err)
    _no_setting_varies_within_cells(df, plan, explicit=rows is not None)
    if not plan.rows:  # one varying factor (or none): rows of that factor × metric columns
        plan.rows, plan.cols = plan.cols or (["name"] if "name" in df else ["cell_key"]), []
    _cells_hold_distinct_seeds(df, plan)
    plan.metrics = _pick_metrics(ok, metrics, plan)
    return plan


# Two rows of one table cell are only ever seed blocks of one configuration: the next two functions.

def _no_setting_varies_within_cells(df: pd.DataFrame, plan: Plan, explicit: bool) -> None:
    """A setting that differs inside a table cell becomes a row factor (auto) or is refused (rows given)."""
    ks = df["key_settings"].map(lambda v: isinstance(v, dict)) if "key_settings" in df else pd.Series(False, df.index)
    settings = [c for c in (*FACTORS, *RECORDED_SETTINGS) if c in df] + key_setting_columns(df)
    for f in settings:
        keys = plan.split_by + plan.rows + plan.cols
        if f in keys or len({norm(v) for v in df[f]}) < 2:
            continue
        # a key_settings entry is compared between rows that have key_settings (older rows: the columns above)
        clash = _values_within(df[ks] if "." in f else df, keys, f)
        if clash is None:
            continue
        if explicit:
            raise ReportError(f"{f} varies within table cells ({', '.join(map(fmt_value, clash))}) but is not in "
                              f"--rows/--cols/--split-by; add it or filter with --where {f}=...")
        plan.rows.append(f)
        plan.notes.append(f"{f} varies too, so it was added to the rows")


def _cells_hold_distinct_seeds(df: pd.DataFrame, plan: Plan) -> None:
    """Rows of one cell with one seed differ in something they do not record: refused, never averaged."""
    if "seed" not in df:
        return
    keys = plan.split_by + plan.rows + plan.cols
    for coords, g in groups(df[df["status"] == "ok"], keys):
        for seed, same in groups(g, ["seed"]):
            if len(same) > 1:
                where = ", ".join(f"{k}={fmt_value(v)}" for k, v in coords.items())
                raise ReportError(
                    f"{len(same)} rows of one table cell ({where}) have seed {fmt_value(seed['seed'])} but other "
                    f"cell keys ({', '.join(map(str, same['cell_key']))}): they differ in a setting the rows do not "
                    f"record (rows written before key_settings record only some), so they are not seeds of one "
                    f"configuration; report them separately or drop one with --where cell_key!=...")


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
        absent = [split_title(split)[3:] for split, part in parts if not present(part, m)]
        if absent:
            plan.notes.append(f"{m}: not in the rows of {'; '.join(absent)}, so their tables leave it out")

    if metrics:
        for m in metrics:
            if not present(ok, m):
                have = [c for c in METRICS if present(ok, c)]
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
    for m in names(default=True):
        if not present(ok, m):
            continue
        if len(gaps(m)):
            plan.notes.append(f"{m} skipped: present in only {int(ok[m].notna().sum())} of {len(ok)} ok rows")
            continue
        absent_note(m)
        skipped_note(m)
        picked.append(m)
    if not picked:
        raise ReportError(f"ok rows carry none of the metric columns {', '.join(names(default=True))}")
    return picked


def guard_settings(ok: pd.DataFrame, metric: str) -> None:
    """Refuse a column that mixes feature networks, reference sets, N, resize (quality) or hardware (cost): the
    metric's settings in bench.metric_spec."""
    for s in spec(metric).settings:
        if s not in ok:
            continue
        vals = sorted({norm(v) for v in ok.loc[ok[metric].notna(), s]}, key=sort_key)
        if len(vals) > 1:
            shown = "{" + ",".join(fmt_value(v) if v is not None else "missing" for v in vals) + "}"
            raise ReportError(f"column {metric} mixes {s} {shown}; split with --split-by {s} or filter with "
                              f"--where {s}={fmt_value(vals[0])}")
