"""Consistency distillation, LCM-style (Song et al. 2023, "Consistency Models", Alg. 2; Luo et al. 2023, "Latent
Consistency Models", Alg. 1): the student f(x, t) = c_skip(t) x + c_out(t) x̂0(x, t) is trained so that
f(x_{t_{n+k}}, t_{n+k}) matches the EMA student at the point one teacher DDIM (ODE) step earlier on the skip-step
grid, f_θ⁻(x̂_{t_n}, t_n).

The grid and the boundary scalings are diffusers' ``LCMScheduler``'s (timesteps k·j − 1 with k = T // K,
K = distill.num_ddim_timesteps = its ``original_inference_steps``; ``get_scalings_for_boundary_condition_discrete``),
so sampling the student with that scheduler evaluates exactly the function trained here.
"""
from __future__ import annotations

import copy

import torch

from bench.sampling import build_sampler
from bench.training import DiffusionModule, objectives as obj

from .progressive import ddim_step


class ConsistencyDistillation(DiffusionModule):
    """Student ``self.model`` and EMA target ``self.ema`` (decay distill.ema_decay), both initialised from the
    teacher (as LCM does); teacher guided with ``distill.guidance_scale`` (a fixed w baked into the student).
    Loss: L2, or pseudo-Huber sqrt(d² + c²) − c (Song & Dhariwal 2023; element-wise as in LCM) with
    c = distill.huber_c. ``train``: the optimisation settings (``bench.distill.round_train``)."""

    def __init__(self, cfg, info, teacher_state: dict, train):
        super().__init__(cfg.model, cfg.objective, cfg.schedule, train, info)
        self.cfg = cfg  # distill.*, sampler.*: the method's own settings
        for net in (self.model, self.ema):
            net.load_state_dict(teacher_state)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        K = int(cfg.distill.num_ddim_timesteps)
        self.lcm = build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name, K)  # grid + boundary scalings
        self.skip = int(cfg.schedule.num_train_timesteps) // K
        self.register_buffer("grid", torch.arange(1, K + 1) * self.skip - 1, persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def consistency_fn(self, net, x, t, labels):
        """f(x, t) = c_skip(t) x + c_out(t) x̂0 — what LCMScheduler.step returns as ``denoised``."""
        ac = self.alphas_cumprod[t]
        out = net(x, t.float(), labels)
        x0, _ = obj.to_x0_eps(self.cfg.objective.name, out, x, ac.sqrt(), (1 - ac).sqrt())
        c_skip, c_out = self.lcm.get_scalings_for_boundary_condition_discrete(t.double())
        return obj._bc(c_skip, x) * x + obj._bc(c_out, x) * x0

    def compute_loss(self, x0: torch.Tensor, labels, g: torch.Generator) -> torch.Tensor:
        d = self.cfg.distill
        n = torch.randint(0, len(self.grid), (x0.shape[0],), generator=g, device=x0.device)
        t = self.grid[n]
        t_prev = (t - self.skip).clamp(min=0)  # t_prev = 0 for the lowest grid point: f(x, 0) = x there
        ac_t, ac_prev = self.alphas_cumprod[t], self.alphas_cumprod[t_prev]
        eps = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        x_t = obj.add_noise(x0, eps, ac_t.sqrt(), (1 - ac_t).sqrt())
        pred = self.consistency_fn(self.model, x_t, t, labels)
        with torch.no_grad():
            x_prev = ddim_step(self.teacher, x_t, t, ac_t, ac_prev, labels, self.cfg.objective.name,
                               float(d.guidance_scale), self.info.num_classes)
            target = self.consistency_fn(self.ema, x_prev, t_prev, labels)
        diff2 = (pred.float() - target.float()).pow(2)
        if d.loss == "huber":  # element-wise, as LCM's training script
            c = float(d.huber_c)
            return ((diff2 + c * c).sqrt() - c).mean()
        return diff2.mean()
