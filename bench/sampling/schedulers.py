"""Scheduler registry: sampler name -> a configured diffusers scheduler, and the combination checks.

Every sampler is a stock diffusers scheduler (its constructor arguments are its saved config, so
``scheduler.config`` is what gets written beside results). Nothing here re-implements a solver.

Objective -> diffusers ``prediction_type``: eps -> "epsilon" (Ho et al. 2020), v -> "v_prediction"
(Salimans & Ho 2022), x0 -> "sample", flow -> "flow_prediction" (rectified flow, Liu et al. 2023;
velocity = noise - x0, timesteps = sigma * num_train_timesteps).

Which objective each sampler takes (read from the diffusers 0.42.1 sources, checked by tests/test_schedulers.py):

=========== ================================== ============================================
sampler     diffusers class                    objectives
=========== ================================== ============================================
ddpm        DDPMScheduler                      eps, v, x0
ddim        DDIMScheduler                      eps, v, x0
dpmpp       DPMSolverMultistepScheduler        eps, v, x0, flow (use_flow_sigmas)
euler       EulerDiscreteScheduler             eps, v, x0
heun        HeunDiscreteScheduler              eps, v, x0
unipc       UniPCMultistepScheduler            eps, v, x0, flow (use_flow_sigmas)
lcm         LCMScheduler                       eps, v, x0
flow_euler  FlowMatchEulerDiscreteScheduler    flow
=========== ================================== ============================================
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

from bench.schema import ConfigError

log = logging.getLogger(__name__)

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample", "flow": "flow_prediction"}
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
SIGMA_MAX_POLICIES = ("clip", "error", "allow")
DIFFUSION_OBJECTIVES = ("eps", "v", "x0")

# sampler -> objectives it accepts (see the module docstring)
OBJECTIVES: Dict[str, tuple] = {
    "ddpm": DIFFUSION_OBJECTIVES,
    "ddim": DIFFUSION_OBJECTIVES,
    "dpmpp": DIFFUSION_OBJECTIVES + ("flow",),
    "euler": DIFFUSION_OBJECTIVES,
    "heun": DIFFUSION_OBJECTIVES,
    "unipc": DIFFUSION_OBJECTIVES + ("flow",),
    "lcm": DIFFUSION_OBJECTIVES,
    "flow_euler": ("flow",),
}
CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpmpp": DPMSolverMultistepScheduler,
           "euler": EulerDiscreteScheduler, "heun": HeunDiscreteScheduler, "unipc": UniPCMultistepScheduler,
           "lcm": LCMScheduler, "flow_euler": FlowMatchEulerDiscreteScheduler}
SIGMA_SPACE = ("euler", "heun")  # samplers that integrate in sigma = sqrt((1 - abar) / abar) (Karras et al. 2022)
KARRAS = ("euler", "heun", "dpmpp", "unipc")  # accept use_karras_sigmas (diffusion objectives only)
STOCHASTIC = ("ddpm", "lcm")  # draw noise at every step (ddim too when eta > 0)


def beta_kwargs(s) -> Dict[str, Any]:
    """The diffusers constructor arguments of schedule config ``s`` (training builds its DDPMScheduler from these too,
    so training and sampling share one noise schedule)."""
    return dict(num_train_timesteps=s.num_train_timesteps, beta_start=s.beta_start, beta_end=s.beta_end,
                beta_schedule=BETA_SCHEDULES[s.name])


def _common(cfg) -> Dict[str, Any]:
    return dict(beta_kwargs(cfg.schedule), prediction_type=PREDICTION_TYPES[cfg.objective.name],
                timestep_spacing=cfg.sampler.timestep_spacing)


def _flow(cfg) -> Dict[str, Any]:
    """dpmpp / unipc on a flow model: diffusers' flow sigmas, sigma_t = t, alpha_t = 1 - t (shifted by flow_shift)."""
    return dict(num_train_timesteps=cfg.schedule.num_train_timesteps, prediction_type="flow_prediction",
                use_flow_sigmas=True, flow_shift=cfg.schedule.flow_shift)


def _ddpm(cfg):
    """Ancestral sampling, Ho et al. 2020 Alg. 2; fewer steps via the respaced posterior (Nichol & Dhariwal 2021)."""
    return DDPMScheduler(**_common(cfg), clip_sample=False, thresholding=False, variance_type="fixed_small")


def _ddim(cfg):
    """DDIM, Song et al. 2021 eq. 12; eta is given at step time. set_alpha_to_one=True: the last step lands on
    abar_0 := 1, i.e. returns the predicted clean sample (the paper's alpha_0 = 1), not abar at t=0."""
    return DDIMScheduler(**_common(cfg), clip_sample=False, thresholding=False, set_alpha_to_one=True)


def _dpmpp(cfg):
    """DPM-Solver++ multistep, Lu et al. 2022 (arXiv:2211.01095) Alg. 2, data-prediction form."""
    kw = _flow(cfg) if cfg.objective.name == "flow" else dict(_common(cfg),
                                                              use_karras_sigmas=cfg.sampler.use_karras_sigmas)
    return DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=cfg.sampler.solver_order,
                                       thresholding=False)


def _unipc(cfg):
    """UniPC multistep predictor-corrector, Zhao et al. 2023 (arXiv:2302.04867), bh2 variant."""
    kw = _flow(cfg) if cfg.objective.name == "flow" else dict(_common(cfg),
                                                              use_karras_sigmas=cfg.sampler.use_karras_sigmas)
    return UniPCMultistepScheduler(**kw, solver_order=cfg.sampler.solver_order, thresholding=False)


def _euler(cfg):
    """Euler in sigma space, Karras et al. 2022 Alg. 1 (no churn)."""
    return EulerDiscreteScheduler(**_sigma_space_kwargs(cfg), use_karras_sigmas=cfg.sampler.use_karras_sigmas)


def _heun(cfg):
    """Heun's 2nd-order method, Karras et al. 2022 Alg. 1: two model calls per step except the last."""
    return HeunDiscreteScheduler(**_sigma_space_kwargs(cfg), use_karras_sigmas=cfg.sampler.use_karras_sigmas,
                                 clip_sample=False)


def _lcm(cfg):
    """Latent/Consistency-model multistep sampling, Luo et al. 2023 (arXiv:2310.04378) Alg. 1; its skip-step grid
    (original_inference_steps) is the consistency-distillation grid, distill.num_ddim_timesteps."""
    return LCMScheduler(**_common(cfg), original_inference_steps=_lcm_grid(cfg), clip_sample=False,
                        thresholding=False, set_alpha_to_one=True)


def _flow_euler(cfg):
    """Euler on the rectified-flow ODE dx/dt = v (Liu et al. 2023; shift as in Esser et al. 2024, SD3)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.schedule.num_train_timesteps,
                                           shift=cfg.schedule.flow_shift)


SCHEDULERS: Dict[str, Callable] = {
    "ddpm": _ddpm, "ddim": _ddim, "dpmpp": _dpmpp, "euler": _euler, "heun": _heun, "unipc": _unipc,
    "lcm": _lcm, "flow_euler": _flow_euler,
}


def _lcm_grid(cfg) -> int:
    distill = cfg.get("distill") if hasattr(cfg, "get") else getattr(cfg, "distill", None)
    return int(distill.num_ddim_timesteps) if distill is not None else 50


def train_sigmas(cfg) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) of the training schedule, t = 0..T-1 (float64)."""
    abar = DDPMScheduler(**beta_kwargs(cfg.schedule)).alphas_cumprod.double()
    return ((1 - abar) / abar).sqrt()


def _sigma_space_kwargs(cfg) -> Dict[str, Any]:
    """Constructor kwargs for euler/heun, applying sampler.sigma_max_policy.

    The cosine schedule (squaredcos_cap_v2, beta capped at 0.999) has abar_{T-1} ~ 2e-9, so sigma_max ~ 2e4: the
    first step multiplies the model's error by sigma_max. Policy "clip" drops the trailing training timesteps whose
    sigma exceeds sampler.max_sigma (the schedule is passed as its first T' betas, `trained_betas`), so the sampler
    starts at the largest *trained* sigma <= max_sigma and the model is still evaluated at timesteps it was trained
    on with their true noise level (t values are unchanged). "error" refuses; "allow" keeps sigma_max.
    """
    kw = _common(cfg)
    policy, max_sigma = cfg.sampler.sigma_max_policy, float(cfg.sampler.max_sigma)
    sigmas = train_sigmas(cfg)
    sigma_max = float(sigmas[-1])
    _check_sigma_max(cfg, sigma_max)
    if sigma_max <= max_sigma or policy == "allow":
        if sigma_max > max_sigma:
            log.warning("sampler %s: schedule %s starts at sigma_max=%.4g > sampler.max_sigma=%.4g; kept "
                        "(sampler.sigma_max_policy=allow)", cfg.sampler.name, cfg.schedule.name, sigma_max, max_sigma)
        return kw
    keep = int((sigmas <= max_sigma).sum())  # sigmas increase with t, so these are t = 0..keep-1
    betas = DDPMScheduler(**beta_kwargs(cfg.schedule)).betas[:keep]
    log.warning("sampler %s: schedule %s sigma_max=%.4g > sampler.max_sigma=%.4g; clipped to sigma=%.4g "
                "(training timesteps 0..%d; sampler.sigma_max_policy=clip)", cfg.sampler.name, cfg.schedule.name,
                sigma_max, max_sigma, float(sigmas[keep - 1]), keep - 1)
    kw.update(num_train_timesteps=keep, trained_betas=betas.tolist())
    return kw


def _check_sigma_max(cfg, sigma_max: float) -> None:
    policy, max_sigma = cfg.sampler.sigma_max_policy, float(cfg.sampler.max_sigma)
    if policy == "error" and sigma_max > max_sigma:
        raise ConfigError("sampler.sigma_max_policy", policy, "clip | allow",
                          f"{cfg.sampler.name} on schedule {cfg.schedule.name} starts at sigma_max={sigma_max:.4g} "
                          f"> sampler.max_sigma={max_sigma:.4g}; the first step would amplify model error by it")


def build_scheduler(cfg):
    """The diffusers scheduler for ``cfg.sampler.name`` built from cfg.schedule, cfg.objective and cfg.sampler.

    ``cfg`` is the full composed config. Call :func:`check_combination` first for one-line errors; this function
    assumes a valid combination. ``scheduler.config`` (see :func:`scheduler_config`) is the full resolved setting.
    """
    return SCHEDULERS[cfg.sampler.name](cfg)


def scheduler_config(scheduler) -> Dict[str, Any]:
    """JSON-able resolved config of a scheduler, ``_class_name`` included (diffusers' save_config format)."""
    out = {"_class_name": type(scheduler).__name__}
    for k, v in dict(scheduler.config).items():
        out[k] = v.tolist() if hasattr(v, "tolist") else v
    return out


def _err(key, value, allowed, why=""):
    raise ConfigError(key, value, allowed, why)


def check_combination(cfg) -> None:
    """Raise ConfigError (one line: key, value, what is allowed, why) for a sampler/objective/schedule/steps/
    guidance combination that cannot run. Guidance vs. an unconditional model is :func:`check_guidance`.

    Decisions: sampler.eta != 0 with a sampler other than ddim is an error (it would be silently ignored while the
    results row records it); eta must lie in [0, 1] (eta > 1 makes DDIM's direction term sqrt of a negative).
    """
    smp, obj, sch, sampling = cfg.sampler, cfg.objective, cfg.schedule, cfg.sampling
    name = smp.name
    if name not in SCHEDULERS:
        _err("sampler.name", name, " | ".join(SCHEDULERS))
    if obj.name not in PREDICTION_TYPES:
        _err("objective.name", obj.name, " | ".join(PREDICTION_TYPES))
    if sch.name not in BETA_SCHEDULES:
        _err("schedule.name", sch.name, " | ".join(BETA_SCHEDULES))
    if obj.name not in OBJECTIVES[name]:
        if name == "flow_euler":
            why = "flow_euler integrates a rectified-flow velocity; use ddim/dpmpp/euler/... for diffusion models"
        else:
            why = (f"{name} is a diffusion sampler; a flow model needs flow_euler, dpmpp or unipc"
                   if obj.name == "flow" else f"diffusers {CLASSES[name].__name__} cannot take it")
        _err("objective.name", obj.name, f"{' | '.join(OBJECTIVES[name])} with sampler={name}", why)
    T = int(sch.num_train_timesteps)
    steps = int(sampling.num_inference_steps)
    if steps <= 0 or steps > T:
        _err("sampling.num_inference_steps", steps, f"1..{T} (schedule.num_train_timesteps)")
    if name == "lcm" and steps > _lcm_grid(cfg):
        _err("sampling.num_inference_steps", steps, f"1..{_lcm_grid(cfg)} for lcm",
             "LCM steps are a subset of its distill.num_ddim_timesteps skip-step grid")
    if smp.timestep_spacing not in TIMESTEP_SPACINGS:
        _err("sampler.timestep_spacing", smp.timestep_spacing, " | ".join(TIMESTEP_SPACINGS))
    if smp.solver_order not in (1, 2, 3):
        _err("sampler.solver_order", smp.solver_order, "1 | 2 | 3")
    if smp.eta < 0 or smp.eta > 1:
        _err("sampler.eta", smp.eta, "0 <= eta <= 1", "0 = deterministic DDIM, 1 = DDPM-like")
    if smp.eta != 0 and name != "ddim":
        _err("sampler.eta", smp.eta, f"0 with sampler={name} (eta is a ddim parameter)",
             "it would be ignored but recorded in the results row")
    if smp.use_karras_sigmas and (name not in KARRAS or obj.name == "flow"):
        _err("sampler.use_karras_sigmas", True, f"false with sampler={name}, objective={obj.name}",
             f"Karras sigmas exist for {', '.join(KARRAS)} on diffusion objectives")
    if smp.sigma_max_policy not in SIGMA_MAX_POLICIES:
        _err("sampler.sigma_max_policy", smp.sigma_max_policy, " | ".join(SIGMA_MAX_POLICIES))
    if smp.max_sigma <= 0:
        _err("sampler.max_sigma", smp.max_sigma, "> 0")
    if obj.name == "flow" and sch.flow_shift <= 0:
        _err("schedule.flow_shift", sch.flow_shift, "> 0")
    if sampling.guidance_scale < 0:
        _err("sampling.guidance_scale", sampling.guidance_scale, ">= 0 (0 = unconditional, 1 = conditional, >1 = CFG)")
    if name in SIGMA_SPACE:
        _check_sigma_max(cfg, float(train_sigmas(cfg)[-1]))


def check_guidance(guidance_scale: float, num_classes: int) -> None:
    """Classifier-free guidance (Ho & Salimans 2022) needs a conditional model: on an unconditional one
    (num_classes == 0) only guidance_scale == 1 (plain conditional = unconditional sampling) is meaningful."""
    if guidance_scale < 0:
        _err("sampling.guidance_scale", guidance_scale, ">= 0")
    if num_classes == 0 and guidance_scale != 1:
        _err("sampling.guidance_scale", guidance_scale, "1 for an unconditional model (num_classes=0)",
             "guidance mixes conditional and unconditional predictions; this model has no classes")
