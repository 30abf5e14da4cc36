"""Experiment tracking: W&B (offline unless told otherwise) or nothing.

Results are always written locally first (results.jsonl); the tracker is a mirror. A tracker failure (W&B missing,
misconfigured, crashing mid-run) is a warning, never a lost cell; offline runs can be synced later with
``wandb sync <dir>/wandb/offline-run-*``.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.env import quiet_wandb
from bench.metric_spec import is_measured
from bench.registry import Entry, Registry

log = logging.getLogger(__name__)

# tracker name -> whether it mirrors rows to W&B (conf/tracker/<name>.yaml)
TRACKERS = Registry("tracker", "tracker.name", {"wandb": Entry(True), "none": Entry(False)})


def wandb_mode(requested: str | None) -> str:
    """Explicit config wins, then WANDB_MODE, then online only when an API key is configured, else offline."""
    if requested:
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    return "offline"


# What `wandb agent` hands the process it starts: the run it created for this cell, its sweep and the cell's params.
AGENT_ENV = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")
_agent_run: dict | None = None  # claimed by the first cell this process logs


def _claim_agent_run() -> dict:
    """The agent's run belongs to exactly one cell: the first call takes the variables out of the environment (so no
    later cell, ablation run or child process reuses the id) and returns them; every later call returns {}."""
    global _agent_run
    if _agent_run is None:
        _agent_run = {k: os.environ.pop(k) for k in AGENT_ENV if k in os.environ}
        return _agent_run
    return {}


def split_row(row: dict) -> tuple[dict, dict]:
    """(settings and provenance, measurements) of a results row: hyperparameters belong in a W&B run's config,
    scores in its summary (the measured columns of bench.metric_spec), so neither becomes a one-point history
    chart."""
    metrics = {k: v for k, v in row.items()
               if is_measured(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {k: v for k, v in row.items() if k not in metrics}, metrics


def _table_frame(rows: list[dict]):
    """Rows -> DataFrame with one type per column (W&B tables need that): nested values become JSON strings."""
    df = pd.DataFrame(rows)
    for col in df.columns:
        if df[col].map(lambda v: isinstance(v, (dict, list))).any():
            df[col] = df[col].map(lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
    return df


class Tracker:
    """One tracker run per sweep cell (``log_cell``) plus one ablation run per sweep (``log_table``)."""

    def __init__(self, tracker_cfg: Any, root: str | os.PathLike):
        self.cfg = tracker_cfg
        self.enabled = TRACKERS[tracker_cfg.name].build  # one-line ConfigError for an unknown name
        self.dir = Path(tracker_cfg.dir or root)

    def _init(self, agent_env: dict | None = None, **kwargs):
        """wandb.init; ``agent_env``: the claimed `wandb agent` variables, in the environment for this init only.
        wandb's process-wide settings read the environment once, at setup: the agent's run gets a setup of its own
        (teardown before and after, as `wandb agent` itself does between runs), so no other run inherits its id."""
        import wandb  # lazy: optional and slow to import; only an enabled tracker needs it

        self.dir.mkdir(parents=True, exist_ok=True)
        if agent_env:
            wandb.teardown()
            os.environ.update(agent_env)
        try:
            # silent: one console line per cell comes from bench, not ~40 from W&B
            return wandb.init(project=self.cfg.project, entity=self.cfg.entity, dir=str(self.dir),
                              mode=wandb_mode(self.cfg.mode), reinit="finish_previous",
                              settings=wandb.Settings(silent=True, console="off"),
                              id=(agent_env or {}).get("WANDB_RUN_ID"), **kwargs)
        finally:
            for k in agent_env or {}:
                os.environ.pop(k, None)

    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # a tracker must never cost a result
            msg = f"tracker: {what} failed ({type(e).__name__}: {e}); results are still in results.jsonl"
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
            return None

    def log_cell(self, config: dict, row: dict, grid: str | None = None) -> str | None:
        """Log one cell: its config and the row's settings/provenance as the run config, its scores as the run
        summary, its sample grid as an image and the full row as a one-row table. Returns the run directory."""

        def _do():
            import wandb  # lazy: optional and slow to import; only an enabled tracker needs it

            name = (f"{row.get('sampler')}-{row.get('num_inference_steps')}-g{row.get('guidance_scale')}-"
                    f"{row['cell_key'][:6]}")
            settings, metrics = split_row(row)
            agent_env = _claim_agent_run()
            run = self._init(agent_env, group=row.get("name"), name=name, job_type="cell",
                             config={**config, "row": settings})
            try:
                # the full row as a one-row table too: offline runs keep tables as readable JSON files
                payload: dict = {"cell": wandb.Table(dataframe=_table_frame([row]))}
                if grid and Path(grid).exists():
                    payload["samples"] = wandb.Image(str(grid))
                run.log(payload)
                run.summary.update({**metrics, "status": row.get("status"), "cell_key": row["cell_key"]})
                return run.dir
            finally:
                run.finish()
                if agent_env:
                    wandb.teardown()  # the next run sets up from an environment without the agent's variables

        return self._guard("logging the cell", _do)

    def log_table(self, group: str, rows: list[dict], key: str = "ablation") -> str | None:
        """Log all rows of a sweep as one ``wandb.Table`` in an 'ablation' run of the sweep's group."""

        _claim_agent_run()
        if _agent_run:
            # under `wandb agent` (one cell per process) the sweep's own page is the table; an ablation run per cell
            # would only repeat results.jsonl so far
            log.info("tracker: under wandb agent: no ablation run (the W&B sweep page holds the cells)")
            return None

        def _do():
            import wandb  # lazy: optional and slow to import; only an enabled tracker needs it

            df = _table_frame(rows)
            varying = [c for c in df.columns if not is_measured(c) and df[c].astype(str).nunique() > 1
                       and c not in ("cell_key", "cell_dir", "config_path", "created_at")]
            run = self._init(group=group, name=f"{group}-{key}", job_type=key,
                             config={"study": group, "num_cells": len(rows), "varying": varying})
            try:
                run.log({key: wandb.Table(dataframe=df)})
                return run.dir
            finally:
                run.finish()

        return self._guard("logging the ablation table", _do)


def training_logger(tracker_cfg: Any, root: str | os.PathLike, name: str, group: str, config: dict | None = None):
    """A Lightning ``WandbLogger`` for a training run's curves (loss every ``trainer.log_every_n_steps``), in the
    study's W&B group with job_type "train", offline unless told otherwise; False when the tracker is off or W&B
    cannot start (a warning: training goes on; the loss curve is also in the model's meta.json)."""
    if not TRACKERS[tracker_cfg.name].build:
        return False
    try:
        # lazy: W&B is optional and slow to import; only an enabled tracker needs it
        import wandb
        from lightning.pytorch.loggers import WandbLogger  # lazy: pulls in wandb

        save_dir = Path(tracker_cfg.dir or root)
        save_dir.mkdir(parents=True, exist_ok=True)
        # under `wandb agent` the agent's run belongs to the cell: start this run now, without the agent's variables
        hidden = {k: os.environ.pop(k) for k in AGENT_ENV if k in os.environ}
        try:
            quiet_wandb()
            logger = WandbLogger(project=tracker_cfg.project, entity=tracker_cfg.entity, save_dir=str(save_dir),
                                 name=name, group=group, job_type="train", mode=wandb_mode(tracker_cfg.mode),
                                 config=config or {}, reinit="finish_previous",
                                 settings=wandb.Settings(silent=True, console="off"))
            logger.experiment  # noqa: B018 (creates the run here)
        finally:
            os.environ.update(hidden)
        return logger
    except Exception as e:  # a tracker must never cost a result
        msg = f"tracker: training curves not logged ({type(e).__name__}: {e})"
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
        return False


def finish_logger(logger) -> None:
    """Close a :func:`training_logger` run (no-op for False); the next cell's run starts clean."""
    if not logger:
        return
    try:
        logger.experiment.finish()
    except Exception as e:
        log.warning("tracker: closing the training run failed (%s: %s)", type(e).__name__, e)
