"""The Lightning runner every harness model trains through (denoisers, their VAEs, guidance classifiers, distilled
students): seeded, resumable from ``last.ckpt``, one or several processes; and the check of its knobs before work."""
from __future__ import annotations

import contextlib
import logging
import os
import typing
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.connector import _PRECISION_INPUT_STR

from bench import ranks
from bench.data import BenchDataModule
from bench.ranks import ForkserverDDP
from bench.schema import ConfigError

from .module import DiffusionModule
from .store import CKPT, ModelCacheError, first_line


class TrainingStopped(RuntimeError):
    """Training ended before train.max_steps (trainer.max_time ran out): nothing is published to the cache, the
    resume checkpoint stays, and the next run with the same config continues from it (exit 3, not a failed row)."""


def fit(make_module: Callable[[], DiffusionModule], data_cfg, train, trainer_cfg, workdir: str | os.PathLike,
        callbacks=(), logger=False, train_set=None) -> DiffusionModule:
    """Train ``make_module()`` (a DiffusionModule; distillation passes its own) on ``data_cfg``'s train split per
    ``train`` (max_steps, batch_size, seed, grad_clip, checkpoint_every, accumulate_grad_batches) and the Lightning
    ``trainer_cfg`` in ``workdir``, resuming ``workdir/last.ckpt`` when present. The module is built after seeding:
    its initial weights are part of what the model key promises. ``logger``: a Lightning logger for the training
    curves (``bench.tracking.training_logger``) or False. ``train_set``: these items in place of the data set's
    (an adapter's own: DreamBooth's instance and class images). Raises :class:`TrainingStopped` when
    ``trainer_cfg.max_time`` ends the training before ``train.max_steps``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(train.seed), workers=True, verbose=False)
    module = make_module()
    every = int(train.checkpoint_every)
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=workdir, save_last=True, save_top_k=0,
                                                  every_n_train_steps=every if every > 0 else None)
    tr = trainer_cfg
    spawned = processes(tr) > 1
    if spawned:  # the ranks write the final state; this process reads it back below
        callbacks = [*callbacks, _FinalCheckpoint(workdir / CKPT)]
    trainer = L.Trainer(max_steps=int(train.max_steps), logger=logger, **lightning_kwargs(tr),
                        accumulate_grad_batches=int(getattr(train, "accumulate_grad_batches", 1)),
                        gradient_clip_val=float(train.grad_clip) or None, enable_model_summary=False,
                        callbacks=[ckpt_cb, *callbacks], default_root_dir=str(workdir),
                        use_distributed_sampler=False, num_sanity_val_steps=0)
    last = workdir / CKPT
    if last.exists():
        _check_resumable(last)
    datamodule = BenchDataModule(data_cfg, train.batch_size, train.seed)
    datamodule.train_set = train_set  # None: built from data_cfg at setup
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None,
                weights_only=True)
    if spawned:  # ddp_spawn: the weights, EMA, loss curve and step count come from rank 0's final checkpoint
        ck = torch.load(last, map_location="cpu", weights_only=True)
        module.load_state_dict(ck["state_dict"])
        module.on_load_checkpoint(ck)
        steps = int(ck["global_step"])
    else:
        steps = int(trainer.global_step)
        if steps and not (last.exists() and every and steps % every == 0):
            trainer.save_checkpoint(last, weights_only=False)  # the final state, when the cadence did not write it
    if steps < int(train.max_steps):
        raise TrainingStopped(f"training stopped at step {steps} of train.max_steps={int(train.max_steps)} "
                              f"(trainer.max_time={tr.max_time}); its checkpoint {last} is kept: run the same command "
                              f"again to resume")
    module.trained_steps = steps
    return module


def processes(trainer_cfg) -> int:
    """Training processes: ``trainer.devices`` when it is a count (1 for ``auto`` or a device list of one)."""
    d = trainer_cfg.devices
    if isinstance(d, int):
        return d
    if isinstance(d, str) and d.isdigit():
        return int(d)
    return len(d) if hasattr(d, "__len__") and not isinstance(d, str) else 1


def strategy(trainer_cfg):
    """Lightning's strategy: ``ddp_spawn`` for N > 1 processes unless given, its ranks forked from a preloaded
    forkserver on CPU (:mod:`bench.ranks`). Not ``ddp``: it would re-launch the whole bench job per rank, and each
    rank would wait on the model-cache lock the first one holds."""
    if processes(trainer_cfg) > 1 and trainer_cfg.strategy == "auto":
        return ForkserverDDP() if ranks.forkserver(_accelerator(trainer_cfg)) else "ddp_spawn"
    return trainer_cfg.strategy


def _accelerator(trainer_cfg) -> str:
    a = str(trainer_cfg.accelerator)
    if a == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return a


class _FinalCheckpoint(L.Callback):
    """Under ddp_spawn: the final training state written by the ranks (rank 0 writes), read back by the parent."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


def _check_resumable(last: Path) -> None:
    """Refuse a resume checkpoint that is not a readable weights-only file before Lightning trips over it."""
    try:
        torch.load(last, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelCacheError(f"{last}: cannot resume training from this checkpoint "
                              f"({type(e).__name__}: {first_line(e)}); "
                              f"delete it to train from step 0") from None


def lightning_kwargs(trainer_cfg) -> dict:
    """The ``lightning.Trainer`` arguments of ``trainer.*`` (what :func:`fit` trains with and :func:`check_trainer`
    checks)."""
    tr = trainer_cfg
    return dict(accelerator=tr.accelerator, devices=tr.devices, precision=tr.precision, strategy=strategy(tr),
                max_time=tr.get("max_time") or None, enable_progress_bar=bool(tr.enable_progress_bar),
                log_every_n_steps=int(tr.log_every_n_steps))


PRECISIONS = typing.get_args(_PRECISION_INPUT_STR)  # Lightning's own names ("16", "bf16" are aliases: one name each)


def check_trainer(trainer_cfg) -> None:
    """Every Lightning knob of ``trainer.*`` before any work: one ConfigError naming the key, else Lightning would
    refuse it (or fall back silently) only after the output folder and the model cache's work directory and lock
    exist. Builds the Trainer :func:`fit` would build (no files, ~0.1 s) to catch what only Lightning knows (an
    accelerator this machine lacks, a device count it cannot serve)."""
    tr = trainer_cfg
    if tr.precision not in PRECISIONS:
        raise ConfigError("trainer.precision", tr.precision, " | ".join(PRECISIONS))
    accelerators = ("auto", "gpu", *sorted(L.pytorch.accelerators.AcceleratorRegistry.available_accelerators()))
    if tr.accelerator not in accelerators:
        raise ConfigError("trainer.accelerator", tr.accelerator, " | ".join(accelerators))
    strategies = ("auto", *L.pytorch.strategies.StrategyRegistry.available_strategies())
    if tr.strategy not in strategies:
        raise ConfigError("trainer.strategy", tr.strategy, "auto or a Lightning strategy name (ddp_spawn, ...)")
    try:
        with _quiet():
            trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False,
                                **lightning_kwargs(tr))
    except Exception as e:  # Lightning's MisconfigurationException / ValueError: the reason in its first line
        raise ConfigError("trainer", _knobs(tr), "settings this machine can train with", first_line(e)) from None
    got = trainer.precision_plugin.precision if hasattr(trainer, "precision_plugin") else tr.precision
    if str(got) != str(tr.precision):  # e.g. 16-mixed on a CPU: Lightning would train bf16-mixed instead
        raise ConfigError("trainer.precision", tr.precision, f"{got} on this accelerator",
                          f"Lightning would train with {got} instead")


def _knobs(tr) -> str:
    return ", ".join(f"{k}={tr[k]}" for k in ("accelerator", "devices", "precision", "strategy"))


@contextlib.contextmanager
def _quiet():
    """Lightning's start-up lines (GPU/TPU available, its tips) belong to the training, not to a config check."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
