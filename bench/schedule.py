"""Noise schedules (``conf/schedule/``): the β schedule of training and sampling, as diffusers' constructor arguments.

Training builds its ``DDPMScheduler`` and every sampler its diffusers scheduler from :func:`beta_kwargs`, so the two
share one noise schedule exactly.
"""
from __future__ import annotations

from typing import Any

import torch
from diffusers import DDPMScheduler

from bench.registry import Entry, Registry
from bench.schema import ConfigError


def _check(cfg, info) -> None:
    """num_train_timesteps > 0; the flow objective's sigma shift > 0; linear-type betas beta_start < beta_end."""
    s = cfg.schedule
    if s.num_train_timesteps <= 0:
        raise ConfigError("schedule.num_train_timesteps", s.num_train_timesteps, "a positive number")
    if cfg.objective.name == "flow" and s.flow_shift <= 0:
        raise ConfigError("schedule.flow_shift", s.flow_shift, "> 0")
    # each beta's range (0, 1) is its schema field's; the order of the two is a rule of linear-type schedules
    if SCHEDULES[s.name].build != "squaredcos_cap_v2" and not s.beta_start < s.beta_end:
        raise ConfigError("schedule.beta_start", s.beta_start, f"< schedule.beta_end={s.beta_end}",
                          "a reversed schedule adds the most noise first")


def _check_auto(cfg, info) -> None:
    if cfg.model.name != "pipeline":
        raise ConfigError("schedule", "auto", "linear | scaled_linear | cosine for model=" + str(cfg.model.name),
                          "auto (the checkpoint's own schedule) is for model=pipeline")


# name -> diffusers ``beta_schedule`` (Ho et al. 2020 linear; LDM's scaled_linear; Nichol & Dhariwal 2021 cosine);
# auto: a pipeline checkpoint's own (bench.sampling.diffusers_pipeline reads and checks it)
SCHEDULES = Registry("schedule", "schedule.name", {
    "auto": Entry(None, _check_auto),
    "linear": Entry("linear", _check),
    "scaled_linear": Entry("scaled_linear", _check),
    "cosine": Entry("squaredcos_cap_v2", _check),
})


def beta_kwargs(s) -> dict[str, Any]:
    """The diffusers constructor arguments of schedule config ``s`` (training and sampling both build from these)."""
    return dict(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end,
                beta_schedule=SCHEDULES[s.name].build)


def ddpm_scheduler(s) -> DDPMScheduler:
    """The diffusers ``DDPMScheduler`` holding this schedule's betas / ``alphas_cumprod``."""
    return DDPMScheduler(**beta_kwargs(s))


def alphas_cumprod(s) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1 (float32, as diffusers computes them)."""
    return ddpm_scheduler(s).alphas_cumprod.clone()


def train_sigmas(s) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of the training schedule ``s``, t = 0..T-1 (float64)."""
    abar = ddpm_scheduler(s).alphas_cumprod.double()
    return ((1 - abar) / abar).sqrt()


def abar_at(log_sigmas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ᾱ at (fractional) timesteps ``t`` from ``train_sigmas(s).log()``: log sigma interpolated linearly between the
    integer steps, the inverse of diffusers' ``_sigma_to_t`` (sigma-space samplers' fractional timesteps)."""
    T = len(log_sigmas)
    t = t.to(log_sigmas.device, log_sigmas.dtype)
    lo = t.floor().long().clamp(0, T - 1)
    hi = (lo + 1).clamp(max=T - 1)
    w = t - lo
    sigma = ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()
    return 1 / (1 + sigma**2)


def alpha_sigma(t: torch.Tensor, num_train_timesteps: int, log_sigmas: torch.Tensor | None = None):
    """(alpha_t, sigma_t) of x_t = alpha x0 + sigma eps at model timesteps ``t`` (float64): diffusion (``log_sigmas``
    = ``train_sigmas(s).log()``) alpha = sqrt(ᾱ), sigma = sqrt(1 - ᾱ); rectified flow (None) sigma = t / T,
    alpha = 1 - sigma."""
    if log_sigmas is None:
        sigma = t.double() / num_train_timesteps
        return 1 - sigma, sigma
    abar = abar_at(log_sigmas, t.double().cpu()).to(t.device)
    return abar.sqrt(), (1 - abar).sqrt()
