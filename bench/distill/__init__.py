"""Distillation of a trained (teacher) model into a few-step student, through the same Lightning runner and cache.

- progressive (Salimans & Ho 2022): rounds teacher_steps → teacher_steps/2 → … → sampling.num_inference_steps,
  each student (initialised from its teacher) matching two DDIM steps of the teacher with one; sampled with DDIM.
- consistency (Song et al. 2023; LCM, Luo et al. 2023): a consistency function trained against one DDIM step of the
  teacher on a skip-step grid, EMA target; sampled with diffusers' ``LCMScheduler``.

:func:`load_or_distill` is what ``bench.training.load_or_train`` calls when ``distill.method`` is set. Every student
(each progressive round too) is a cached model dir ``<cache_dir>/models/<key>/`` whose key hashes its parent's key,
the method's distill settings and its step count, so a sweep over step counts trains each round once.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from omegaconf import OmegaConf

from bench import keys, training
from bench.data import get_data_info
from bench.env import resolve_device
from bench.registry import Entry, Registry
from bench.sampling import check_guidance
from bench.schema import ConfigError
from bench.utils import config_hash, to_plain

from .consistency import ConsistencyDistillation
from .progressive import ProgressiveDistillation

SAMPLER = {"progressive": "ddim", "consistency": "lcm"}
LOSSES = ("l2", "huber")


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _check_common(cfg, info) -> None:
    """What every distillation method needs: a diffusion teacher, its sampler (its budgets' ranges are the
    schema's)."""
    d, method = cfg.distill, cfg.distill.method
    if cfg.objective.name == "flow":
        raise ConfigError("objective.name", "flow", f"eps | v | x0 with distill.method={method}",
                          "the students distil a DDIM (diffusion) teacher")
    if cfg.sampler.name != SAMPLER[method]:
        raise ConfigError("sampler.name", cfg.sampler.name, f"{SAMPLER[method]} with distill.method={method}",
                          "the student is trained for that sampler (distill=<method> selects it)")
    check_guidance(d.guidance_scale, info.num_classes, key="distill.guidance_scale")


def _check_progressive(cfg, info) -> None:
    """DDIM on trailing grids that nest: steps = teacher_steps / 2^k."""
    _check_common(cfg, info)
    d = cfg.distill
    T, steps = int(cfg.schedule.num_train_timesteps), int(cfg.sampling.num_inference_steps)
    if cfg.sampler.timestep_spacing != "trailing":
        raise ConfigError("sampler.timestep_spacing", cfg.sampler.timestep_spacing,
                          "trailing with distill=progressive", "only trailing DDIM grids at N and 2N steps nest")
    if not _power_of_two(int(d.teacher_steps)) or d.teacher_steps > T:
        raise ConfigError("distill.teacher_steps", d.teacher_steps, f"a power of two <= {T}")
    if steps > d.teacher_steps or not _power_of_two(int(d.teacher_steps) // steps) or d.teacher_steps % steps:
        raise ConfigError("sampling.num_inference_steps", steps,
                          f"teacher_steps / 2^k (1, 2, 4, ..., {d.teacher_steps}) with distill=progressive",
                          "each round halves the teacher's DDIM steps")


def _check_consistency(cfg, info) -> None:
    """LCM sampling on the distillation's skip-step grid (steps <= num_ddim_timesteps, checked by the lcm sampler)."""
    _check_common(cfg, info)
    d, T = cfg.distill, int(cfg.schedule.num_train_timesteps)
    if not 1 <= d.num_ddim_timesteps <= T:
        raise ConfigError("distill.num_ddim_timesteps", d.num_ddim_timesteps, f"1..{T}")
    if d.loss not in LOSSES:
        raise ConfigError("distill.loss", d.loss, " | ".join(LOSSES))


@dataclass(frozen=True)
class Method(Entry):
    """A distillation method: ``key_fields``, the ``distill.*`` settings that change its student (its key; the rest
    do not apply to it); ``timestep_spacing``: its student is trained on the sampler's DDIM grid (also keyed)."""

    key_fields: tuple = ()
    timestep_spacing: bool = False


_COMMON = ("max_steps", "batch_size", "lr", "warmup_steps", "ema_decay", "guidance_scale")
METHODS = Registry("distill", "distill.method", {
    "none": Method(),  # sample the trained model itself
    "progressive": Method(ProgressiveDistillation, _check_progressive, key_fields=_COMMON, timestep_spacing=True),
    "consistency": Method(ConsistencyDistillation, _check_consistency,
                          key_fields=(*_COMMON, "num_ddim_timesteps", "loss", "huber_c")),
})


def round_train(cfg, seed_offset: int = 0):
    """The ``train.*`` settings a distillation round trains by: ``cfg.train`` with max_steps, batch_size, lr,
    warmup_steps and ema_decay from ``distill.*``, and its own seed (rounds do not reuse each other's noise)."""
    d = cfg.distill
    return OmegaConf.create({**to_plain(cfg.train), "max_steps": int(d.max_steps), "batch_size": int(d.batch_size),
                             "lr": float(d.lr), "warmup_steps": int(d.warmup_steps),
                             "ema_decay": float(d.ema_decay), "seed": int(cfg.train.seed) * 1000 + seed_offset})


def progressive_rounds(cfg) -> list[int]:
    """Student step counts of the rounds: teacher_steps/2, teacher_steps/4, ..., sampling.num_inference_steps."""
    n, target, out = int(cfg.distill.teacher_steps), int(cfg.sampling.num_inference_steps), []
    while n > target:
        n //= 2
        out.append(n)
    return out


def student_keys(cfg, teacher_key: str) -> list[tuple[int | None, dict, str]]:
    """(step count, key config, key) of each student the config's method trains from the teacher ``teacher_key``, in
    order (progressive: one per round; consistency: one); the last is the model a cell samples."""
    entry = METHODS[cfg.distill.method]
    plan = progressive_rounds(cfg) if cfg.distill.method == "progressive" else [None]
    out, parent = [], teacher_key
    for n in plan:
        key_cfg = keys.student_key_config(cfg, parent, n, entry.key_fields, entry.timestep_spacing)
        parent = config_hash(key_cfg)
        out.append((n, key_cfg, parent))
    return out


def load_or_distill(cfg):
    """(student in eval mode on ``cfg.device``, train_info) — the teacher from ``load_or_train`` (trained if needed),
    then each student from the cache or distilled and cached. train_info: the teacher's model_key/train_* replaced
    by the student's key; plus teacher_key, distill_method, distill_steps, distill_train_steps and distill_seconds
    (cumulative over progressive rounds, cached ones included: the price of the speed-up)."""
    method = cfg.distill.method
    info = get_data_info(cfg.data)
    device = resolve_device(cfg.device)
    teacher, teacher_info = training.load_or_train(cfg)  # the teacher's key ignores distill.*
    plan = student_keys(cfg, teacher_info["model_key"])
    model, key, path, cached = teacher, teacher_info["model_key"], teacher_info["path"], teacher_info["cached"]
    seconds, steps = 0.0, 0
    for n, key_cfg, student_key in plan:

        def train(work, parent=model, n=n, key_cfg=key_cfg, student_key=student_key):
            settings = round_train(cfg, seed_offset=n or 0)
            state = {k: v.detach().cpu() for k, v in parent.state_dict().items()}
            module = (ProgressiveDistillation(cfg, info, state, n, settings) if method == "progressive"
                      else ConsistencyDistillation(cfg, info, state, settings))
            with warnings.catch_warnings():  # Lightning flags the frozen teacher's eval mode: intended
                warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
                module = training.fit(lambda: module, cfg.data, settings, cfg.trainer, work)
            return training.write_model_dir(module, cfg, info, work, key=student_key, config=key_cfg,
                                            teacher_key=teacher_info["model_key"], distill_method=method,
                                            distill_steps=n)

        path, meta, hit = training.cached_model_dir(training.models_root(cfg), student_key, train)
        model, key, cached = training.load_model_dir(path, cfg.model, info, device), student_key, cached and hit
        seconds, steps = seconds + float(meta["train_seconds"]), steps + int(meta["train_steps"])
    distill_steps = int(cfg.sampling.num_inference_steps) if method == "progressive" else None
    return model, {**teacher_info, "model_key": key, "path": str(path), "cached": cached,
                   "teacher_key": teacher_info["model_key"],
                   "distill_method": method, "distill_steps": distill_steps, "distill_train_steps": steps,
                   "distill_seconds": round(seconds, 3), "distill_rounds": len(plan) if method == "progressive"
                   else 1}


__all__ = ["METHODS", "load_or_distill", "progressive_rounds", "round_train", "student_keys"]
