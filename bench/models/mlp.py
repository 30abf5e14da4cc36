"""Time-conditioned residual MLP for 2-D toy data."""
from __future__ import annotations

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


class MLPDenoiser(nn.Module):
    """h = W_in x; ``layers`` residual blocks h += W(SiLU(h + emb(t, c))); out = W_out SiLU(h).

    emb(t) is the Transformer sinusoidal embedding of Vaswani et al. 2017 as used by DDPM (Ho et al. 2020), via
    diffusers' ``get_timestep_embedding`` (same convention as its UNets), followed by a 2-layer SiLU MLP."""

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, time_embed_dim: int = 64,
                 num_classes: int = 0):
        super().__init__()
        self.num_classes, self.time_embed_dim = num_classes, time_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        # index num_classes = the null class for classifier-free guidance
        self.class_embed = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(layers))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        emb = self.time_mlp(get_timestep_embedding(t, self.time_embed_dim, flip_sin_to_cos=True,
                                                   downscale_freq_shift=0).to(x.dtype))
        if self.class_embed is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.class_embed(class_labels)
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)
