"""DDIM inversion of held-out real images and back (Song et al. 2021 §5.4; null-text inversion, Mokady et al. 2023).

Real image x0 → z0 (the model's space) → diffusers' ``DDIMInverseScheduler`` for S steps → z_T → the DDIM sampler
back for the same S steps with the same condition → x̂0; the scores compare x̂0 with x0.

- **The inverse scheduler is the forward sampler's own config** (``from_config``): ``DDIMInverseScheduler()``'s
  defaults clip x̂0 to [-1, 1] (``clip_sample``) and start from ᾱ = 1 (``set_alpha_to_one``) whatever the sampler
  does; built from the forward config, both directions clip, space and end alike.
- **The grids mirror each other, S steps each way.** ``set_timesteps(S)`` gives the inverse scheduler the forward
  timesteps reversed; its first step leaves x0 (ᾱ = the forward's final ᾱ: 1 with set_alpha_to_one) for the first
  grid point, evaluating the model at the destination timestep (never at the negative "previous" one:
  github.com/huggingface/diffusers/pull/5145), so all S forward steps are inverted, not S - 1
  (github.com/huggingface/diffusers/pull/3436). NFE = 2 S, doubled under CFG.
- **Null-text inversion** (``task.method=null_text``, guidance w ≠ 1): the pivot trajectory is the inversion at
  w = 1; then, for each forward step i, the null condition is optimised by ``task.null_inner_steps`` Adam steps at lr
  ``task.null_lr`` (1 - i/100) so that the CFG step from the current latent lands on the pivot's next one, stopping
  once the step's loss is below ``task.null_early_stop`` + 2e-5 i (diffusers' community null-text pipeline). Each
  image has its own null condition and early stop, so the result does not depend on the batch size. Its model calls
  and seconds are recorded apart (``nfe_null_text``, ``null_text_s``); the reconstruction uses the per-step nulls.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from bench.artifacts import write_grid
from bench.evaluators import load_feature_net
from bench.images import quantize_uint8, to_uint8_nhwc
from bench.metrics.cost import CostMeter
from bench.metrics.scorer import images_fid
from bench.results import Columns
from bench.sampling import NonFiniteError
from bench.schema import ConfigError

from .common import TaskResult, check_scores, condition_of, held_out, image_scores, task_columns

METHODS = ("plain", "null_text")
SPACINGS = ("leading", "trailing")  # DDIMInverseScheduler.set_timesteps knows no other


def check(cfg, info) -> None:
    """A deterministic DDIM path both ways (sampler=ddim, eta 0, a spacing the inverse scheduler has), no classifier
    guidance, a known method; null-text inversion only for a conditional model. Each a one-line ConfigError."""
    t, smp = cfg.task, cfg.sampler
    check_scores(cfg, "invert")
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
    if t.method == "null_text" and cfg.model.name == "torch":
        raise ConfigError("task.method", t.method, "plain for model=torch",
                          "null-text optimises the null class's embedding tables, which a user's module need not have")
    if t.method == "null_text" and condition_of(cfg, info) is None:
        raise ConfigError("task.method", t.method, f"plain for model={cfg.model.name} on data {info.id}",
                          "the model is unconditional: there is no null condition to optimise")


# ------------------------------------------------------------------------------------------------------ the loops

def inverse_scheduler(forward) -> DDIMInverseScheduler:
    """The DDIM inverse of the forward sampler: ``DDIMInverseScheduler.from_config(forward.config)`` (its
    clip_sample, set_alpha_to_one, spacing, offset, betas and prediction type, not the class defaults)."""
    if not isinstance(forward, DDIMScheduler):
        raise TypeError(f"DDIM inversion needs the DDIMScheduler it inverts, got {type(forward).__name__}")
    if forward.config.get("thresholding"):
        raise ValueError("DDIMInverseScheduler has no dynamic thresholding: this DDIM sampler cannot be inverted")
    own = inspect.signature(DDIMInverseScheduler.__init__).parameters  # the rest (thresholding off) has no inverse
    return DDIMInverseScheduler.from_config({k: v for k, v in forward.config.items() if k in own})


def _t(t, n: int) -> torch.Tensor:
    return t.float().expand(n)  # the denoiser interface: float (B,) timesteps


@torch.no_grad()
def ddim_invert(pred, inverse, z0, num_inference_steps: int, cond, guidance_scale: float, meter) -> list:
    """[z0, z_t1, ..., z_T]: DDIM inversion (Song et al. 2021 eq. 13 run backwards) on ``inverse``'s grid."""
    inverse.set_timesteps(num_inference_steps, device=z0.device)
    traj = [z0]
    for t in inverse.timesteps:
        out = pred.output(traj[-1], _t(t, len(z0)), cond, guidance_scale, meter)
        traj.append(inverse.step(out, t, traj[-1]).prev_sample)
    return traj


@torch.no_grad()
def ddim_sample(pred, forward, z, num_inference_steps: int, cond, guidance_scale: float, meter, nulls=None):
    """DDIM (eta = 0) from ``z`` = z_T on ``forward``'s grid; ``nulls[i]``: step i's null condition (null-text)."""
    forward.set_timesteps(num_inference_steps, device=z.device)
    for i, t in enumerate(forward.timesteps):
        out = pred.output(z, _t(t, len(z)), cond, guidance_scale, meter, None if nulls is None else nulls[i])
        z = forward.step(out, t, z).prev_sample
    return z


def null_text(pred, forward, traj: list, cond, guidance_scale: float, task_cfg, meter) -> tuple[list, dict]:
    """Null-text inversion (Mokady et al. 2023, Alg. 1, as diffusers' community pipeline): the per-step null
    conditions that make the CFG trajectory follow the pivot ``traj`` (the w = 1 inversion), and its statistics
    (inner steps per image and step, the last loss)."""
    S, n = len(traj) - 1, len(traj[0])
    forward.set_timesteps(S, device=traj[0].device)
    null, nulls, inner, last = pred.null(cond), [], [], None
    z = traj[-1]
    for i, t in enumerate(forward.timesteps):
        tb, target = _t(t, n), traj[S - i - 1]
        with torch.no_grad():
            out_c = pred.output(z, tb, cond, 1.0, meter)
        null = [v.detach().clone().requires_grad_(True) for v in null]
        opt = torch.optim.Adam(null, lr=float(task_cfg.null_lr) * (1.0 - i / 100.0))
        active = torch.ones(n, dtype=torch.bool, device=z.device)
        steps = torch.zeros(n, dtype=torch.long)
        for _ in range(int(task_cfg.null_inner_steps)):
            with torch.enable_grad():
                out_u = pred.output(z, tb, cond, 0.0, meter, null)
                prev = forward.step(out_u + guidance_scale * (out_c - out_u), t, z).prev_sample
                loss = (prev - target).pow(2).flatten(1).mean(1)  # per image: each has its own null and stop
                grads = torch.autograd.grad((loss * active).sum(), null)
            before = [v.detach().clone() for v in null]
            for v, g in zip(null, grads):
                v.grad = g
            opt.step()
            with torch.no_grad():  # an image that stopped keeps its null (Adam's momentum would move it)
                for v, b in zip(null, before):
                    v[~active] = b[~active]
            steps += active.cpu().long()
            active &= loss.detach() >= float(task_cfg.null_early_stop) + i * 2e-5
            last = loss.detach()
            if not active.any():
                break
        inner.append(steps)
        null = [v.detach() for v in null]
        nulls.append(null)
        with torch.no_grad():
            z = forward.step(pred.output(z, tb, cond, guidance_scale, meter, null), t, z).prev_sample
    return nulls, {"null_text_inner_steps": float(torch.stack(inner).float().mean()),
                   "null_text_last_loss": float(last.mean()) if last is not None else float("nan")}


# ------------------------------------------------------------------------------------------------------ the scores

@dataclass(frozen=True)
class InversionColumns(Columns):
    """What an inversion cell did: its method (plain | null_text), the model calls of each direction per image
    (inversion, reconstruction; null-text: its optimisation's forward passes, each with a backward, and its seconds)
    and the inverse scheduler."""

    inversion_method: str
    nfe_inversion: float
    nfe_reconstruction: float
    inverse_scheduler: str
    nfe_null_text: float = 0.0  # plain: no optimisation (every row has the cost columns, so a study tabulates them)
    null_text_s: float = 0.0
    null_text_inner_steps: float | None = None
    null_text_last_loss: float | None = None


def ssim_kernel(size: int) -> int:
    """SSIM's Gaussian window: 11 (Wang et al. 2004), or the largest odd size the image holds (8 px digits: 7)."""
    return min(11, size if size % 2 else size - 1)


def pixel_scores(x, xr) -> dict:
    """Per-image reconstruction errors in [0, 1] intensity: squared error, PSNR, SSIM (each (B,);
    :func:`bench.tasks.common.image_scores` with the window :func:`ssim_kernel`) of ``xr`` against ``x``."""
    a, b = (x.double().clamp(-1, 1) + 1) / 2, (xr.double().clamp(-1, 1) + 1) / 2
    s = image_scores(b, a, kernel_size=ssim_kernel(x.shape[-1]))
    return {k: s[k] for k in ("mse", "psnr", "ssim")}


def _scores(cfg, info, reals: torch.Tensor, recons: torch.Tensor, per: dict) -> dict:
    """Means of the per-image scores; with a metric, the distance of each pair in the evaluator's feature space and
    the FID of the reconstructions (and of the real images themselves: the floor at N) against the reference."""
    out = {f"recon_{k}": float(torch.cat(v).mean()) for k, v in per.items()}
    out["recon_psnr_std"] = float(torch.cat(per["psnr"]).std()) if len(reals) > 1 else 0.0
    out["ssim_kernel"] = ssim_kernel(reals.shape[-1])
    if cfg.metric.name == "none":
        return out
    net = load_feature_net(cfg, info)
    fa, fb = net(quantize_uint8(reals))[0].double(), net(quantize_uint8(recons))[0].double()
    out.update(recon_feature_dist=float((fa - fb).norm(dim=1).mean()), feature_net=net.name,
               feature_net_hash=net.weights_hash)
    if cfg.metric.fid:
        out.update(images_fid(cfg, info, {"recon_fid": [recons], "real_fid": [reals]}))
    return out


# ------------------------------------------------------------------------------------------------------ the runner

def run(cfg, info, subject, call, work_dir) -> TaskResult:
    """Invert and reconstruct the task's held-out images batch by batch; the row's scores, cost and columns."""
    pred, t = subject.predictor(), cfg.task
    forward, S, w = subject.scheduler, call.num_inference_steps, call.guidance_scale
    inverse = inverse_scheduler(forward)
    c = cfg.cost
    meter, opt_meter = CostMeter(call.device, c.warmup_batches, c.min_timed_batches), CostMeter(call.device)
    rows = {"inversion": 0, "reconstruction": 0}
    per, reals, recons, stats, opt_s = {"mse": [], "psnr": [], "ssim": []}, [], [], [], 0.0
    for batch in held_out(cfg, info, call.batch_size):
        x0 = batch.x.to(call.device)
        with meter.batch(len(x0)), torch.no_grad():
            z0 = pred.encode(x0)
            cond = pred.condition(None if batch.labels is None else batch.labels.to(call.device), batch.captions)
            r0 = meter.rows
            traj = ddim_invert(pred, inverse, z0, S, cond, 1.0 if t.method == "null_text" else w, meter)
            rows["inversion"] += meter.rows - r0
            nulls = None
            if t.method == "null_text":
                t0 = time.perf_counter()
                nulls, st = null_text(pred, forward, traj, cond, w, t, opt_meter)
                opt_s += time.perf_counter() - t0
                stats.append(st)
            r0 = meter.rows
            z = ddim_sample(pred, forward, traj[-1], S, cond, w, meter, nulls)
            rows["reconstruction"] += meter.rows - r0
            xr = pred.decode(z).float().cpu()
        if not torch.isfinite(xr).all():
            raise NonFiniteError(S - 1, None, S)
        for k, v in pixel_scores(batch.x, xr).items():
            per[k].append(v)
        reals.append(batch.x)
        recons.append(xr.clamp(-1, 1))
    reals, recons, n = torch.cat(reals), torch.cat(recons), int(t.num_images)
    k = min(len(reals), call.batch_size, 32)  # grid: real images above their reconstructions
    write_grid(work_dir / "grid.png", to_uint8_nhwc(torch.cat([reals[:k], recons[:k]])))
    cols = InversionColumns(t.method, rows["inversion"] / n, rows["reconstruction"] / n, type(inverse).__name__)
    if t.method == "null_text":
        cols = InversionColumns(**{**cols.columns(), "nfe_null_text": opt_meter.rows / n, "null_text_s": opt_s,
                                   **{key: float(np.mean([s[key] for s in stats])) for key in stats[0]}})
    cost = {**meter.summary(), "inference_mode": False, "channels_last": call.channels_last}
    return TaskResult(_scores(cfg, info, reals, recons, per), cost, (task_columns(cfg), cols))
