"""A small ε-predicting network of the kind people write themselves, for 8x8 digits (docs/own_model.md).

Its conventions are not the harness's, on purpose: images in [-0.5, 0.5], the time as t / T with t in 1..T, a linear
β schedule whose ᾱ table has T + 1 entries (entry 0 is the clean image, kept as the buffer ``alphas_cumprod``), labels
by the keyword ``y`` with label 10 meaning "no class" (classifier-free guidance).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def linear_alphas_cumprod(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_0 .. ᾱ_T: ᾱ_0 = 1 (no noise), ᾱ_t = prod_{s<=t} (1 - β_s) with β_1 .. β_T linear (Ho et al. 2020)."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


class Block(nn.Module):
    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, width), nn.Conv2d(width, width, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, width), nn.Conv2d(width, width, 3, padding=1)
        self.film = nn.Linear(emb, 2 * width)

    def forward(self, h, e):
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        r = self.conv1(nn.functional.silu(self.norm1(h)))
        r = self.norm2(r) * (1 + scale) + shift
        return h + self.conv2(nn.functional.silu(r))


class TinyEpsNet(nn.Module):
    """ε(x_t, t / T, y): residual conv blocks at full resolution, FiLM from a sinusoidal time and a class embedding."""

    def __init__(self, channels: int = 1, width: int = 24, depth: int = 2, num_classes: int = 10, T: int = 1000):
        super().__init__()
        self.register_buffer("alphas_cumprod", linear_alphas_cumprod(T).float())
        emb = 2 * width
        self.freqs = nn.Parameter(torch.exp(torch.linspace(0, math.log(1000), width // 2)), requires_grad=False)
        self.time = nn.Sequential(nn.Linear(width, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.label = nn.Embedding(num_classes + 1, emb)  # the last is the null label
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(Block(width, emb) for _ in range(depth))
        self.out = nn.Sequential(nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x, t, y=None):
        t = t.float().reshape(-1, 1) * self.freqs  # t in [0, 1]
        e = self.time(torch.cat([t.sin(), t.cos()], dim=1))
        if y is not None:
            e = e + self.label(y)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h)


def make_net(**kwargs) -> TinyEpsNet:
    """The factory ``model.target=examples/own_model/net.py:make_net`` names (kwargs: ``model.kwargs``)."""
    return TinyEpsNet(**kwargs)
