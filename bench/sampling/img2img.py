"""Starting the loop from real images instead of noise (image-to-image, SDEdit: Meng et al. 2022), as diffusers'
img2img pipelines do: run the tail of the sampler's timesteps from x_t of the forward process."""
from __future__ import annotations

import torch


def img2img_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The timesteps run at ``strength`` (``StableDiffusionImg2ImgPipeline.get_timesteps``): after
    ``scheduler.set_timesteps(num_inference_steps)``, the last ``int(S · strength)`` steps of ``S``; also sets the
    scheduler's begin index where it has one (sigma-space schedulers index their sigmas by step)."""
    init = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init, 0) * getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start)
    return scheduler.timesteps[t_start:]


def noise_to(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t of the model's forward process at timestep ``t``: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (diffusion;
    ``add_noise`` of a sigma-space scheduler gives x0 + sigma_t eps, its own x_t) or (1 - sigma) x0 + sigma eps
    (flow, ``scale_noise``)."""
    tb = t.reshape(1).expand(x0.shape[0]).to(x0.device)
    if hasattr(scheduler, "add_noise"):
        return scheduler.add_noise(x0, noise, tb)
    return scheduler.scale_noise(x0, tb, noise)
