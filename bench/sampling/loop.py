"""The one sampling loop: any diffusers scheduler, per-image seeds, classifier-free and classifier guidance, cost
counters."""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bench.metrics.cost import CostMeter, counting
from bench.models import LatentDenoiser
from bench.sampling.img2img import img2img_timesteps, noise_to
from bench.sampling.rng import image_generators, initial_noise
from bench.schedule import alpha_sigma, train_sigmas
from bench.training import objectives as obj


class NonFiniteError(RuntimeError):
    """NaN/Inf in the sample after model call ``step`` (0-based index into ``scheduler.timesteps``)."""

    def __init__(self, step: int, timestep: float | None = None, num_steps: int | None = None):
        self.step, self.timestep = step, timestep
        where = f"step {step}" + (f"/{num_steps}" if num_steps else "")
        super().__init__(f"non-finite values (NaN/Inf) in the sample after {where}"
                         + (f" (timestep {timestep:g})" if timestep is not None else ""))


@dataclass
class Batch:
    x: torch.Tensor  # float32 (B, *shape) in model space, on the CPU
    labels: torch.Tensor | None  # int64 (B,) class of each image; None when not class-conditioned
    index: torch.Tensor  # int64 (B,) image indices i (image i was seeded with seed + i)
    prompts: list | None = None  # text-to-image pipelines: each image's prompt when it has no class (labels)
    control: torch.Tensor | None = None  # float (B, 1, H, W): the control mask each image was steered by


def guided(model, x, t, labels, guidance_scale: float, num_classes: int, **cond):
    """Model output under classifier-free guidance (Ho & Salimans 2022, eq. 6 in diffusers' convention):
    out_u + s (out_c - out_u), cond and uncond rows in ONE forward of 2B. s == 1: conditional only; s == 0:
    unconditional only (null class = num_classes). Applied to the raw output, which is exact for every linear
    parameterisation (eps, v, x0, flow velocity). ``cond``: per-row inputs beyond the class (a control map), given
    to both branches (as diffusers' ControlNet pipelines do outside guess mode)."""
    if labels is None:
        return model(x, t, **cond)
    if guidance_scale == 1:
        return model(x, t, class_labels=labels, **cond)
    null = torch.full_like(labels, num_classes)
    if guidance_scale == 0:
        return model(x, t, class_labels=null, **cond)
    both = {k: torch.cat([v, v]) for k, v in cond.items()}
    out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([labels, null]),
                         **both).chunk(2)
    return out_u + guidance_scale * (out_c - out_u)


@dataclass
class ClassifierGuidance:
    """A noise-aware classifier p(y | x_t) guiding the loop with ``scale`` (Dhariwal & Nichol 2021), for a model of
    ``objective`` trained on the schedule whose ``log_sigmas`` (log sqrt((1 - ᾱ)/ᾱ), t = 0..T-1) are given; None
    for flow (x_t = (1 - σ) x0 + σ eps at t = σ T)."""

    classifier: torch.nn.Module
    scale: float
    objective: str
    num_train_timesteps: int
    log_sigmas: torch.Tensor | None = None

    @classmethod
    def from_config(cls, classifier, cfg, scale: float) -> ClassifierGuidance:
        flow = cfg.objective.name == "flow"
        return cls(classifier, float(scale), cfg.objective.name, int(cfg.schedule.num_train_timesteps),
                   None if flow else train_sigmas(cfg.schedule).log())

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) of x_t = alpha x0 + sigma eps at model timesteps ``t`` (B,), float64."""
        return alpha_sigma(t, self.num_train_timesteps, self.log_sigmas)


def classifier_guided(out, x, t, labels, guide: ClassifierGuidance, cost: CostMeter):
    """The model output ``out`` at (x_t = ``x``, ``t``) with classifier guidance (Dhariwal & Nichol 2021, eq. 14
    generalised to every objective). On any Gaussian path x_t = a x0 + s eps the score is -eps/s, so adding
    k ∇_x log p(y | x_t) to the score is
        eps' = eps - k s ∇_x log p(y | x_t),   and, x_t fixed,   x0' = (x_t - s eps') / a = x0 + (k s²/a) ∇ log p,
    and the output the objective predicts follows from (x0', eps') by its own conversion (:func:`objectives.target`):
        eps: eps - k s g;  x0: x0 + k (s²/a) g;  v = a eps - s x0: v - k (s/a)(a² + s²) g = v - k (s/a) g;
        flow u = eps - x0 (a = 1 - s): u - k (s/a)(a + s) g = u - k (s/a) g,      with g = ∇_x log p(y | x_t).
    Every sampler consumes the output as it would the model's, so every sampler is guided. At a = 0 (flow's first
    step at σ = 1, a zero-terminal-SNR schedule) x0' is undefined (p(y | x_t) = p(y) there, so g carries no
    information): those rows keep the unguided output. One classifier forward + backward per call, counted apart
    from the model's (``nfe_classifier``)."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)  # a normal tensor: the loop's are inference tensors
        logp = torch.log_softmax(guide.classifier(xg, t.detach().clone()), -1)
        (g,) = torch.autograd.grad(logp.gather(1, labels[:, None]).sum(), xg)
    cost.record_classifier_call(x.shape[0])
    a, s = (v.to(x.dtype) for v in guide.alpha_sigma(t))
    ok = a > 0
    a = torch.where(ok, a, torch.ones_like(a))  # placeholder where a = 0: those rows keep `out`
    bc = (lambda v: v.reshape(-1, *([1] * (x.dim() - 1))))  # noqa: E731  (B,) against x (B, ...)
    x0, eps = obj.to_x0_eps(guide.objective, out, x, a, s)
    eps = eps - guide.scale * bc(s) * g.to(x.dtype)
    x0 = (x - bc(s) * eps) / bc(a)
    return torch.where(bc(ok), obj.target(guide.objective, x0, eps, a, s), out)


def sample(model, scheduler, *, shape: Sequence[int], num_samples: int, batch_size: int, seed: int,
           num_inference_steps: int, guidance_scale: float, num_classes: int, device, cost: CostMeter,
           eta: float = 0.0, class_labels: Sequence[int] | None = None, progress: bool = True,
           inference_mode: bool = True, channels_last: bool = False, check_every_step: bool = False,
           start: int = 0, classifier_guidance: ClassifierGuidance | None = None, init: torch.Tensor | None = None,
           strength: float = 1.0,
           control: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Iterator[Batch]:
    """Generate ``num_samples`` images of ``shape``, streaming one :class:`Batch` per ``batch_size`` images.
    ``start``: the images are i = start, ..., start + num_samples - 1 (a shard of a larger cell, bench.distributed).

    Per batch: ``scheduler.set_timesteps``; x_T = randn(seed + i) * init_noise_sigma; for each t in
    ``scheduler.timesteps``: out = guided(model, scale_model_input(x, t), t); x = step(out, t, x).prev_sample.
    ``model(x, t, class_labels=None)``: t is a float (B,) tensor in scheduler timestep units. Image i is labelled
    ``class_labels[i]`` if given, else ``i % num_classes`` (num_classes > 0 and guidance_scale > 0, or classifier
    guidance). ``classifier_guidance``: each output then goes through :func:`classifier_guided` (after CFG).
    Raises NonFiniteError(step) on NaN/Inf after a step: the finite check of every step is kept on the device and
    read once per batch (``check_every_step=True`` reads it after each step: a host sync per step on GPU).
    ``inference_mode`` (else ``no_grad``) and ``channels_last`` (4-D inputs in that memory format; the caller puts
    the model in it) are speed options measured by ``bench-perf``. ``control(labels, seeds)``: each image's control
    map (image i: its label, guided or not, and seed + i), passed to the model as ``control=`` and kept in the
    batch. A :class:`LatentDenoiser` is sampled in its latent
    space (noise of ``model.latent_shape``, seeded the same way) and each batch decoded to ``shape`` before it is
    yielded (the decoder's time is in the batch's latency, not in ``nfe``).
    ``init`` (image-to-image, SDEdit): image i starts from ``init[i]`` (data space; a latent family encodes
    it with image i's generator) noised to ``strength`` of the forward process, and runs the last int(S · strength)
    timesteps (:mod:`bench.sampling.img2img`); its noise is image i's, as the initial noise is.
    """
    if num_samples <= 0 or batch_size <= 0:
        raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be > 0")
    device = torch.device(device)
    net = counting(model, cost)
    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {"eta": eta} if "eta" in step_params else {}
    # FlowMatchEulerDiscreteScheduler has neither (x_1 = noise, the model takes x_t as is)
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
    conditional = num_classes > 0 and (guidance_scale > 0 or classifier_guidance is not None)
    latent = isinstance(model, LatentDenoiser)
    if latent:
        shape = model.latent_shape
    num_batches = -(-num_samples // batch_size)
    with tqdm(total=num_samples, disable=not progress, desc=type(scheduler).__name__, unit="img") as bar:
        for i0 in range(start, start + num_samples, batch_size):
            i1 = min(i0 + batch_size, start + num_samples)
            index = torch.arange(i0, i1)
            classes = (torch.as_tensor([class_labels[i] for i in range(i0, i1)]) if class_labels is not None
                       else index % max(num_classes, 1)).long()
            labels = classes if conditional else None
            ctl = control(classes, seed + index) if control is not None else None  # unguided too: its class's
            gens = image_generators(seed, i0, i1)
            if "generator" in step_params:
                step_kwargs["generator"] = gens  # row k's step noise from image k's generator (randn_tensor)
            with cost.batch(i1 - i0):
                with torch.inference_mode() if inference_mode else torch.no_grad():
                    scheduler.set_timesteps(num_inference_steps, device=device)  # also resets multistep/Heun state
                    timesteps = scheduler.timesteps
                    x = initial_noise(gens, shape).to(device)
                    if init is None:
                        x = x * getattr(scheduler, "init_noise_sigma", 1.0)
                    else:
                        x0 = init[i0:i1].to(device)
                        x0 = model.encode(x0, gens) if latent else x0
                        timesteps = img2img_timesteps(scheduler, num_inference_steps, strength)
                        x = noise_to(scheduler, x0, x, timesteps[0])
                    if channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = labels.to(device) if labels is not None else None
                    cond = {} if ctl is None else {"control": ctl.to(device)}
                    finite = torch.ones(len(timesteps), dtype=torch.bool, device=device)
                    for k, t in enumerate(timesteps):
                        tb = t.float().expand(x.shape[0])
                        x_in = scale(x, t)
                        out = guided(net, x_in, tb, y, guidance_scale, num_classes, **cond)
                        if classifier_guidance is not None:
                            out = classifier_guided(out, x_in, tb, y, classifier_guidance, cost)
                        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
                        finite[k] = torch.isfinite(x).all()
                        if check_every_step and not finite[k]:
                            break
                    if not finite.all():
                        k = int((~finite).nonzero()[0])
                        raise NonFiniteError(k, float(timesteps[k]), len(timesteps))
                    if latent:
                        x = model.decode(x)
                # a plain (non-inference) float32 CPU copy: consumers may modify it or use it with autograd
                x = x.to("cpu", torch.float32, memory_format=torch.contiguous_format, copy=True)
            bar.update(i1 - i0)
            bar.set_postfix(batch=f"{(i0 - start) // batch_size + 1}/{num_batches}")
            yield Batch(x=x, labels=labels, index=index, control=ctl)
