"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models",
Algorithm 2): a student initialised from its teacher learns to take ONE deterministic DDIM step where the teacher
takes TWO, halving the sampling steps each round.

The grids are the sampler's own: ``DDIMScheduler.set_timesteps`` at 2N (teacher) and N (student) steps, and a step
from timestep t lands on noise level ᾱ[t − T // n] (ᾱ := 1 below 0, set_alpha_to_one), exactly as diffusers'
DDIM ``step`` does — so "one student step = two teacher steps" holds for the sampler used at evaluation.
"""
from __future__ import annotations

import copy

import torch

from bench.sampling import build_sampler, guided
from bench.training import DiffusionModule, objectives as obj


def ddim_grid(cfg, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(timesteps (n,), ᾱ_t (n,), ᾱ of where each step lands (n,)) of ``cfg``'s DDIM sampler at n steps."""
    sched = build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name)
    sched.set_timesteps(n)
    t = sched.timesteps.long()
    prev = t - sched.config.num_train_timesteps // n
    ac = sched.alphas_cumprod.double()
    ac_prev = torch.where(prev >= 0, ac[prev.clamp(min=0)], sched.final_alpha_cumprod.double())
    return t, ac[t], ac_prev


def ddim_target(z_t, z_s, alpha_t, sigma_t, alpha_s, sigma_s):
    """x̃ such that the DDIM step z_s = α_s x̃ + σ_s (z_t − α_t x̃) / σ_t lands exactly on the given z_s
    (Salimans & Ho 2022, Alg. 2: x̃ = (z_s − (σ_s/σ_t) z_t) / (α_s − (σ_s/σ_t) α_t))."""
    r = obj._bc(sigma_s / sigma_t, z_t)
    return (z_s - r * z_t) / (obj._bc(alpha_s, z_t) - r * obj._bc(alpha_t, z_t))


def ddim_step(model, z, t, ac_t, ac_s, labels, objective: str, guidance_scale: float, num_classes: int):
    """One deterministic DDIM step (Song et al. 2021, eq. 12, η = 0) from level ᾱ_t (model time t) to ᾱ_s."""
    a, s = ac_t.sqrt(), (1 - ac_t).sqrt()
    x0, eps = obj.to_x0_eps(objective, guided(model, z, t.float(), labels, guidance_scale, num_classes), z, a, s)
    return obj.add_noise(x0, eps, ac_s.sqrt(), (1 - ac_s).sqrt())


class ProgressiveDistillation(DiffusionModule):
    """One round: the student (``self.model``, initialised with ``teacher_state``; EMA in ``self.ema``) learns
    N-step DDIM from a frozen copy of the teacher sampled at 2N steps. Loss on x0 weighted by max(SNR, 1)
    ("truncated SNR", Salimans & Ho 2022 §4), labels dropped as in training (the student keeps the unconditional
    branch for CFG); the teacher is guided with ``distill.guidance_scale`` (1 = plain conditional). ``train``: the
    round's optimisation settings (``bench.distill.round_train``)."""

    def __init__(self, cfg, info, teacher_state: dict, student_steps: int, train):
        super().__init__(cfg.model, cfg.objective, cfg.schedule, train, info)
        self.cfg = cfg  # distill.*, sampler.*: the method's own settings
        for net in (self.model, self.ema):
            net.load_state_dict(teacher_state)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.student_steps = n = int(student_steps)
        t2, ac2, ac2_prev = ddim_grid(cfg, 2 * n)
        t1, ac1, ac1_prev = ddim_grid(cfg, n)
        assert torch.equal(t2[0::2], t1), "teacher/student DDIM grids do not nest"  # trailing/linspace spacing
        for name, v in dict(t=t1, ac_t=ac1, ac_s=ac1_prev, t_mid=t2[1::2], ac_mid=ac2[1::2],
                            ac_land1=ac2_prev[0::2], ac_land2=ac2_prev[1::2]).items():
            self.register_buffer(f"grid_{name}", v.float() if v.is_floating_point() else v, persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: never in training mode (dropout, norms)
        return self

    def compute_loss(self, x0: torch.Tensor, labels, g: torch.Generator) -> torch.Tensor:
        objective, w = self.cfg.objective.name, float(self.cfg.distill.guidance_scale)
        nc = self.info.num_classes
        i = torch.randint(0, self.student_steps, (x0.shape[0],), generator=g, device=x0.device)
        ac_t = self.grid_ac_t[i]
        a_t, s_t = ac_t.sqrt(), (1 - ac_t).sqrt()
        eps = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        z = obj.add_noise(x0, eps, a_t, s_t)
        with torch.no_grad():  # two teacher steps t -> t' -> t''
            z1 = ddim_step(self.teacher, z, self.grid_t[i], ac_t, self.grid_ac_land1[i], labels, objective, w, nc)
            z2 = ddim_step(self.teacher, z1, self.grid_t_mid[i], self.grid_ac_mid[i], self.grid_ac_land2[i],
                           labels, objective, w, nc)
            ac_s = self.grid_ac_s[i]
            x_target = ddim_target(z, z2, a_t, s_t, ac_s.sqrt(), (1 - ac_s).sqrt())
        x_pred, _ = obj.to_x0_eps(objective, self.model(z, self.grid_t[i].float(), labels), z, a_t, s_t)
        weight = (ac_t / (1 - ac_t)).clamp(min=1.0)  # max(SNR, 1)
        return (weight * (x_pred.float() - x_target.float()).pow(2).flatten(1).mean(1)).mean()
