"""Compiled sampling (``cost.compile``): the harness's own denoiser through ``torch.compile``.

- **Once per model.** A compiled model is kept in this process, keyed by its model key, compile mode, device, dtype
  and memory format, so every cell of a sweep (Hydra's basic launcher runs a multirun's jobs in one process) reuses
  it; a new input shape is a new graph (torch.compile's own guards), compiled by the next cell's warm-up.
- **Compile time apart from latency.** Before a cell is sampled, one untimed warm-up batch of a few steps per batch
  size the cell uses (the full batch and the last, shorter one) compiles every graph it needs: ``compile_s`` (about
  0 when the model and the shapes were compiled before: ``compile_reused``).
- **Checked against the eager model.** The cell's first images are sampled eagerly and compiled: their largest
  difference as images (clamped to [-1, 1]) is ``compile_max_abs_diff`` in the row; beyond one uint8 level (2/255)
  the cell is refused (a ConfigError: compiled float rounding must not move a score).

Modes: ``default`` (inductor; the CPU's choice) and ``reduce-overhead`` (inductor with CUDA graphs: small models on a
GPU are bound by kernel launches). ``model=pipeline`` compiles its denoiser with ``model.compile`` instead.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import time

import torch
from torch import nn

from bench.metrics.cost import CostMeter
from bench.models import MODELS
from bench.results import Columns
from bench.sampling.subject import Denoiser, SamplingCall
from bench.schema import ConfigError

log = logging.getLogger("bench")

MODES = ("none", "default", "reduce-overhead")
ONE_UINT8_LEVEL = 2 / 255  # samples live in [-1, 1]: 255 steps of a uint8 image span a width of 2
CHECK_IMAGES = 8  # images of the cell sampled both ways (the eager side is the slow one)
WARMUP_STEPS = 3  # per warm-up batch: CUDA graphs warm up, record, then replay
_COMPILED: dict[tuple, nn.Module] = {}  # (model_key, mode, device, dtype, channels_last) -> the compiled model


@dataclasses.dataclass(frozen=True)
class CompileColumns(Columns):
    """Every row of the harness's own models says whether it was sampled compiled (``compile``, ``compile_mode``);
    a compiled row adds the warm-up's seconds, whether the compiled model came from an earlier cell, and the largest
    difference of its first images from the eager model's (over ``compile_check_images`` images)."""

    compile: bool
    compile_mode: str
    compile_s: float | None = None
    compile_reused: bool | None = None
    compile_max_abs_diff: float | None = None
    compile_check_images: int | None = None
    compile_check_s: float | None = None


def check(cfg) -> None:
    """``cost.compile``: one of MODES; only for the harness's own models in one process; CUDA graphs need CUDA."""
    mode = cfg.cost.compile
    if mode not in MODES:
        raise ConfigError("cost.compile", mode, "one of " + ", ".join(MODES))
    if mode == "none":
        return
    if MODELS[cfg.model.name].sampled_as != "denoiser":
        raise ConfigError("cost.compile", mode, f"none with model={cfg.model.name}",
                          "a loaded pipeline compiles its denoiser with model.compile")
    if int(cfg.sampling.devices) > 1:
        raise ConfigError("cost.compile", mode, "none with sampling.devices > 1",
                          "the compiled model lives in one process")
    if mode == "reduce-overhead" and (cfg.device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("cost.compile", mode, "none or default without a CUDA device",
                          "reduce-overhead records CUDA graphs")


def compiled_model(model: nn.Module, model_key: str, mode: str, channels_last: bool) -> tuple[nn.Module, bool]:
    """(the compiled copy of ``model``, reused): the one compiled before for the same model key, mode, device, dtype
    and memory format, else a new copy compiled in place (its type, attributes and methods stay the model's)."""
    p = next(model.parameters())
    key = (model_key, mode, str(p.device), str(p.dtype), channels_last)
    if key in _COMPILED:
        return _COMPILED[key], True
    c = copy.deepcopy(model)
    c.compile(mode=None if mode == "default" else mode)
    _COMPILED[key] = c
    return c, False


def forget(model: nn.Module) -> None:
    """Drop a compiled model from the process cache (after it failed its check)."""
    for k in [k for k, v in _COMPILED.items() if v is model]:
        del _COMPILED[k]


def image_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference of two sample batches as images: clamped to [-1, 1], as they are quantised and scored
    (an untrained model's samples run far outside it, where rounding differences are scaled up and never seen)."""
    return float((a.clamp(-1, 1) - b.clamp(-1, 1)).abs().max())


def _run(subject: Denoiser, call: SamplingCall, n: int, steps: int) -> torch.Tensor:
    """Images 0 .. n - 1 of ``call`` in one batch of n, ``steps`` steps, untimed (a meter of its own)."""
    call = dataclasses.replace(call, num_samples=n, batch_size=n, num_inference_steps=steps)
    return torch.cat([b.x for b in subject.batches(call, CostMeter(call.device))])


def compile_denoiser(eager: Denoiser, mode: str, model_key: str, call: SamplingCall) -> Denoiser:
    """``eager`` as ``cost.compile=mode`` samples it, with :class:`CompileColumns` among its column groups: itself
    for ``none``; else its model's compiled copy (:func:`compiled_model`), warmed up for ``call``'s batch sizes and
    checked against ``eager`` on the first images (beyond one uint8 level: ConfigError)."""
    if mode == "none":
        return _with_columns(eager, CompileColumns(False, "none"))
    model, reused = compiled_model(eager.model, model_key, mode, call.channels_last)
    compiled = dataclasses.replace(eager, model=model)
    sizes = {min(call.batch_size, call.num_samples), call.num_samples % call.batch_size} - {0}
    t0 = time.perf_counter()
    for n in sorted(sizes, reverse=True):
        _run(compiled, call, n, min(WARMUP_STEPS, call.num_inference_steps))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    k = min(CHECK_IMAGES, call.num_samples)
    ours = _run(compiled, call, min(call.batch_size, call.num_samples), call.num_inference_steps)[:k]
    diff = image_diff(ours, _run(eager, call, k, call.num_inference_steps))
    if not diff <= ONE_UINT8_LEVEL:  # NaN is refused too
        forget(model)
        raise ConfigError("cost.compile", mode, "none for this model",
                          f"its compiled samples differ from the eager ones by {diff:.3g} > one uint8 level "
                          f"({ONE_UINT8_LEVEL:.3g}) on images 0..{k - 1}")
    log.info("cost.compile=%s: warm-up %.1f s (%s), first %d images within %.2g of eager", mode, compile_s,
             "reused" if reused else "compiled", k, diff)
    return _with_columns(compiled, CompileColumns(True, mode, round(compile_s, 3), reused, diff, k,
                                                  round(time.perf_counter() - t0, 3)))


def _with_columns(subject: Denoiser, columns: CompileColumns) -> Denoiser:
    p = subject.provenance
    return dataclasses.replace(subject, provenance=dataclasses.replace(p, groups=(*p.groups, columns)))
