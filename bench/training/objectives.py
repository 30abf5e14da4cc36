"""Diffusion objectives in one place: noise levels, the forward process, targets, and their inversion.

Every objective here is a Gaussian path x_t = alpha_t x0 + sigma_t eps (one :func:`add_noise`):
- eps / v / x0 (DDPM, Ho et al. 2020, eq. 4): alpha = sqrt(alphas_cumprod[t]), sigma = sqrt(1 - alphas_cumprod[t]),
  t ~ U{0..T-1}; ``alphas_cumprod`` come from diffusers' ``DDPMScheduler`` so training and sampling agree exactly.
- flow (rectified flow, Liu et al. 2023; flow matching, Lipman et al. 2023): alpha = 1 - sigma, sigma ~ U(0, 1)
  shifted as diffusers' ``FlowMatchEulerDiscreteScheduler`` (s·σ / (1 + (s-1)·σ), Esser et al. 2024 eq. 23);
  the model sees t = sigma · T and predicts the velocity eps - x0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.registry import Entry, Registry
from bench.schedule import alphas_cumprod
from bench.schema import ConfigError

LOSS_WEIGHTINGS = ("uniform", "min_snr")


@dataclass(frozen=True)
class Objective(Entry):
    """``prediction_type``: diffusers' name for what the model outputs (its samplers' ``prediction_type``)."""

    prediction_type: str = ""


def check_loss_weighting(o) -> None:
    """objective.loss_weighting: uniform | min_snr; min_snr is defined for eps / v / x0 only."""
    if o.loss_weighting not in LOSS_WEIGHTINGS:
        raise ConfigError("objective.loss_weighting", o.loss_weighting, "one of " + ", ".join(LOSS_WEIGHTINGS))
    if o.loss_weighting == "min_snr" and o.name == "flow":
        raise ConfigError("objective.loss_weighting", o.loss_weighting, "uniform for objective=flow",
                          "min_snr is defined for eps / v / x0")


def _check(cfg, info) -> None:
    check_loss_weighting(cfg.objective)


def _check_auto(cfg, info) -> None:
    if cfg.model.name != "pipeline":
        raise ConfigError("objective", "auto", "eps | v | x0 | flow for model=" + str(cfg.model.name),
                          "auto (the checkpoint's own prediction type) is for model=pipeline")


# Ho et al. 2020 (eps), Salimans & Ho 2022 (v), x0, rectified flow (Liu et al. 2023; velocity = noise - x0);
# auto: a pipeline checkpoint's own (bench.sampling.diffusers_pipeline reads and checks it)
OBJECTIVES = Registry("objective", "objective.name", {
    "auto": Objective(check=_check_auto, prediction_type="auto"),
    "eps": Objective(check=_check, prediction_type="epsilon"),
    "v": Objective(check=_check, prediction_type="v_prediction"),
    "x0": Objective(check=_check, prediction_type="sample"),
    "flow": Objective(check=_check, prediction_type="flow_prediction"),
})
PREDICTION_TYPE = {name: OBJECTIVES[name].prediction_type for name in OBJECTIVES}  # objective -> diffusers' name
DIFFUSION_OBJECTIVES = ("eps", "v", "x0")  # Gaussian diffusion paths (every sampler but flow_euler takes them)


def _check_objective(name: str) -> None:
    OBJECTIVES[name]  # raises a one-line ConfigError for an unknown name


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Timestep shift of SD3 (Esser et al. 2024, eq. 23), as in ``FlowMatchEulerDiscreteScheduler``."""
    return sigma if shift == 1.0 else shift * sigma / (1 + (shift - 1) * sigma)


def sample_noise_level(objective: str, schedule_cfg, n: int, generator: torch.Generator | None,
                       device, ac: torch.Tensor | None = None):
    """Random noise levels for a training batch: (t float (n,) in model units, alpha (n,), sigma (n,)).

    ``ac`` = :func:`alphas_cumprod` (pass it to avoid rebuilding the scheduler each step)."""
    _check_objective(objective)
    T = int(schedule_cfg.num_train_timesteps)
    if objective == "flow":
        sigma = shift_sigmas(torch.rand(n, generator=generator, device=device), float(schedule_cfg.flow_shift))
        return sigma * T, 1 - sigma, sigma
    ac = (alphas_cumprod(schedule_cfg) if ac is None else ac).to(device)
    t = torch.randint(0, T, (n,), generator=generator, device=device)
    ab = ac[t]
    return t.float(), ab.sqrt(), (1 - ab).sqrt()


def _bc(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) coefficient → broadcastable against x (B, ...)."""
    return a.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = alpha x0 + sigma eps (DDPM eq. 4 / the rectified-flow interpolant)."""
    return _bc(alpha, x0) * x0 + _bc(sigma, x0) * eps


def target(objective: str, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor,
           sigma: torch.Tensor) -> torch.Tensor:
    """What the model regresses: eps; x0; v = alpha eps - sigma x0 (Salimans & Ho 2022, §4); flow eps - x0."""
    _check_objective(objective)
    if objective == "eps":
        return eps
    if objective == "x0":
        return x0
    if objective == "v":
        return _bc(alpha, x0) * eps - _bc(sigma, x0) * x0
    return eps - x0


def to_x0_eps(objective: str, output: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor,
              sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert a model output to (x0, eps) at noise level (alpha, sigma): the inverse of :func:`target`."""
    _check_objective(objective)
    a, s = _bc(alpha, x_t), _bc(sigma, x_t)
    if objective == "eps":
        return (x_t - s * output) / a, output
    if objective == "x0":
        return output, (x_t - a * output) / s
    if objective == "v":  # uses alpha² + sigma² = 1
        return a * x_t - s * output, s * x_t + a * output
    return x_t - s * output, x_t + a * output


def loss_weight(objective_cfg, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-example loss weights. min_snr (Hang et al. 2023, eq. 9 and its eps / v forms): with SNR = alpha²/sigma²,
    x0: min(SNR, γ); eps: min(SNR, γ)/SNR; v: min(SNR, γ)/(SNR + 1)."""
    name, objective = objective_cfg.loss_weighting, objective_cfg.name
    check_loss_weighting(objective_cfg)
    if name == "uniform":
        return torch.ones_like(alpha)
    gamma = float(objective_cfg.min_snr_gamma)
    snr = alpha.double() ** 2 / (sigma.double() ** 2)
    if objective == "eps":
        w = (gamma / snr).clamp(max=1.0)  # = min(SNR, γ)/SNR, finite at SNR = 0
    elif objective == "x0":
        w = snr.clamp(max=gamma)
    else:
        w = snr.clamp(max=gamma) / (snr + 1)
    return w.to(alpha.dtype)


def diffusion_loss(model, x0: torch.Tensor, class_labels: torch.Tensor | None, objective_cfg, schedule_cfg,
                   generator: torch.Generator | None = None, ac: torch.Tensor | None = None,
                   rows: slice | None = None) -> torch.Tensor:
    """Weighted MSE between ``model(x_t, t, class_labels)`` and the objective's target (DDPM's L_simple with
    optional Min-SNR weights); all randomness from ``generator``. ``rows``: this process's rows of the batch (DDP):
    t and noise are drawn for the whole batch first, so every row gets what a 1-process run gives it."""
    objective = objective_cfg.name
    t, alpha, sigma = sample_noise_level(objective, schedule_cfg, x0.shape[0], generator, x0.device, ac)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if rows is not None:
        x0, eps, t, alpha, sigma = x0[rows], eps[rows], t[rows], alpha[rows], sigma[rows]
        class_labels = class_labels[rows] if class_labels is not None else None
    out = model(add_noise(x0, eps, alpha, sigma), t, class_labels)
    per_example = (out.float() - target(objective, x0, eps, alpha, sigma).float()).pow(2).flatten(1).mean(1)
    return (loss_weight(objective_cfg, alpha, sigma).float() * per_example).mean()


def step_seed(seed: int, step: int) -> int:
    """A 32-bit seed that is a pure function of (seed, step): batch randomness survives a resume exactly."""
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0])
