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

import copy
import warnings

from omegaconf import open_dict

from bench.schema import ConfigError
from bench.utils import config_hash, resolve_device, to_plain

METHODS = ("none", "progressive", "consistency")
SAMPLER = {"progressive": "ddim", "consistency": "lcm"}
# distill.* keys that change each method's student (its cache key); the rest do not apply to the method
KEY_FIELDS = {
    "progressive": ("max_steps", "batch_size", "lr", "warmup_steps", "ema_decay", "guidance_scale"),
    "consistency": ("max_steps", "batch_size", "lr", "warmup_steps", "ema_decay", "guidance_scale",
                    "num_ddim_timesteps", "loss", "huber_c"),
}
LOSSES = ("l2", "huber")


def _power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def check_distill(cfg, num_classes: int | None = None) -> None:
    """Raise a one-line ConfigError for a distillation setting that cannot run (before any work)."""
    d, method = cfg.distill, cfg.distill.method
    if method not in METHODS:
        raise ConfigError("distill.method", method, " | ".join(METHODS))
    if method == "none":
        return
    if cfg.objective.name == "flow":
        raise ConfigError("objective.name", "flow", f"eps | v | x0 with distill.method={method}",
                          "the students distil a DDIM (diffusion) teacher")
    if cfg.sampler.name != SAMPLER[method]:
        raise ConfigError("sampler.name", cfg.sampler.name, f"{SAMPLER[method]} with distill.method={method}",
                          "the student is trained for that sampler (distill=<method> selects it)")
    for key in ("max_steps", "batch_size", "lr"):
        if d[key] <= 0:
            raise ConfigError(f"distill.{key}", d[key], "a positive number")
    if d.warmup_steps < 0:
        raise ConfigError("distill.warmup_steps", d.warmup_steps, "a number >= 0")
    if not 0 <= d.ema_decay < 1:
        raise ConfigError("distill.ema_decay", d.ema_decay, "a number in [0, 1)")
    if d.guidance_scale < 0 or (num_classes == 0 and d.guidance_scale != 1):
        raise ConfigError("distill.guidance_scale", d.guidance_scale,
                          ">= 0" if d.guidance_scale < 0 else "1 for an unconditional teacher (num_classes=0)")
    T, steps = int(cfg.schedule.num_train_timesteps), int(cfg.sampling.num_inference_steps)
    if method == "progressive":
        if cfg.sampler.timestep_spacing != "trailing":
            raise ConfigError("sampler.timestep_spacing", cfg.sampler.timestep_spacing,
                              "trailing with distill=progressive", "only trailing DDIM grids at N and 2N steps nest")
        if not _power_of_two(int(d.teacher_steps)) or d.teacher_steps > T:
            raise ConfigError("distill.teacher_steps", d.teacher_steps, f"a power of two <= {T}")
        if steps > d.teacher_steps or not _power_of_two(int(d.teacher_steps) // steps) or d.teacher_steps % steps:
            raise ConfigError("sampling.num_inference_steps", steps,
                              f"teacher_steps / 2^k (1, 2, 4, ..., {d.teacher_steps}) with distill=progressive",
                              "each round halves the teacher's DDIM steps")
    else:
        if not 1 <= d.num_ddim_timesteps <= T:
            raise ConfigError("distill.num_ddim_timesteps", d.num_ddim_timesteps, f"1..{T}")
        if d.loss not in LOSSES:
            raise ConfigError("distill.loss", d.loss, " | ".join(LOSSES))


def teacher_config(cfg):
    """The config of the teacher: ``cfg`` with distill.method=none (its model key ignores distill anyway)."""
    t = copy.deepcopy(cfg)
    with open_dict(t):
        t.distill.method = "none"
    return t


def round_config(cfg, seed_offset: int = 0):
    """``cfg`` with ``train.*`` set from ``distill.*``: the Lightning runner (bench.training.fit) trains by train.*."""
    r = copy.deepcopy(cfg)
    d = cfg.distill
    with open_dict(r):
        r.train.update(max_steps=int(d.max_steps), batch_size=int(d.batch_size), lr=float(d.lr),
                       warmup_steps=int(d.warmup_steps), ema_decay=float(d.ema_decay),
                       seed=int(cfg.train.seed) * 1000 + seed_offset)  # rounds do not reuse each other's noise
    return r


def progressive_rounds(cfg) -> list[int]:
    """Student step counts of the rounds: teacher_steps/2, teacher_steps/4, ..., sampling.num_inference_steps."""
    n, target, out = int(cfg.distill.teacher_steps), int(cfg.sampling.num_inference_steps), []
    while n > target:
        n //= 2
        out.append(n)
    return out


def student_key_config(cfg, parent_key: str, steps: int | None) -> dict:
    """What a student's weights depend on: its parent (teacher or previous round), the method's settings, steps."""
    method = cfg.distill.method
    d = to_plain(cfg.distill)
    out = {"parent": parent_key, "method": method, "steps": steps,
           "distill": {k: d[k] for k in KEY_FIELDS[method]},
           "train": {k: to_plain(cfg.train[k]) for k in ("seed", "cond_drop_prob", "grad_clip", "weight_decay")}}
    if method == "progressive":
        out["timestep_spacing"] = cfg.sampler.timestep_spacing  # the DDIM grid the student is trained on
    return out


def load_or_distill(cfg):
    """(student in eval mode on ``cfg.device``, info) — the teacher from ``load_or_train`` (trained if needed), then
    each student from the cache or distilled and cached. info: the teacher's model_key/train_* replaced by the
    student's key; plus teacher_key, distill_method, distill_steps, distill_train_steps and distill_seconds
    (cumulative over progressive rounds, cached ones included: the price of the speed-up)."""
    from bench.data import get_data_info
    from bench.training import cached_model_dir, fit, load_model_dir, load_or_train, models_root, write_model_dir

    from .consistency import ConsistencyDistillation
    from .progressive import ProgressiveDistillation

    method = cfg.distill.method
    info = get_data_info(cfg.data)
    device = resolve_device(cfg.device)
    teacher, tinfo = load_or_train(teacher_config(cfg))
    plan = progressive_rounds(cfg) if method == "progressive" else [None]
    model, key, path, cached = teacher, tinfo["model_key"], tinfo["path"], tinfo["cached"]
    seconds, steps = 0.0, 0
    for n in plan:
        key_cfg = student_key_config(cfg, key, n)
        student_key = config_hash(key_cfg)

        def train(work, parent=model, n=n, key_cfg=key_cfg, student_key=student_key):
            rcfg = round_config(cfg, seed_offset=n or 0)
            state = {k: v.detach().cpu() for k, v in parent.state_dict().items()}
            module = (ProgressiveDistillation(rcfg, info, state, n) if method == "progressive"
                      else ConsistencyDistillation(rcfg, info, state))
            with warnings.catch_warnings():  # Lightning flags the frozen teacher's eval mode: intended
                warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
                module = fit(rcfg, info, work, module=module)
            return write_model_dir(module, rcfg, info, work, key=student_key, config=key_cfg,
                                   teacher_key=tinfo["model_key"], distill_method=method, distill_steps=n)

        path, meta, hit = cached_model_dir(models_root(cfg), student_key, train)
        model, key, cached = load_model_dir(path, cfg, info, device), student_key, cached and hit
        seconds, steps = seconds + float(meta["train_seconds"]), steps + int(meta["train_steps"])
    distill_steps = int(cfg.sampling.num_inference_steps) if method == "progressive" else None
    return model, {**tinfo, "model_key": key, "path": str(path), "cached": cached, "teacher_key": tinfo["model_key"],
                   "distill_method": method, "distill_steps": distill_steps, "distill_train_steps": steps,
                   "distill_seconds": round(seconds, 3), "distill_rounds": len(plan) if method == "progressive"
                   else 1}


__all__ = ["check_distill", "load_or_distill", "progressive_rounds", "student_key_config", "METHODS"]
