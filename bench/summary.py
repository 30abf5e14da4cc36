"""The console summary at the end of a run or sweep: the results table, where things are, and the tracker's
ablation table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from bench.metric_spec import names
from bench.results import read_rows
from bench.tracking import Tracker

KEYS = ["distill_method", "sampler", "eta", "num_inference_steps", "guidance_scale"]


def summary_columns() -> list[str]:
    """The cell's coordinates, the metrics bench.metric_spec marks for the console, its status."""
    return [*KEYS, *names(console=True), "status"]


def summarise(cfg: DictConfig) -> None:
    """Print the results table and where things are; log the sweep's ablation table to the tracker."""
    root = Path(cfg.out_dir) / cfg.name
    rows = read_rows(root / "results.jsonl")
    if not rows:
        return
    df = pd.DataFrame(rows)
    cols = [c for c in summary_columns() if c in df.columns and df[c].notna().any()
            and not (c == "distill_method" and (df[c] == "none").all())]  # shown in distillation studies only
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.float_format", "{:.4g}".format):
        print(df[cols].sort_values([c for c in KEYS if c in cols]).to_string(index=False))
    print(f"\nresults: {root / 'results.jsonl'} ({len(rows)} rows)\ncells:   {root / 'cells'}/<cell_key>/"
          f"{{grid.png,metrics.json,config.yaml}}\nreport:  bench-report {root}")
    Tracker(cfg.tracker, root).log_table(cfg.name, rows)
