"""The report's tables: one metric by rows × columns (pivot) or rows × metrics (a one-factor study); each column's
cells made by one loop (mean ± error, best and ties in bold, 'failed', '—')."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from bench.metric_spec import spec

from .formatting import (
    BOLD_NOTE,
    arrow,
    decimals,
    direction,
    fixed,
    fmt_stat,
    fmt_value,
    label,
    split_title,
    stats_note,
)
from .load import ReportError, norm, sort_key
from .plan import Plan, guard_settings, present
from .stats import aggregate, best, groups


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


def _by_key(lg: pd.DataFrame, keys: list[str]) -> dict:
    return {tuple(norm(r[k]) for k in keys): r for _, r in lg.iterrows()}


def _sorted(coords) -> list[tuple]:
    return sorted(coords, key=lambda t: tuple(map(sort_key, t)))


def column(cells: list, failed: list[bool], metric: str, d: int, err: str, show_n: bool) -> list[Cell]:
    """One table column of ``metric``: each aggregate (a row of :func:`aggregate`, None where the cell has no ok
    row) as 'mean ± error', the best and its ties in bold; 'failed' where every run failed, else '—'."""
    scale = spec(metric).scale

    def scaled(r, col):
        v = None if r is None else norm(r[col])
        return None if v is None else v * scale

    top = best([scaled(r, "mean") for r in cells], [scaled(r, "se") for r in cells], metric, d)
    return [Cell("failed" if f else "—") if r is None else
            Cell(fmt_stat(scaled(r, "mean"), scaled(r, err), int(r["n"]), d, show_n), i in top)
            for i, (r, f) in enumerate(zip(cells, failed))]


def _failed_coords(failed: pd.DataFrame, keys: list[str]) -> set:
    return {tuple(norm(r[k]) for k in keys) for _, r in failed.iterrows()}


def pivot_table(ok, failed, plan: Plan, metric: str, split: dict) -> Table:
    """metric by plan.rows × plan.cols; best per column in bold."""
    keys = plan.rows + plan.cols
    lg = aggregate(ok, keys, metric)
    d = decimals(metric, [v * spec(metric).scale for v in lg["mean"]])
    show_n, note = stats_note([lg], plan.err)
    cells, fails = _by_key(lg, keys), _failed_coords(failed, keys)
    row_vals = _sorted({k[:len(plan.rows)] for k in cells | dict.fromkeys(fails)})
    col_vals = _sorted({k[len(plan.rows):] for k in cells | dict.fromkeys(fails)})
    columns = [column([cells.get(rv + cv) for rv in row_vals], [rv + cv in fails for rv in row_vals], metric, d,
                      plan.err, show_n) for cv in col_vals]
    body = [[Cell(fmt_value(v)) for v in rv] + [c[i] for c in columns] for i, rv in enumerate(row_vals)]
    col_label = ", ".join(label(c) for c in plan.cols)
    header = [label(c) for c in plan.rows] + [", ".join(fmt_value(v) for v in cv) for cv in col_vals]
    if plan.cols:
        header[0] = f"{header[0]} \\ {col_label}" if len(plan.rows) == 1 else header[0]
    dims = " × ".join(filter(None, [" × ".join(label(c) for c in plan.rows), col_label]))
    title = f"{label(metric)} {arrow(metric)} by {dims}" + split_title(split)
    notes = [note + BOLD_NOTE.format(f"{direction(metric)} is better")]
    return Table(metric, title, header, len(plan.rows), body, notes, _csv_frame(lg, metric), split)


def metrics_table(ok, failed, plan: Plan, split: dict) -> Table:
    """One-factor studies (e.g. guidance scale): rows × metrics, best per metric column in bold."""
    keys = plan.rows
    longs = {m: aggregate(ok, keys, m) for m in plan.metrics}
    show_n, note = stats_note(list(longs.values()), plan.err)
    fails = _failed_coords(failed, keys)
    row_vals = _sorted({k for lg in longs.values() for k in _by_key(lg, keys)} | fails)
    columns = []
    for m, lg in longs.items():
        cells = _by_key(lg, keys)
        d = decimals(m, [v * spec(m).scale for v in lg["mean"]])
        columns.append(column([cells.get(rv) for rv in row_vals], [rv in fails for rv in row_vals], m, d, plan.err,
                              show_n))
    body = [[Cell(fmt_value(v)) for v in rv] + [c[i] for c in columns] for i, rv in enumerate(row_vals)]
    header = [label(c) for c in keys] + [f"{label(m)} {arrow(m)}" for m in plan.metrics]
    title = f"{', '.join(label(m) for m in plan.metrics)} by {' × '.join(label(c) for c in keys)}" + split_title(split)
    notes = [note + BOLD_NOTE.format("arrow: ↓ lower / ↑ higher is better")]
    return Table("summary", title, header, len(keys), body, notes, None, split)


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
        # columns of different data sets (an adapter study's new and old classes) have their own reference sets
        by_data = ["data"] if "data" in plan.cols else []
        for m, (_, cpart) in ((m, c) for m in metrics for c in groups(part, by_data)):
            try:
                guard_settings(cpart, m)
            except ReportError as e:
                if split:
                    raise ReportError(f"{e} (within {split_title(split)[3:]})") from None
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
            Cell(fmt_value(vals[c]) if d is None or norm(vals[c]) is None else fixed(vals[c], d)) for c, _, d in cols])
        frames.append({"model": model, "vae_key": vae, **vals})
    title = "First stage (latent families): the VAE's reconstructions of the held-out split" + split_title(split)
    have = {c for c, _, _ in cols}
    notes = [" ".join(filter(None, [
        "recon. FID: the VAE's decodes D(mode q(z|x)) of the held-out images against the cells' reference statistics, "
        "in their feature network; held-out real FID: those images themselves (FID's floor at that N)."
        if "vae_rfid" in have else "",
        "recon. PSNR over every pixel of the held-out images in [-1, 1]." if "vae_psnr" in have else ""]))]
    return Table("first_stage", title, ["model", "VAE key"] + [h for _, h, _ in cols], 2, body, notes,
                 pd.DataFrame(frames), split)
