"""`bench`: the Hydra app. One Hydra job = one sweep cell.

    config (Hydra compose) -> validate -> model (cache hit, or train and cache) -> sample (per-image seeds, cost
    counters) -> scores (streamed) -> one results row -> tracker

Sweeps are Hydra multiruns (`bench -m sweep=scheduler_steps`); the default experiment is itself a small multirun.
"""
from __future__ import annotations

import errno
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.plugins import Plugins
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bench import cell, keys, preflight, summary
from bench.env import quiet_console
from bench.evaluators import EvaluatorError
from bench.keys import cell_key
from bench.metrics.refstats import RefStatsError
from bench.results import ResultsError
from bench.schema import ConfigError, register
from bench.training import ModelCacheError, TrainingStopped

log = logging.getLogger("bench")
register()


def _register_sweeper() -> None:
    """hydra/sweeper: preflighted. Hydra finds plugins by listing the hydra_plugins package's folders, which misses
    the one an editable install maps through its import hook (the `bench` script run from outside the checkout), so
    register it. After Hydra's scan: the scan re-executes the plugin modules it finds, BasicSweeper's among them, and
    a sweeper class made before it would subclass a BasicSweeper that no longer is."""
    plugins = Plugins.instance()
    if "hydra_plugins.bench_sweeper.PreflightedSweeper" not in plugins.class_name_to_class:
        from hydra_plugins.bench_sweeper import PreflightedSweeper  # lazy: only after the scan (above)

        plugins.register(PreflightedSweeper)


_register_sweeper()


def _job_name(*, _root_: DictConfig) -> str:
    """``hydra.sweep.subdir``'s name for a job: sampler, steps and the cell key (its ``cells/<key>`` directory)."""
    cfg = OmegaConf.masked_copy(_root_, [k for k in _root_ if k != "hydra"])
    return f"{cfg.sampler.name}-{cfg.sampling.num_inference_steps}steps-{cell_key(cfg)}"


OmegaConf.register_new_resolver("bench_cell", _job_name, replace=True)


def _drop_empty_root(root: Path) -> None:
    """After a config error: remove what Hydra wrote if the root holds no results (nothing half-written)."""
    if root.exists() and not (root / "results.jsonl").exists() and not (root / "cells").exists():
        shutil.rmtree(root, ignore_errors=True)


def fail(msg: str, root: Path | None = None, code: int = 2):
    if root is not None:
        _drop_empty_root(root)
    print(f"bench: error: {msg}", file=sys.stderr)
    sys.exit(code)


# Errors that stop the run with one `bench: error:` line (bad input found at run time: a corrupt cache file, missing
# evaluator weights, reference statistics that do not match, a results file bench cannot read). NaN/Inf and
# out-of-memory are not among them: those fail only their cell (a failed row) and the sweep goes on.
FATAL_ERRORS = (ConfigError, EvaluatorError, RefStatsError, ResultsError, ModelCacheError, cell.CellFailed)


def _drop_unfinished_cell(root: Path, key: str) -> None:
    """A cell stopped by a fatal error leaves no artifacts behind: its ``cells/<key>.partial`` work directory goes
    (a finished cell's directory, ``cells/<key>``, is only ever created complete, by a rename)."""
    work = cell.work_dir(root / "cells" / key)
    if work.is_dir():
        shutil.rmtree(work, ignore_errors=True)
    try:
        work.parent.rmdir()  # only when empty
    except OSError:
        pass


# A file system that refuses a write part-way through a run (permissions changed, read-only remount, disk or quota
# full): one line naming the path, not a traceback. Finished rows are never rewritten in place (atomic replace).
WRITE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _write_error(e: OSError) -> str:
    where = e.filename or "a results or cell file"
    return (f"cannot write {where}: {e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)}); the rows already in "
            f"results.jsonl are kept, this cell has no row: fix the folder and run again (finished cells are "
            f"skipped)")


def run_job(cfg: DictConfig) -> dict | None:
    """One Hydra job: :func:`bench.cell.run_cell` (which validates first); a fatal error is one line and exit 2."""
    root, key = keys.results_root(cfg), cell_key(cfg)  # what a fatal error cleans up
    try:
        return cell.run_cell(cfg)
    except FATAL_ERRORS as e:
        _drop_unfinished_cell(root, key)
        fail(str(e), root)
    except TrainingStopped as e:  # trainer.max_time: not an error, not a row; the next run resumes the training
        _drop_unfinished_cell(root, key)
        fail(str(e), root, code=3)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        _drop_unfinished_cell(root, key)
        fail(_write_error(e), root)


@hydra.main(config_path=preflight.CONF_DIR, config_name="bench", version_base="1.3")
def app(cfg: DictConfig) -> Any:
    quiet_console()  # here, not in main(): a launcher's worker process starts at this function
    return run_job(cfg)


class SweepSummary(Callback):
    """At the end of a run or sweep: print the results table and where things are; log the ablation table."""

    def _summarise(self, config: DictConfig) -> None:
        summary.summarise(config)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._summarise(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._summarise(config)


def main() -> None:
    """Console entry: validate every cell of the requested run/sweep, then hand over to Hydra."""
    argv = preflight.one_cell_argv(sys.argv[1:])
    if argv != sys.argv[1:]:
        print("bench: one cell (plain overrides); `bench -m KEY=a,b` or `bench -m sweep=NAME` runs a grid",
              file=sys.stderr)
        sys.argv[1:] = argv
    try:
        preflight.check(sys.argv[1:])
    except ConfigError as e:
        fail(str(e))
    except preflight.CompositionError as e:
        fail(str(e))
    app()


if __name__ == "__main__":
    main()
