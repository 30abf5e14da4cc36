"""Closed-form "models" for data x0 ~ N(0, std^2 I): exact predictors that check sampler conventions (timestep
units, prediction types, sigma scaling) without training anything. A correct sampler fed the exact predictor
must return samples of std ``std`` up to its discretisation error.

Diffusion (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps): x_t ~ N(0, abar s^2 + 1 - abar), so (Tweedie)
    E[eps | x_t] = sqrt(1 - abar) x_t / (abar s^2 + 1 - abar),  E[x0 | x_t] = sqrt(abar) s^2 x_t / (abar s^2 + 1 - abar),
    v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
Rectified flow (x_t = (1 - t) x0 + t eps, velocity eps - x0):
    E[v | x_t] = (t - (1 - t) s^2) x_t / ((1 - t)^2 s^2 + t^2).
Consistency function (Song et al. 2023): the probability-flow ODE of a Gaussian only rescales, so
    f(x_t) = x_0 = s x_t / sqrt(abar s^2 + 1 - abar) — what a perfect consistency model returns (for LCM).
"""
from __future__ import annotations

import torch

from bench.schedule import train_sigmas


class GaussianOracle(torch.nn.Module):
    """``forward(x, t, class_labels=None)`` with the exact ``objective`` output for N(0, std^2 I) data under
    the schedule of ``cfg``; t in scheduler timestep units (fractional t interpolated in log-sigma as diffusers
    does). ``consistency=True`` returns the PF-ODE endpoint instead of the posterior mean (as x0/eps/v)."""

    def __init__(self, cfg, std: float, consistency: bool = False):
        super().__init__()
        self.objective, self.std, self.consistency = cfg.objective.name, float(std), consistency
        self.T = int(cfg.schedule.num_train_timesteps)
        self.register_buffer("log_sigmas", train_sigmas(cfg.schedule).log(), persistent=False)

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        lo = t.floor().long().clamp(0, self.T - 1)
        hi = (lo + 1).clamp(max=self.T - 1)
        w = t - lo
        sigma = ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()
        return 1 / (1 + sigma**2)

    def forward(self, x, t, class_labels=None):
        s2 = self.std**2
        t = t.double().reshape(-1, *([1] * (x.dim() - 1)))
        if self.objective == "flow":
            tau = t / self.T
            return ((tau - (1 - tau) * s2) / ((1 - tau) ** 2 * s2 + tau**2) * x).to(x.dtype)
        a = self.abar(t.flatten()).reshape(t.shape)
        var = a * s2 + 1 - a
        x0 = (self.std / var.sqrt() if self.consistency else a.sqrt() * s2 / var) * x
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[self.objective]
        return out.to(x.dtype)
