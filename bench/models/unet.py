"""diffusers ``UNet2DModel`` behind the bench denoiser interface, built from config or loaded from a directory."""
from __future__ import annotations

import os

import torch
from diffusers import UNet2DModel
from torch import nn

from bench.schema import ConfigError


class UNetDenoiser(nn.Module):
    """Wraps a ``UNet2DModel``: returns ``.sample``; ``class_labels=None`` → the null class when conditional."""

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet
        n = unet.config.num_class_embeds
        self.num_classes = int(n) - 1 if n else 0  # the last embedding is the null class

    @classmethod
    def from_config(cls, model_cfg, info) -> UNetDenoiser:
        check_unet(model_cfg, info)
        ch, size = info.shape[0], info.shape[-1]
        blocks = list(model_cfg.block_out_channels)
        down, up = list(model_cfg.down_block_types), list(model_cfg.up_block_types)
        unet = UNet2DModel(sample_size=size, in_channels=ch, out_channels=ch, block_out_channels=tuple(blocks),
                           layers_per_block=model_cfg.layers_per_block, down_block_types=tuple(down),
                           up_block_types=tuple(up), norm_num_groups=model_cfg.norm_num_groups,
                           attention_head_dim=model_cfg.attention_head_dim,
                           num_class_embeds=info.num_classes + 1 if info.num_classes else None)
        return cls(unet)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        if self.num_classes:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        else:
            class_labels = None  # an unconditional UNet has no class embedding to feed
        return self.unet(x, t, class_labels=class_labels).sample


def check_unet(model_cfg, info) -> None:
    """One down/up block per level; the image (a latent family's: its latent) halves at every level but the last;
    GroupNorm groups divide every level's channels. Each a one-line ConfigError."""
    size = info.shape[-1]
    blocks = list(model_cfg.block_out_channels)
    down, up = list(model_cfg.down_block_types), list(model_cfg.up_block_types)
    if not (len(blocks) == len(down) == len(up)):
        raise ConfigError("model.block_out_channels", blocks,
                          f"one entry per down/up block ({len(down)} down, {len(up)} up)")
    if size % 2 ** (len(blocks) - 1) and model_cfg.name.startswith("latent"):
        raise ConfigError("model.block_out_channels", blocks, f"levels that halve the {size}x{size} latent evenly")
    if size % 2 ** (len(blocks) - 1):
        raise ConfigError("data.image_size", size, f"a multiple of {2 ** (len(blocks) - 1)}",
                          f"{len(blocks)} resolution levels")
    if any(c % model_cfg.norm_num_groups for c in blocks):
        raise ConfigError("model.norm_num_groups", model_cfg.norm_num_groups,
                          f"a divisor of every block_out_channels {blocks}")


def load_pretrained_unet(path: str, info=None) -> UNetDenoiser:
    """A ``UNet2DModel`` from a local directory saved with ``save_pretrained`` (a UNet dir, or a pipeline dir with
    ``unet/``), else from the local Hugging Face cache by hub id; never downloads."""
    try:
        if os.path.isdir(path):
            sub = "unet" if os.path.isfile(os.path.join(path, "unet", "config.json")) else None
            unet = UNet2DModel.from_pretrained(path, subfolder=sub, low_cpu_mem_usage=False)
        else:
            try:
                unet = UNet2DModel.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
            except Exception:
                unet = UNet2DModel.from_pretrained(path, subfolder="unet", local_files_only=True,
                                                    low_cpu_mem_usage=False)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError("model.pretrained", path,
                          "a local directory saved with UNet2DModel/pipeline .save_pretrained()",
                          f"could not be loaded offline: {why}") from None
    model = UNetDenoiser(unet)
    if info is not None and info.kind == "images":
        want = (info.shape[0], unet.config.in_channels, unet.config.out_channels)
        if len(set(want)) != 1:
            raise ConfigError("model.pretrained", path, f"a UNet with {info.shape[0]} in/out channels for data "
                              f"{info.id}", f"it has {unet.config.in_channels}/{unet.config.out_channels}")
        if model.num_classes and model.num_classes != info.num_classes:
            raise ConfigError("model.pretrained", path, f"a UNet with {info.num_classes} classes + null for data "
                              f"{info.id}", f"it has num_class_embeds={unet.config.num_class_embeds}")
    return model
