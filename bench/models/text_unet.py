"""Text-conditioned UNet: diffusers ``UNet2DConditionModel`` with cross-attention on the per-token states of a frozen
CLIP text tower (the latent-diffusion / Stable Diffusion conditioning, Rombach et al. 2022 §3.3), here the harness's
offline open_clip trained on the captioned shapes set (shipped, sha256-pinned)."""
from __future__ import annotations

import functools
import os

import torch
from diffusers import UNet2DConditionModel
from omegaconf import OmegaConf
from torch import nn

from bench.evaluators.clip import load_offline_clip
from bench.schema import ConfigError

from .unet import check_unet


@functools.lru_cache(maxsize=1)  # read once per process: every model key of a text_unet sweep asks for its hash
def text_encoder():
    """The frozen text tower: the shipped offline CLIP of the default shapes split (a ClipFeatureNet)."""
    # data None = the default split, whose CLIP is shipped (cache_dir is only used if the package lost it)
    return load_offline_clip(OmegaConf.create({"data": None, "cache_dir": os.environ.get("BENCH_CACHE",
                                                                                          ".cache/bench")}))


def check_text_unet(model_cfg, info) -> None:
    """Captions to condition on: labelled data whose class names are the prompts (shapes: "a red circle at the top
    left"); no model.pretrained; the UNet's own checks (:func:`check_unet`). Each a one-line ConfigError."""
    if not info.num_classes or not info.class_names:
        raise ConfigError("model.name", model_cfg.name, "a data set with captions (data=shapes, class_conditional)",
                          f"data {info.id} has no class captions to prompt with")
    if model_cfg.pretrained:
        raise ConfigError("model.pretrained", model_cfg.pretrained, "null for model=text_unet",
                          "model.pretrained loads an unconditional/class UNet: use model=unet")
    check_unet(model_cfg, info)


class TextUNetDenoiser(nn.Module):
    """``forward(x, t, class_labels)``: the UNet with ``encoder_hidden_states`` = the text tower's token states of
    class k's caption; the null class (index num_classes, or None) is the empty prompt "", so CFG is the usual
    out_u + s (out_c - out_u) with the empty prompt as the unconditional branch (as in Stable Diffusion), and CFG
    label dropout trains it. The captions' states are computed once at build time and kept as a buffer, so a cached
    model carries the exact context it was trained with."""

    def __init__(self, unet: UNet2DConditionModel, text_states: torch.Tensor, text_encoder_id: str = ""):
        super().__init__()
        self.unet = unet
        self.num_classes = text_states.shape[0] - 1
        self.text_encoder_id = text_encoder_id
        self.register_buffer("text_states", text_states)  # (num_classes + 1, tokens, width); last row: ""

    @classmethod
    def from_config(cls, model_cfg, info) -> "TextUNetDenoiser":
        check_text_unet(model_cfg, info)
        clip = text_encoder()
        states = clip.encode_text_tokens(list(info.class_names)[: info.num_classes] + [""])
        ch, size = info.shape[0], info.shape[-1]
        unet = UNet2DConditionModel(sample_size=size, in_channels=ch, out_channels=ch,
                                    block_out_channels=tuple(model_cfg.block_out_channels),
                                    layers_per_block=model_cfg.layers_per_block,
                                    down_block_types=tuple(model_cfg.down_block_types),
                                    up_block_types=tuple(model_cfg.up_block_types),
                                    norm_num_groups=model_cfg.norm_num_groups,
                                    attention_head_dim=model_cfg.attention_head_dim,
                                    cross_attention_dim=states.shape[-1])
        return cls(unet, states, f"{clip.label}#{clip.weights_hash}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return self.unet(x, t, encoder_hidden_states=self.text_states[class_labels].to(x.dtype)).sample
