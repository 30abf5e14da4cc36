"""bench-report: publishable tables, plots and sample grids from result files (never recomputes a score).

    bench-report runs/scheduler_steps --out reports/scheduler_steps
    bench-report runs/guidance --metric fid,is --title "CFG on digits"
    bench-report runs/a runs/b --split-by feature_net_hash

Reading order: load.py (rows) → plan.py (study plan, one configuration per cell, mixed-settings guard) → stats.py
(mean, error bars) → formatting.py → tables.py (pivot, metrics table) → plots.py → render.py. What each metric is
(label, direction, decimals, scale) comes from bench.metric_spec.
"""
from __future__ import annotations

import argparse
import functools
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from .adapter import adapter_table
from .agreement import agreement_table
from .distill import speedup_table
from .formatting import fmt_value, label
from .load import ReportError, Source, load, norm, sort_key
from .plan import FACTORS, KIND_TITLES, KINDS, plan_study, varying
from .plots import make_plots
from .published import published_tables
from .render import Report, failed_table, write_all
from .tables import build_tables, first_stage_table
from .tradeoff import tradeoff_plots, tradeoff_table

__all__ = ["ReportError", "build_report", "main"]


# tables (and figures: fn(ok rows, plan, plots dir) -> [Figure]) a study kind adds to the ablation tables
STUDY_TABLES = {"distill": (speedup_table,), "adapter": (adapter_table,), "edit": (tradeoff_table,)}
STUDY_PLOTS = {"edit": (tradeoff_plots,)}
CONFIG_KEYS = ("rows", "cols", "metric", "kind", "title", "split_by", "where", "err")


def _csv(s: str | None) -> list[str] | None:
    if s is None:
        return None
    return [] if s.strip().lower() == "none" else [x.strip() for x in s.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench-report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results.jsonl files or directories holding them (sweep roots)")
    p.add_argument("--out", help="output directory (default: reports/<name>)")
    p.add_argument("--config", help="report config YAML (keys: rows, cols, metric, kind, title, split_by, where, err); "
                   "command-line options win")
    p.add_argument("--rows", help="comma-separated row factors, e.g. sampler")
    p.add_argument("--cols", help="comma-separated column factors, e.g. num_inference_steps ('none' = a metrics table)")
    p.add_argument("--metric", help="comma-separated metrics (default: every metric all ok rows have, + latency_p50)")
    p.add_argument("--kind", choices=KINDS, help="study kind (default auto: from which columns vary)")
    p.add_argument("--split-by", help="comma-separated settings to split tables by, e.g. feature_net_hash")
    p.add_argument("--where", action="append", default=None, metavar="KEY=VALUE",
                   help="keep rows with KEY=VALUE (KEY!=VALUE: drop them)")
    p.add_argument("--err", choices=("se", "std", "ci95"),
                   help="± over seeds: standard error of the mean (default), std, or 95%% CI (Student t)")
    p.add_argument("--title", help="report title (default: <name>: <study>)")
    p.add_argument("--agreement", action=argparse.BooleanOptionalAction, default=None,
                   help="the metric-agreement section (default: when the rows carry a score beyond FID/KID/IS)")
    p.add_argument("--no-plots", action="store_true", help="tables only (faster)")
    p.add_argument("--wandb", action="store_true", help="also log tables and plots to W&B (offline without API key)")
    p.add_argument("--wandb-project", default="bench")
    p.add_argument("--wandb-dir", help="W&B run directory (default: <out>/wandb)")
    return p


def _image_study(df: pd.DataFrame) -> bool:
    """Published (Inception FID) tables sit beside image studies only, never beside exact toy2d metrics."""
    return "fid" in df and df["fid"].notna().any()


def _options(args: argparse.Namespace) -> dict:
    opts = {}
    if args.config:
        try:
            opts = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True) or {}
        except Exception as e:
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            raise ReportError(f"--config {args.config}: cannot read ({why})") from None
        unknown = set(opts) - set(CONFIG_KEYS)
        if unknown:
            raise ReportError(f"--config {args.config}: unknown keys {sorted(unknown)}; "
                              f"allowed: {', '.join(CONFIG_KEYS)}")
        if isinstance(opts.get("where"), str):
            opts["where"] = [opts["where"]]
        for k in ("rows", "cols", "metric", "split_by"):
            if isinstance(opts.get(k), list):
                opts[k] = ",".join(map(str, opts[k])) if opts[k] else "none"
    for k in CONFIG_KEYS:
        v = getattr(args, k)
        if v is not None:
            opts[k] = v
    return opts


def _where(df: pd.DataFrame, clauses: list[str]) -> pd.DataFrame:
    """Rows with KEY=VALUE (or KEY!=VALUE: all but those) for every clause."""
    for c in clauses or []:
        key, sep, val = c.partition("=")
        negate = key.endswith("!")
        key = key[:-1] if negate else key
        if not sep or key not in df:
            raise ReportError(f"--where {c!r} is not allowed: KEY=VALUE or KEY!=VALUE with KEY a result column")
        keep = [(fmt_value(v) == val or str(norm(v)) == val) != negate for v in df[key]]
        if not any(keep):
            have = sorted({fmt_value(v) for v in df[key]})
            raise ReportError(f"--where {c!r} matches no row ({key} has: {', '.join(have)})")
        df = df[keep]
    return df


def _uniq(df: pd.DataFrame, *cols: str, sep=" ") -> str:
    vals = sorted({tuple(norm(r.get(c)) for c in cols) for _, r in df.iterrows()},
                  key=lambda t: tuple(map(sort_key, t)))
    return "; ".join(sep.join(fmt_value(v) for v in t) for t in vals) or "—"


def provenance(df: pd.DataFrame, sources: list[Source], command: str, plan) -> list[tuple[str, str]]:
    """Taken from the rows (never from this machine) so regenerating on another clone gives the same text."""
    ok = df[df["status"] == "ok"]
    seeds = sorted({norm(v) for v in df.get("seed", [])} - {None}, key=sort_key)
    return [
        ("command", command),
        ("study", f"{plan.kind}; rows: {', '.join(plan.rows) or '—'}; columns: {', '.join(plan.cols) or '—'}"
         + (f"; split by: {', '.join(plan.split_by)}" if plan.split_by else "")),
        ("results", "; ".join(f"{s.path} ({s.num_rows} rows, sha256 {s.sha256})" for s in sources)),
        ("harness", _uniq(df, "bench", "git_sha", sep=" @ ")),
        ("libraries", _uniq(df, "torch", "diffusers", sep=" / ") + " (torch / diffusers)"),
        ("feature network", _uniq(ok, "feature_net", "feature_net_hash", sep=" #")),
        ("reference stats", _uniq(ok, "ref_id", "ref_hash", "n_ref", sep=" · ") + " (id · hash · N_ref)"),
        ("resize", _uniq(ok, "resize")),
        ("N (samples per cell)", _uniq(ok, "num_samples")),
        ("seeds", ", ".join(map(fmt_value, seeds)) or "—"),
        ("models", _uniq(ok, "model_key", "train_steps", sep=" · ") + " (model_key · train_steps)"),
        ("hardware", _uniq(ok, "device", "hardware", sep=" · ")),
    ]


def build_report(results: list[str], out: str | None = None, *, rows=None, cols=None, metric=None, kind=None,
                 split_by=None, where=None, title=None, err=None, command: str | None = None, plots: bool = True,
                 agreement: bool | None = None) -> tuple[Report, Path]:
    """Read rows, check them, and write the report to a temp dir that replaces `out` only when all went well."""
    df, sources = load(results)
    df = _where(df, where)
    plan = plan_study(df, kind or "auto", _csv(rows), _csv(cols), _csv(metric), _csv(split_by) or [], err or "se")
    tables, csvs = build_tables(df, plan, study_tables=(*STUDY_TABLES.get(plan.kind, ()), first_stage_table,
                                                        functools.partial(agreement_table, asked=agreement)))
    names = sorted({str(v) for v in df.get("name", []) if norm(v) is not None}) or ["report"]
    out_dir = Path(out) if out else Path("reports") / "+".join(names)
    command = command or "bench-report " + shlex.join(results + (["--out", str(out)] if out else []))
    var = set(varying(df))
    fixed = [(label(f), fmt_value(df[f].iloc[0])) for f in FACTORS
             if f in df and f not in var and f not in ("name", "method", "model_key")
             and norm(df[f].iloc[0]) is not None]
    n_ok = int((df["status"] == "ok").sum())
    summary = (f"Study: {KIND_TITLES[plan.kind]} (--kind {plan.kind}); {n_ok} ok rows, "
               f"{len(df) - n_ok} failed, from {len(sources)} results file{'s' * (len(sources) != 1)}. "
               "Numbers are read from the result rows, never recomputed.")
    failed = failed_table(df[df["status"] == "failed"], plan.split_by + plan.rows + plan.cols)
    published = published_tables(plan.kind if _image_study(df) else None)
    report = Report(title or f"{'+'.join(names)}: {KIND_TITLES[plan.kind]}", summary, command, fixed, tables, csvs,
                    [], published, failed, provenance(df, sources, command, plan), plan.notes)
    _check_out(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    mask = os.umask(0)  # mkdtemp makes 0700: give the report the mode a plain mkdir would have (shared folders)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)
    try:
        report.figures = [*make_plots(df, plan, tmp / "plots"),
                          *(f for fn in STUDY_PLOTS.get(plan.kind, ()) for f in fn(df, plan, tmp / "plots"))
                          ] if plots else []
        write_all(report, tmp)
        _swap(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report, out_dir


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "report.md").exists())):
        raise ReportError(f"--out {out}: exists and is not a bench report directory; refusing to overwrite it")


def _swap(tmp: Path, out: Path) -> None:
    """Replace out by tmp in (almost) one step, keeping an earlier W&B run directory."""
    old = None
    if out.exists():
        if (out / "wandb").is_dir():
            os.replace(out / "wandb", tmp / "wandb")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _wandb_line(wandb, metric: str, df: pd.DataFrame) -> dict | None:
    """An interactive W&B line chart of a metric table whose last key column is numeric (steps, NFE, guidance
    scale, eta): one line per combination of the other key columns (sampler, method, ...). None for other tables."""
    cols = list(df.columns)
    if metric not in cols or cols.index(metric) == 0:
        return None
    keys = cols[: cols.index(metric)]
    x, series = keys[-1], keys[:-1]
    if not pd.api.types.is_numeric_dtype(df[x]):
        return None
    t = df[keys + [metric]].dropna(subset=[metric]).copy()
    t["series"] = t[series].astype(str).agg(" ".join, axis=1) if series else metric
    t = t[[x, metric, "series"]].astype({x: float, metric: float})
    return {f"chart/{metric}_vs_{x}": wandb.plot.line(wandb.Table(dataframe=t), x, metric, stroke="series",
                                                      title=f"{metric} vs {x}")}


def log_wandb(report: Report, out: Path, project: str, wandb_dir: str | None) -> str:
    """Log the tables (wandb.Table), the plots (wandb.Image) and, for each metric-vs-a-number table, an interactive
    W&B line chart; offline unless WANDB_MODE or an API key say otherwise."""
    import wandb  # lazy: optional and slow to import; only --wandb needs it

    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    wdir = Path(wandb_dir) if wandb_dir else out / "wandb"
    wdir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, dir=str(wdir), mode=mode, job_type="report", name=f"report-{out.name}",
                     config={"command": report.command, "title": report.title})
    for i, t in enumerate(report.tables):
        run.log({f"table/{t.name}_{i}": wandb.Table(columns=t.header, data=[[c.text for c in r] for r in t.body])})
    for m, df in report.csvs.items():
        run.log({f"data/{m}": wandb.Table(dataframe=df.astype(object).where(df.notna(), None))})
        chart = _wandb_line(wandb, m, df)
        if chart is not None:
            run.log(chart)
    for f in report.figures:
        run.log({f"plot/{f.stem}": wandb.Image(str(out / "plots" / f"{f.stem}.png"), caption=f.caption)})
    run.finish()
    return str(wdir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    try:
        o = _options(args)
        report, out = build_report(args.results, args.out, rows=o.get("rows"), cols=o.get("cols"),
                                   metric=o.get("metric"), kind=o.get("kind"), split_by=o.get("split_by"),
                                   where=o.get("where"), title=o.get("title"), err=o.get("err"),
                                   command="bench-report " + shlex.join(argv), plots=not args.no_plots,
                                   agreement=args.agreement)
        for n in report.notes:
            print(f"note: {n}", file=sys.stderr)
        print(f"wrote {out}/report.md, report.tex, report.html, {len(report.csvs)} CSV, {len(report.figures)} plots")
        if args.wandb:
            print(f"W&B run in {log_wandb(report, out, args.wandb_project, args.wandb_dir)}")
    except ReportError as e:
        print(f"ReportError: {e}", file=sys.stderr)
        return 2
    return 0
