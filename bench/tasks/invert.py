"""DDIM inversion of held-out real images and back (Song et al. 2021 §5.4; null-text inversion, Mokady et al. 2023).

Real image x0 → diffusers' ``DDIMInverseScheduler`` for S steps (built from the configured DDIM sampler's own config)
→ x_T → the DDIM sampler back for the same S steps with the same condition → x̂0; scores compare x̂0 with x0.
"""
from __future__ import annotations

from bench.schema import ConfigError

from .common import condition_of

METHODS = ("plain", "null_text")
SPACINGS = ("leading", "trailing")  # DDIMInverseScheduler.set_timesteps knows no other


def check(cfg, info) -> None:
    """A deterministic DDIM path both ways (sampler=ddim, eta 0, a spacing the inverse scheduler has), no classifier
    guidance, a known method; null-text inversion only for a conditional model. Each a one-line ConfigError."""
    t, smp = cfg.task, cfg.sampler
    if t.method not in METHODS:
        raise ConfigError("task.method", t.method, " | ".join(METHODS))
    if smp.name != "ddim":
        raise ConfigError("sampler", smp.name, "ddim with task=invert",
                          "inversion runs DDIM's deterministic update backwards (DDIMInverseScheduler)")
    if smp.eta != 0:
        raise ConfigError("sampler.eta", smp.eta, "0 with task=invert", "only eta = 0 is deterministic (invertible)")
    if smp.timestep_spacing not in SPACINGS:
        raise ConfigError("sampler.timestep_spacing", smp.timestep_spacing,
                          f"{' | '.join(SPACINGS)} with task=invert", "DDIMInverseScheduler has no other spacing")
    if float(cfg.sampling.get("classifier_scale", 0.0) or 0.0) != 0:
        raise ConfigError("sampling.classifier_scale", cfg.sampling.classifier_scale, "0 with task=invert")
    if cfg.distill.method == "consistency":
        raise ConfigError("distill", cfg.distill.method, "none or progressive with task=invert",
                          "a consistency student is sampled by LCMScheduler, which has no DDIM inverse")
    if t.method == "null_text" and condition_of(cfg, info) is None:
        raise ConfigError("task.method", t.method, f"plain for model={cfg.model.name} on data {info.id}",
                          "the model is unconditional: there is no null condition to optimise")


def run(cfg, info, subject, call, work_dir):
    raise NotImplementedError("task=invert: the inversion runner")
