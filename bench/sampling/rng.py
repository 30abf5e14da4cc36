"""Seeding convention: image i of a cell uses its own ``torch.Generator("cpu").manual_seed(seed + i)``.

That one generator draws the image's initial noise (``torch.randn(shape)``) and then, in order, every noise
draw of the stochastic steps (DDPM, DDIM eta > 0, LCM): diffusers' ``randn_tensor`` takes a list of generators
and draws row k from generator k. So sample i depends only on (config, seed + i), never on the batch size, the
batch it fell in or the number of GPUs — the convention of EDM's ``generate.py`` (Karras et al. 2022,
github.com/NVlabs/edm: one ``StackedRandomGenerator`` seeded per image) and of diffusers pipelines called with
``generator=[torch.Generator().manual_seed(s) for s in seeds]``. Generators live on the CPU so the same seed
gives the same noise on any device; tensors are moved to the device afterwards.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def image_generators(seed: int, start: int, stop: int) -> list[torch.Generator]:
    """One CPU generator per image index i in [start, stop), seeded with seed + i."""
    return [torch.Generator("cpu").manual_seed(int(seed) + i) for i in range(start, stop)]


def initial_noise(generators: Sequence[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    """Stack of ``torch.randn(shape, generator=g)`` over the generators: (len(generators), *shape) on the CPU."""
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])
