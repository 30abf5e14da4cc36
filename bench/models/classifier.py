"""A noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, §4): the encoder half of a
diffusers UNet (``ResnetBlock2D`` with the timestep embedding, ``Downsample2D``), mean-pooled into class logits."""
from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import Downsample2D, ResnetBlock2D
from torch import nn

from bench.schema import ConfigError


class NoisyClassifier(nn.Module):
    """``forward(x_t, t)`` → logits (B, num_classes); t in scheduler timestep units like the denoisers' (flow:
    sigma · T). One ResnetBlock2D per level of ``block_out_channels`` (timestep embedding added in each, as in ADM's
    classifier), a 2× downsample between levels, then GroupNorm → SiLU → spatial mean → linear."""

    def __init__(self, in_channels: int, num_classes: int, block_out_channels=(32, 64), norm_num_groups: int = 8):
        super().__init__()
        blocks = [int(c) for c in block_out_channels]
        temb = 4 * blocks[0]
        self.num_classes = num_classes
        self.time_proj = Timesteps(blocks[0], flip_sin_to_cos=True, downscale_freq_shift=0)  # as UNet2DModel's
        self.time_embedding = TimestepEmbedding(blocks[0], temb)
        self.conv_in = nn.Conv2d(in_channels, blocks[0], 3, padding=1)
        self.levels = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip([blocks[0], *blocks[:-1]], blocks)):
            # name "op" as UNet2DModel's down blocks ("conv" would alias the weights under two names)
            down = Downsample2D(c_out, use_conv=True, name="op") if i < len(blocks) - 1 else nn.Identity()
            self.levels.append(nn.ModuleList([ResnetBlock2D(in_channels=c_in, out_channels=c_out, temb_channels=temb,
                                                            groups=norm_num_groups), down]))
        self.out = nn.Sequential(nn.GroupNorm(norm_num_groups, blocks[-1]), nn.SiLU())
        self.head = nn.Linear(blocks[-1], num_classes)

    @classmethod
    def from_config(cls, classifier_cfg, info) -> NoisyClassifier:
        """The classifier of ``classifier_cfg`` (``cfg.classifier``) for the labelled image data ``info``."""
        check_classifier(classifier_cfg, info, scale=1.0)
        return cls(info.shape[0], info.num_classes, classifier_cfg.block_out_channels, classifier_cfg.norm_num_groups)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(x.dtype))
        h = self.conv_in(x)
        for block, down in self.levels:
            h = down(block(h, emb))
        return self.head(self.out(h).mean(dim=(-2, -1)))


def check_classifier(classifier_cfg, info, scale: float) -> None:
    """For ``sampling.classifier_scale`` = ``scale`` > 0: classifier guidance needs labelled images; the channels must
    split into the GroupNorm groups and the image must halve once per level but the last. Each a one-line
    ConfigError."""
    if not scale:
        return
    if info.kind != "images" or not info.num_classes:
        raise ConfigError("sampling.classifier_scale", scale, "0 for unlabelled data",
                          f"a classifier needs class labels; data {info.id} has none (data.class_conditional=false or "
                          f"no classes)")
    blocks = list(classifier_cfg.block_out_channels)
    if not blocks or any(c % classifier_cfg.norm_num_groups for c in blocks):
        raise ConfigError("classifier.block_out_channels", blocks,
                          "a non-empty list of multiples of classifier.norm_num_groups="
                          f"{classifier_cfg.norm_num_groups}")
    size = int(info.shape[-1])
    if size % 2 ** (len(blocks) - 1):
        halvings = (size & -size).bit_length() - 1  # how often the size halves evenly
        raise ConfigError("classifier.block_out_channels", blocks, f"at most {halvings + 1} levels for the image "
                          f"size {size}", f"{len(blocks)} levels halve it {len(blocks) - 1} times")
