"""Closed-form "models" for data x0 ~ N(0, std^2 I): exact predictors that check sampler conventions (timestep
units, prediction types, sigma scaling) without training anything. A correct sampler fed the exact predictor
must return samples of std ``std`` up to its discretisation error.

Diffusion (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps): x_t ~ N(0, abar s^2 + 1 - abar), so (Tweedie)
    E[eps | x_t] = sqrt(1 - abar) x_t / (abar s^2 + 1 - abar),
    E[x0 | x_t] = sqrt(abar) s^2 x_t / (abar s^2 + 1 - abar),
    v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
Rectified flow (x_t = (1 - t) x0 + t eps, velocity eps - x0):
    E[v | x_t] = (t - (1 - t) s^2) x_t / ((1 - t)^2 s^2 + t^2).
Gaussian mixtures (GMMOracle): the same per component, weighted by the exact class posterior p(k | x_t), which is
also the exact noise-aware classifier of classifier guidance (GMMClassifier).
Consistency function (Song et al. 2023): the probability-flow ODE of a Gaussian only rescales, so
    f(x_t) = x_0 = s x_t / sqrt(abar s^2 + 1 - abar) — what a perfect consistency model returns (for LCM).
"""
from __future__ import annotations

import torch

from bench.schedule import abar_at, alpha_sigma, train_sigmas


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
        return abar_at(self.log_sigmas, t)

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


class GMMOracle(torch.nn.Module):
    """Exact denoiser and noise-aware classifier for a Gaussian mixture x0 ~ Σ_k π_k N(μ_k, τ² I), on the path
    x_t = a x0 + s eps of ``cfg`` (diffusion or flow). Since x_t | y=k ~ N(a μ_k, v I) with v = a²τ² + s²:
        log p(y=k | x_t) = log π_k - |x_t - a μ_k|² / 2v + const     (:meth:`logits`, the exact classifier),
        E[x0 | x_t, y=k] = μ_k + (a τ² / v)(x_t - a μ_k),   E[x0 | x_t] = Σ_k p(k | x_t) E[x0 | x_t, k],
    and eps = (x_t - a x0)/s. ``forward(x, t, class_labels)``: the objective's output given the class (the null class
    ``K`` or None: the mixture), like a class-conditional model trained to optimality."""

    def __init__(self, cfg, means, std: float, weights=None):
        super().__init__()
        self.objective, self.T, self.std = cfg.objective.name, int(cfg.schedule.num_train_timesteps), float(std)
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k = len(self.means)
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
        self.log_weights = w.log()
        self.log_sigmas = None if self.objective == "flow" else train_sigmas(cfg.schedule).log()

    def _path(self, x, t):
        a, s = alpha_sigma(t.reshape(-1).expand(x.shape[0]), self.T, self.log_sigmas)
        return a[:, None], s[:, None], a[:, None] ** 2 * self.std**2 + s[:, None] ** 2

    def logits(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """log p(y | x_t) up to a per-row constant, (B, K)."""
        a, _, v = self._path(x, t)
        d = x.double()[:, None, :] - a[:, None] * self.means[None]
        return self.log_weights - d.pow(2).sum(-1) / (2 * v)

    def forward(self, x, t, class_labels=None):
        a, s, v = self._path(x, t)
        xd = x.double()
        x0_k = self.means[None] + (a * self.std**2 / v)[:, None] * (xd[:, None, :] - a[:, None] * self.means[None])
        post = torch.softmax(self.logits(x, t), -1)
        if class_labels is not None:  # one class per row; the null class K keeps the mixture's posterior
            k = len(self.means)
            onehot = torch.nn.functional.one_hot(class_labels.clamp(max=k - 1), k).double()
            post = torch.where((class_labels < k)[:, None], onehot, post)
        x0 = (post[..., None] * x0_k).sum(1)
        eps = (xd - a * x0) / s
        out = {"eps": eps, "x0": x0, "v": a * eps - s * x0, "flow": eps - x0}[self.objective]
        return out.to(x.dtype)


class GMMClassifier(torch.nn.Module):
    """``forward(x_t, t)`` → the exact logits of :class:`GMMOracle` (a classifier trained to optimality)."""

    def __init__(self, oracle: GMMOracle):
        super().__init__()
        self.oracle = oracle

    def forward(self, x, t):
        return self.oracle.logits(x, t).to(x.dtype)
