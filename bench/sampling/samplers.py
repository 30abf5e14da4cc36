"""Sampler registry: sampler name (``conf/sampler/<name>.yaml``) -> a configured diffusers scheduler + its checks.

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
deis        DEISMultistepScheduler             eps, v, x0
lcm         LCMScheduler                       eps, v, x0
flow_euler  FlowMatchEulerDiscreteScheduler    flow
=========== ================================== ============================================
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

from bench.models.classifier import check_classifier
from bench.registry import Entry, Registry
from bench.schedule import beta_kwargs, ddpm_scheduler, train_sigmas
from bench.schema import ConfigError
from bench.training.objectives import DIFFUSION_OBJECTIVES, PREDICTION_TYPE

log = logging.getLogger(__name__)

TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
SIGMA_MAX_POLICIES = ("clip", "error", "allow")
DEFAULT_LCM_GRID = 50  # LCMScheduler's original_inference_steps when no distillation grid is given


def _common(smp, sch, objective: str) -> dict[str, Any]:
    return dict(beta_kwargs(sch), prediction_type=PREDICTION_TYPE[objective], timestep_spacing=smp.timestep_spacing)


def _flow(sch) -> dict[str, Any]:
    """dpmpp / unipc on a flow model: diffusers' flow sigmas, sigma_t = t, alpha_t = 1 - t (shifted by flow_shift)."""
    return dict(num_train_timesteps=sch.num_train_timesteps, prediction_type="flow_prediction",
                use_flow_sigmas=True, flow_shift=sch.flow_shift)


def _ddpm(smp, sch, objective, lcm_grid):
    """Ancestral sampling, Ho et al. 2020 Alg. 2; fewer steps via the respaced posterior (Nichol & Dhariwal 2021)."""
    return DDPMScheduler(**_common(smp, sch, objective), clip_sample=False, thresholding=False,
                         variance_type="fixed_small")


def _ddim(smp, sch, objective, lcm_grid):
    """DDIM, Song et al. 2021 eq. 12; eta is given at step time. set_alpha_to_one=True: the last step lands on
    abar_0 := 1, i.e. returns the predicted clean sample (the paper's alpha_0 = 1), not abar at t=0."""
    return DDIMScheduler(**_common(smp, sch, objective), clip_sample=False, thresholding=False, set_alpha_to_one=True)


def _multistep_kwargs(smp, sch, objective) -> dict[str, Any]:
    return _flow(sch) if objective == "flow" else dict(_common(smp, sch, objective),
                                                       use_karras_sigmas=smp.use_karras_sigmas)


def _dpmpp(smp, sch, objective, lcm_grid):
    """DPM-Solver++ multistep, Lu et al. 2022 (arXiv:2211.01095) Alg. 2, data-prediction form."""
    return DPMSolverMultistepScheduler(**_multistep_kwargs(smp, sch, objective), algorithm_type="dpmsolver++",
                                       solver_order=smp.solver_order, thresholding=False)


def _unipc(smp, sch, objective, lcm_grid):
    """UniPC multistep predictor-corrector, Zhao et al. 2023 (arXiv:2302.04867), bh2 variant."""
    return UniPCMultistepScheduler(**_multistep_kwargs(smp, sch, objective), solver_order=smp.solver_order,
                                   thresholding=False)


def _deis(smp, sch, objective, lcm_grid):
    """DEIS multistep exponential integrator, Zhang & Chen 2023 (arXiv:2204.13902), log-rho variant."""
    return DEISMultistepScheduler(**_common(smp, sch, objective), solver_order=smp.solver_order,
                                  use_karras_sigmas=smp.use_karras_sigmas, thresholding=False)


def _euler(smp, sch, objective, lcm_grid):
    """Euler in sigma space, Karras et al. 2022 Alg. 1 (no churn)."""
    return EulerDiscreteScheduler(**_sigma_space_kwargs(smp, sch, objective), use_karras_sigmas=smp.use_karras_sigmas)


def _heun(smp, sch, objective, lcm_grid):
    """Heun's 2nd-order method, Karras et al. 2022 Alg. 1: two model calls per step except the last."""
    return HeunDiscreteScheduler(**_sigma_space_kwargs(smp, sch, objective), use_karras_sigmas=smp.use_karras_sigmas,
                                 clip_sample=False)


def _lcm(smp, sch, objective, lcm_grid):
    """Latent/Consistency-model multistep sampling, Luo et al. 2023 (arXiv:2310.04378) Alg. 1; its skip-step grid
    (original_inference_steps) is the consistency-distillation grid ``lcm_grid`` (distill.num_ddim_timesteps)."""
    return LCMScheduler(**_common(smp, sch, objective), original_inference_steps=int(lcm_grid), clip_sample=False,
                        thresholding=False, set_alpha_to_one=True)


def _flow_euler(smp, sch, objective, lcm_grid):
    """Euler on the rectified-flow ODE dx/dt = v (Liu et al. 2023; shift as in Esser et al. 2024, SD3)."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=sch.num_train_timesteps, shift=sch.flow_shift)


def _sigma_space_kwargs(smp, sch, objective) -> dict[str, Any]:
    """Constructor kwargs for euler/heun, applying sampler.sigma_max_policy.

    The cosine schedule (squaredcos_cap_v2, beta capped at 0.999) has abar_{T-1} ~ 2e-9, so sigma_max ~ 2e4: the
    first step multiplies the model's error by sigma_max. Policy "clip" drops the trailing training timesteps whose
    sigma exceeds sampler.max_sigma (the schedule is passed as its first T' betas, `trained_betas`), so the sampler
    starts at the largest *trained* sigma <= max_sigma and the model is still evaluated at timesteps it was trained
    on with their true noise level (t values are unchanged). "error" refuses; "allow" keeps sigma_max.
    """
    kw = _common(smp, sch, objective)
    policy, max_sigma = smp.sigma_max_policy, float(smp.max_sigma)
    sigmas = train_sigmas(sch)
    sigma_max = float(sigmas[-1])
    _check_sigma_max(smp, sch, sigma_max)
    if sigma_max <= max_sigma or policy == "allow":
        if sigma_max > max_sigma:
            log.warning("sampler %s: schedule %s starts at sigma_max=%.4g > sampler.max_sigma=%.4g; kept "
                        "(sampler.sigma_max_policy=allow)", smp.name, sch.name, sigma_max, max_sigma)
        return kw
    keep = int((sigmas <= max_sigma).sum())  # sigmas increase with t, so these are t = 0..keep-1
    betas = ddpm_scheduler(sch).betas[:keep]
    log.warning("sampler %s: schedule %s sigma_max=%.4g > sampler.max_sigma=%.4g; clipped to sigma=%.4g "
                "(training timesteps 0..%d; sampler.sigma_max_policy=clip)", smp.name, sch.name,
                sigma_max, max_sigma, float(sigmas[keep - 1]), keep - 1)
    kw.update(num_train_timesteps=keep, trained_betas=betas.tolist())
    return kw


def _check_sigma_max(smp, sch, sigma_max: float) -> None:
    policy, max_sigma = smp.sigma_max_policy, float(smp.max_sigma)
    if policy == "error" and sigma_max > max_sigma:
        raise ConfigError("sampler.sigma_max_policy", policy, "clip | allow",
                          f"{smp.name} on schedule {sch.name} starts at sigma_max={sigma_max:.4g} "
                          f"> sampler.max_sigma={max_sigma:.4g}; the first step would amplify model error by it")


def lcm_grid(cfg) -> int:
    """The LCM skip-step grid a whole config implies: its consistency-distillation grid, distill.num_ddim_timesteps
    (the one place where the sampler group reads another group; the builders take the number)."""
    distill = cfg.get("distill") if hasattr(cfg, "get") else getattr(cfg, "distill", None)
    return int(distill.num_ddim_timesteps) if distill is not None else DEFAULT_LCM_GRID


def _err(key, value, allowed, why=""):
    raise ConfigError(key, value, allowed, why)


def check_combination(cfg, info=None) -> None:
    """Raise ConfigError (one line: key, value, what is allowed, why) for a sampler/objective/schedule/steps/
    guidance combination that cannot run; with ``info`` also guidance on an unconditional model.

    Decisions: sampler.eta != 0 with a sampler other than ddim is an error (it would be silently ignored while the
    results row records it); eta must lie in [0, 1] (eta > 1 makes DDIM's direction term sqrt of a negative).
    """
    smp, obj, sch, sampling = cfg.sampler, cfg.objective, cfg.schedule, cfg.sampling
    name = smp.name
    entry = SAMPLERS[name]
    if obj.name not in entry.objectives:
        if name == "flow_euler":
            why = "flow_euler integrates a rectified-flow velocity; use ddim/dpmpp/euler/... for diffusion models"
        else:
            why = (f"{name} is a diffusion sampler; a flow model needs flow_euler, dpmpp or unipc"
                   if obj.name == "flow" else f"diffusers {entry.cls.__name__} cannot take it")
        _err("objective.name", obj.name, f"{' | '.join(entry.objectives)} with sampler={name}", why)
    T = int(sch.num_train_timesteps)
    steps = int(sampling.num_inference_steps)
    if steps <= 0 or steps > T:
        _err("sampling.num_inference_steps", steps, f"1..{T} (schedule.num_train_timesteps)")
    if name == "lcm" and steps > lcm_grid(cfg):
        _err("sampling.num_inference_steps", steps, f"1..{lcm_grid(cfg)} for lcm",
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
    if smp.use_karras_sigmas and (not entry.karras or obj.name == "flow"):
        karras = [n for n in SAMPLERS if SAMPLERS[n].karras]
        _err("sampler.use_karras_sigmas", True, f"false with sampler={name}, objective={obj.name}",
             f"Karras sigmas exist for {', '.join(karras)} on diffusion objectives")
    if smp.sigma_max_policy not in SIGMA_MAX_POLICIES:
        _err("sampler.sigma_max_policy", smp.sigma_max_policy, " | ".join(SIGMA_MAX_POLICIES))
    if smp.max_sigma <= 0:
        _err("sampler.max_sigma", smp.max_sigma, "> 0")
    check_guidance(sampling.guidance_scale, info.num_classes if info is not None else None)
    if info is not None:
        check_classifier(cfg.classifier, info, sampling.classifier_scale)
    if entry.sigma_space:
        _check_sigma_max(smp, sch, float(train_sigmas(sch)[-1]))


def check_guidance(guidance_scale: float, num_classes: int | None, key: str = "sampling.guidance_scale") -> None:
    """The one guidance check. Classifier-free guidance (Ho & Salimans 2022) needs a conditional model: on an
    unconditional one (num_classes == 0) only guidance_scale == 1 (plain conditional = unconditional sampling) is
    meaningful. ``num_classes=None``: the sign only."""
    if guidance_scale < 0:
        _err(key, guidance_scale, "a number >= 0 (0 = unconditional, 1 = conditional, > 1 = classifier-free guidance)")
    if num_classes == 0 and guidance_scale != 1:
        _err(key, guidance_scale, "1 for an unconditional model (num_classes=0)",
             "guidance mixes conditional and unconditional predictions; this model has no classes")


@dataclass(frozen=True)
class Sampler(Entry):
    """A sampler: ``build(sampler_cfg, schedule_cfg, objective, lcm_grid)`` -> its diffusers scheduler, the
    diffusers class, the objectives it takes and whether it integrates in sigma space (sigma_max policy applies)."""

    cls: type = object
    objectives: tuple = DIFFUSION_OBJECTIVES
    sigma_space: bool = False  # integrates in sigma = sqrt((1 - abar) / abar) (Karras et al. 2022)
    karras: bool = False  # takes sampler.use_karras_sigmas (Karras et al. 2022 noise levels; diffusion objectives)


SAMPLERS = Registry("sampler", "sampler.name", {
    "ddpm": Sampler(_ddpm, check_combination, cls=DDPMScheduler),
    "ddim": Sampler(_ddim, check_combination, cls=DDIMScheduler),
    "dpmpp": Sampler(_dpmpp, check_combination, cls=DPMSolverMultistepScheduler,
                     objectives=DIFFUSION_OBJECTIVES + ("flow",), karras=True),
    "euler": Sampler(_euler, check_combination, cls=EulerDiscreteScheduler, sigma_space=True, karras=True),
    "heun": Sampler(_heun, check_combination, cls=HeunDiscreteScheduler, sigma_space=True, karras=True),
    "unipc": Sampler(_unipc, check_combination, cls=UniPCMultistepScheduler,
                     objectives=DIFFUSION_OBJECTIVES + ("flow",), karras=True),
    "deis": Sampler(_deis, check_combination, cls=DEISMultistepScheduler, karras=True),
    "lcm": Sampler(_lcm, check_combination, cls=LCMScheduler),
    "flow_euler": Sampler(_flow_euler, check_combination, cls=FlowMatchEulerDiscreteScheduler, objectives=("flow",)),
})


def build_sampler(sampler_cfg, schedule_cfg, objective: str, lcm_grid: int = DEFAULT_LCM_GRID):
    """The diffusers scheduler of sampler ``sampler_cfg.name`` on ``schedule_cfg`` for a model trained on
    ``objective``. Call :func:`check_combination` first for one-line errors; this assumes a valid combination.
    ``scheduler.config`` (see :func:`scheduler_config`) is the full resolved setting."""
    return SAMPLERS[sampler_cfg.name].build(sampler_cfg, schedule_cfg, objective, lcm_grid)


def build_scheduler(cfg):
    """:func:`build_sampler` from a whole composed config (a thin adapter for callers holding one)."""
    return build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name, lcm_grid(cfg))


def scheduler_config(scheduler) -> dict[str, Any]:
    """JSON-able resolved config of a scheduler, ``_class_name`` included (diffusers' save_config format)."""
    out = {"_class_name": type(scheduler).__name__}
    for k, v in dict(scheduler.config).items():
        out[k] = v.tolist() if hasattr(v, "tolist") else v
    return out
