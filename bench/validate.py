"""Checks a composed config before any work: one clear ConfigError naming the key, the value and what is allowed.

Hydra + the dataclass schema already reject unknown keys, wrong types and unknown group options; this walks the
registries (one per config group, owned by its package: each entry checks its own values and combinations) and
adds the checks that belong to no group (ranges of plain keys, the device, the output directory).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf.errors import MissingMandatoryValue

from bench.adapt import KINDS
from bench.data import DATA, DataInfo, get_data_info
from bench.data.prompts import PROMPTS
from bench.distill import METHODS
from bench.metrics.scorer import METRICS
from bench.models import MODELS
from bench.sampling import SAMPLERS, compiled, diffusers_pipeline as pipelines
from bench.schedule import SCHEDULES
from bench.schema import ConfigError, numeric_fields, parse_bound
from bench.tasks import TASKS
from bench.tracking import TRACKERS
from bench.training.fit import check_trainer, processes
from bench.training.objectives import OBJECTIVES
from bench.utils import check_output_dir

# one registry per config group, checked in this order (data first: the others need its DataInfo)
REGISTRIES = (DATA, MODELS, OBJECTIVES, SCHEDULES, SAMPLERS, METRICS, TRACKERS, METHODS, PROMPTS, KINDS, TASKS)
# model=pipeline: the checkpoint decides objective, schedule and what the sampler may do; bench.sampling.pipelines
# checks the config against it in place of these groups' own rules (an explicit objective= is compared, not used)
CHECKPOINT_DECIDES = (OBJECTIVES, SCHEDULES, SAMPLERS)
DEVICES = ("auto", "cpu", "cuda")
# the groups no registry entry checks: their ranges come first; the others' after the entries' checks, so an entry's
# more specific message (sampling.guidance_scale's is the sampler's) comes first
OWN_GROUPS = ("train", "classifier", "trainer", "cost")


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_sharding(cfg) -> None:
    """sampling.devices: no more than the visible GPUs on CUDA (bench.distributed; its range is the schema's)."""
    devices = cfg.sampling.devices
    if devices > 1 and cfg.device != "cpu" and torch.cuda.is_available() and devices > torch.cuda.device_count():
        raise ConfigError("sampling.devices", devices, f"at most {torch.cuda.device_count()} (the visible GPUs)",
                          "or device=cpu for CPU processes")


def check_bounds(cfg, finite_only: bool = False, groups: tuple[str, ...] | None = None) -> None:
    """Every numeric key of the schema (the model group: its family's) against the range declared beside its field
    (``bench.schema.bounded``); floats must be finite. ``finite_only``: only the finiteness; ``groups``: only these
    groups' keys."""
    for key, typ, bounds in numeric_fields(model=cfg.model.name):
        if groups is not None and key.split(".")[0] not in groups:
            continue
        try:
            v = _get(cfg, key)
        except (KeyError, AttributeError):
            continue
        if v is None:
            continue  # Optional and unset: the owner decides the default
        lo, hi, lo_closed, hi_closed = parse_bound(bounds)
        if typ is float and not math.isfinite(v):
            raise ConfigError(key, v, f"a finite number in {bounds}")
        if finite_only:
            continue
        ok = (v >= lo if lo_closed else v > lo) and (v <= hi if hi_closed else v < hi)
        if not ok:
            what = "an integer" if typ is int else "a number"
            raise ConfigError(key, v, f"{what} in {bounds}")


def _check_plain_keys(cfg) -> None:
    """Keys outside the registered groups: device, the ranges of train.*, classifier.*, trainer.*, cost.*, sharding,
    training processes, trainer.max_time, the output directory."""
    if cfg.device not in DEVICES:
        raise ConfigError("device", cfg.device, "one of " + ", ".join(DEVICES))
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "auto or cpu", "no CUDA device is visible")
    check_bounds(cfg, finite_only=True)  # before any comparison: NaN passes them all
    check_bounds(cfg, groups=OWN_GROUPS)
    _check_sharding(cfg)
    compiled.check(cfg)
    _check_training_processes(cfg)
    _check_max_time(cfg.trainer.max_time)  # before Lightning sees it: its own message names no key
    check_trainer(cfg.trainer)
    check_output_dir(Path(cfg.out_dir) / cfg.name, "out_dir")  # out_dir/<name> a file: refused here, not after work


def _check_training_processes(cfg) -> None:
    """trainer.devices = N > 1 trains with ddp_spawn (bench.training.fit.strategy): every rank reads the global
    batch and trains on an equal share of its rows, so N must divide train.batch_size; ``ddp`` would re-launch the
    whole job per rank (its ranks would wait on the model-cache lock of the first)."""
    n, tr = processes(cfg.trainer), cfg.trainer
    if n < 1:
        raise ConfigError("trainer.devices", tr.devices, "a number of processes >= 1")
    if n == 1:
        return
    if tr.strategy not in ("auto", "ddp_spawn"):
        raise ConfigError("trainer.strategy", tr.strategy, f"auto or ddp_spawn with trainer.devices={tr.devices}",
                          "ddp re-launches the whole bench job per rank")
    for key in ("train.batch_size", "distill.batch_size", "classifier.batch_size"):
        b = _get(cfg, key) if key.split(".")[0] in cfg else None
        if b is not None and b % n:
            raise ConfigError(key, b, f"a multiple of trainer.devices={n}",
                              "each process trains on an equal share of every batch (the 1-process gradient)")


def _check_max_time(value) -> None:
    """trainer.max_time: unset, or Lightning's "DD:HH:MM:SS" string."""
    if value is None:
        return
    parts = str(value).split(":")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ConfigError("trainer.max_time", value, '"DD:HH:MM:SS" (e.g. 00:01:30:00) or null')


def validate(cfg, info: DataInfo | None = None) -> DataInfo:
    """Raise ConfigError for the first bad value or combination in `cfg` (a composed BenchConfig); return the data's
    DataInfo. A mandatory value left unset (``???``) is a ConfigError too (the one place that converts it)."""
    try:
        entries = [(registry, registry[registry.name_in(cfg)]) for registry in REGISTRIES]  # unknown names first
        data_entry = entries[0][1]
        data_entry.check(cfg, None)  # cheap config checks before the data set is looked at
        info = info if info is not None else get_data_info(cfg.data)
        _check_plain_keys(cfg)
        is_pipeline = cfg.model.name == "pipeline"
        for registry, entry in entries[1:]:
            if not (is_pipeline and registry in CHECKPOINT_DECIDES):
                entry.check(cfg, info)
        if is_pipeline:
            pipelines.check(cfg, info)
        elif cfg.model.get("pretrained"):  # model=unet loaded from a local directory
            pipelines.check_pretrained(cfg, info)
        check_bounds(cfg)
        if (probe := MODELS[cfg.model.name].probe) is not None:
            probe(cfg, info)  # last: it builds the model and runs it on real images
    except MissingMandatoryValue as e:
        raise ConfigError(str(e.full_key), "???", "a value (it has no default)") from None
    return info
