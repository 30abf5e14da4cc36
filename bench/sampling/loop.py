"""The one sampling loop: any diffusers scheduler, per-image seeds, classifier-free guidance, cost counters."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from bench.metrics.cost import CostMeter, counting
from bench.sampling.rng import image_generators, initial_noise


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
    labels: Optional[torch.Tensor]  # int64 (B,) class of each image; None when not class-conditioned
    index: torch.Tensor  # int64 (B,) image indices i (image i was seeded with seed + i)


def guided(model, x, t, labels, guidance_scale: float, num_classes: int):
    """Model output under classifier-free guidance (Ho & Salimans 2022, eq. 6 in diffusers' convention):
    out_u + s (out_c - out_u), cond and uncond rows in ONE forward of 2B. s == 1: conditional only; s == 0:
    unconditional only (null class = num_classes). Applied to the raw output, which is exact for every linear
    parameterisation (eps, v, x0, flow velocity)."""
    if labels is None:
        return model(x, t)
    if guidance_scale == 1:
        return model(x, t, class_labels=labels)
    null = torch.full_like(labels, num_classes)
    if guidance_scale == 0:
        return model(x, t, class_labels=null)
    out_c, out_u = model(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([labels, null])).chunk(2)
    return out_u + guidance_scale * (out_c - out_u)


def sample(model, scheduler, *, shape: Sequence[int], num_samples: int, batch_size: int, seed: int,
           num_inference_steps: int, guidance_scale: float, num_classes: int, device, cost: CostMeter,
           eta: float = 0.0, class_labels: Optional[Sequence[int]] = None, progress: bool = True,
           inference_mode: bool = True, channels_last: bool = False, check_every_step: bool = False,
           start: int = 0) -> Iterator[Batch]:
    """Generate ``num_samples`` images of ``shape``, streaming one :class:`Batch` per ``batch_size`` images.
    ``start``: the images are i = start, ..., start + num_samples - 1 (a shard of a larger cell, bench.distributed).

    Per batch: ``scheduler.set_timesteps``; x_T = randn(seed + i) * init_noise_sigma; for each t in
    ``scheduler.timesteps``: out = guided(model, scale_model_input(x, t), t); x = step(out, t, x).prev_sample.
    ``model(x, t, class_labels=None)``: t is a float (B,) tensor in scheduler timestep units. Image i is labelled
    ``class_labels[i]`` if given, else ``i % num_classes`` (num_classes > 0 and guidance_scale > 0).
    Raises NonFiniteError(step) on NaN/Inf after a step: the finite check of every step is kept on the device and
    read once per batch (``check_every_step=True`` reads it after each step: a host sync per step on GPU).
    ``inference_mode`` (else ``no_grad``) and ``channels_last`` (4-D inputs in that memory format; the caller puts
    the model in it) are speed options measured by ``bench-perf``.
    """
    if num_samples <= 0 or batch_size <= 0:
        raise ValueError(f"num_samples={num_samples} and batch_size={batch_size} must be > 0")
    device = torch.device(device)
    net = counting(model, cost)
    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {"eta": eta} if "eta" in step_params else {}
    # FlowMatchEulerDiscreteScheduler has neither (x_1 = noise, the model takes x_t as is)
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
    conditional = num_classes > 0 and guidance_scale > 0
    num_batches = -(-num_samples // batch_size)
    with tqdm(total=num_samples, disable=not progress, desc=type(scheduler).__name__, unit="img") as bar:
        for i0 in range(start, start + num_samples, batch_size):
            i1 = min(i0 + batch_size, start + num_samples)
            index = torch.arange(i0, i1)
            labels = None
            if conditional:
                labels = (torch.as_tensor([class_labels[i] for i in range(i0, i1)]) if class_labels is not None
                          else index % num_classes).long()
            gens = image_generators(seed, i0, i1)
            if "generator" in step_params:
                step_kwargs["generator"] = gens  # row k's step noise from image k's generator (randn_tensor)
            with cost.batch(i1 - i0):
                with torch.inference_mode() if inference_mode else torch.no_grad():
                    scheduler.set_timesteps(num_inference_steps, device=device)  # also resets multistep/Heun state
                    x = initial_noise(gens, shape).to(device) * getattr(scheduler, "init_noise_sigma", 1.0)
                    if channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = labels.to(device) if labels is not None else None
                    timesteps = scheduler.timesteps
                    finite = torch.ones(len(timesteps), dtype=torch.bool, device=device)
                    for k, t in enumerate(timesteps):
                        tb = t.float().expand(x.shape[0])
                        out = guided(net, scale(x, t), tb, y, guidance_scale, num_classes)
                        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
                        finite[k] = torch.isfinite(x).all()
                        if check_every_step and not finite[k]:
                            break
                    if not finite.all():
                        k = int((~finite).nonzero()[0])
                        raise NonFiniteError(k, float(timesteps[k]), len(timesteps))
                # a plain (non-inference) float32 CPU copy: consumers may modify it or use it with autograd
                x = x.to("cpu", torch.float32, memory_format=torch.contiguous_format, copy=True)
            bar.update(i1 - i0)
            bar.set_postfix(batch=f"{(i0 - start) // batch_size + 1}/{num_batches}")
            yield Batch(x=x, labels=labels, index=index)
