"""diffusers ``DiTTransformer2DModel`` (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers") behind the
bench denoiser interface: patchify → ``num_layers`` transformer blocks with adaLN-Zero conditioning on (t, class) →
unpatchify, learned sigma off (out_channels = in_channels: every bench objective regresses one tensor)."""
from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding
from torch import nn

from bench.schema import ConfigError


def check_dit(model_cfg, info) -> None:
    """DiT's shape constraints, each a one-line ConfigError: the patch tiles the image, and the width
    (attention_head_dim × num_attention_heads) splits into the 2-D sin-cos position embedding (4 | width)."""
    size, p = info.shape[-1], int(model_cfg.patch_size)
    if size % p:
        raise ConfigError("model.patch_size", p, f"a divisor of the image size {size}", f"data {info.id}")
    width = int(model_cfg.attention_head_dim) * int(model_cfg.num_attention_heads)
    if width % 4:
        raise ConfigError("model.attention_head_dim", int(model_cfg.attention_head_dim),
                          f"a value with attention_head_dim × num_attention_heads ({model_cfg.num_attention_heads}) "
                          f"a multiple of 4", f"width {width}: DiT's 2-D sin-cos position embedding needs 4 | width")


class DiTDenoiser(nn.Module):
    """Wraps a ``DiTTransformer2DModel``: returns ``.sample``. Class-conditional data: ``num_embeds_ada_norm`` =
    num_classes, whose label table has a last row num_classes = the null class (CFG, as in UNetDenoiser);
    ``class_labels=None`` → the null class. Unconditional data: adaLN-Zero needs a label, so every image gets the
    single class 0 (a learned constant added to the timestep embedding) and labels are ignored."""

    def __init__(self, dit: DiTTransformer2DModel, num_classes: int):
        super().__init__()
        self.dit, self.num_classes = dit, num_classes
        for m in dit.modules():
            if isinstance(m, LabelEmbedding):
                # diffusers drops labels in train mode with the global RNG; bench's module drops them itself with the
                # step's seeded generator (train.cond_drop_prob), so a resumed training repeats exactly
                m.dropout_prob = 0.0

    @classmethod
    def from_config(cls, model_cfg, info) -> DiTDenoiser:
        check_dit(model_cfg, info)
        ch, size = info.shape[0], info.shape[-1]
        dit = DiTTransformer2DModel(num_attention_heads=int(model_cfg.num_attention_heads),
                                    attention_head_dim=int(model_cfg.attention_head_dim), in_channels=ch,
                                    out_channels=ch, num_layers=int(model_cfg.num_layers), sample_size=size,
                                    patch_size=int(model_cfg.patch_size),
                                    num_embeds_ada_norm=info.num_classes or 1)
        return cls(dit, info.num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        if not self.num_classes:
            class_labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)  # the single class
        elif class_labels is None:
            class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return self.dit(x, t, class_labels=class_labels).sample
