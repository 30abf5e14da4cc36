"""Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"): a UNet or
DiT denoiser in the latent space of a diffusers ``AutoencoderKL``, z = scaling_factor · E(x) (the factor makes the
latents unit-variance, as SD's 0.18215 does; here computed from the encoded training data), decoded before scoring.
"""
from __future__ import annotations

import dataclasses
import os

import torch
from diffusers import AutoencoderKL
from torch import nn

from bench.schema import ConfigError

from .classifier import check_classifier


def build_vae(model_cfg, info) -> AutoencoderKL:
    """The ``AutoencoderKL`` of a latent family: ``model.vae`` (a local diffusers VAE directory, loaded) or one level
    of ``DownEncoderBlock2D``/``UpDecoderBlock2D`` per ``model.vae_block_out_channels`` entry with
    ``model.latent_channels`` latent channels (random weights: the harness trains them, bench.training)."""
    if model_cfg.vae:
        return AutoencoderKL.from_pretrained(model_cfg.vae, low_cpu_mem_usage=False)
    blocks = tuple(int(c) for c in model_cfg.vae_block_out_channels)
    return AutoencoderKL(in_channels=info.shape[0], out_channels=info.shape[0], block_out_channels=blocks,
                         down_block_types=("DownEncoderBlock2D",) * len(blocks),
                         up_block_types=("UpDecoderBlock2D",) * len(blocks), layers_per_block=1,
                         latent_channels=int(model_cfg.latent_channels), norm_num_groups=int(model_cfg.norm_num_groups),
                         sample_size=info.shape[-1])


def vae_geometry(model_cfg, info) -> tuple[int, int]:
    """(latent channels, downsampling factor) of the family's VAE, from ``model.vae``'s config.json or the keys."""
    if model_cfg.vae:
        try:
            c = AutoencoderKL.load_config(model_cfg.vae)
        except Exception as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError("model.vae", model_cfg.vae,
                              "a local directory saved with AutoencoderKL.save_pretrained()", why) from None
        if c.get("in_channels") != info.shape[0] or c.get("out_channels") != info.shape[0]:
            raise ConfigError("model.vae", model_cfg.vae, f"a VAE with {info.shape[0]} in/out channels for data "
                              f"{info.id}", f"it has {c.get('in_channels')}/{c.get('out_channels')}")
        return int(c.get("latent_channels", 4)), 2 ** (len(c.get("block_out_channels", [0])) - 1)
    return int(model_cfg.latent_channels), 2 ** (len(model_cfg.vae_block_out_channels) - 1)


def latent_info(model_cfg, info):
    """``info`` (a DataInfo) with the latent's shape: what the inner denoiser sees."""
    ch, f = vae_geometry(model_cfg, info)
    return dataclasses.replace(info, shape=(ch, info.shape[1] // f, info.shape[2] // f))


def check_latent(cfg, info, inner_check) -> None:
    """A latent family on ``info`` (images): the VAE's levels halve the image evenly, its channels split into the
    GroupNorm groups, a pretrained VAE matches the data's channels, the inner denoiser fits the latent
    (``inner_check(model_cfg, latent_info)``), a guidance classifier fits the latent."""
    m = cfg.model
    if not m.vae:
        blocks = list(m.vae_block_out_channels)
        if not blocks or any(c % m.norm_num_groups for c in blocks):
            raise ConfigError("model.vae_block_out_channels", blocks,
                              f"a non-empty list of multiples of model.norm_num_groups={m.norm_num_groups}")
    elif not os.path.isdir(m.vae):
        raise ConfigError("model.vae", m.vae, "a local directory saved with AutoencoderKL.save_pretrained()",
                          "no such directory")
    ch, f = vae_geometry(m, info)
    if info.shape[-1] % f or info.shape[-2] % f:
        raise ConfigError("model.vae_block_out_channels", list(m.vae_block_out_channels),
                          f"at most the levels that halve the image size {info.shape[-1]} evenly",
                          f"a {f}x downsampling VAE")
    inner_check(m, latent_info(m, info))
    check_classifier(cfg.classifier, latent_info(m, info), cfg.sampling.classifier_scale)  # it sees the latents


@torch.no_grad()
def encode_latent(vae: AutoencoderKL, x: torch.Tensor, scaling_factor, generator: torch.Generator | None = None):
    """z = scaling_factor · z_q, z_q ~ q(z | x) drawn with ``generator``: the latent a latent family's denoiser (and
    its guidance classifier) is trained on."""
    return vae.encode(x).latent_dist.sample(generator=generator) * scaling_factor


class LatentDenoiser(nn.Module):
    """``forward(z, t, class_labels)`` = the inner denoiser on latents; :meth:`encode` x → z = scaling_factor · z_q
    with z_q ~ q(z | x) (the step's generator); :meth:`decode` z → x. The VAE is frozen (trained before, cached) and
    saved with the denoiser, so a cached latent model is self-contained; ``scaling_factor`` is a buffer, part of it."""

    def __init__(self, denoiser: nn.Module, vae: AutoencoderKL, latent_shape, scaling_factor: float = 1.0):
        super().__init__()
        self.denoiser, self.vae = denoiser, vae.requires_grad_(False)
        self.num_classes = denoiser.num_classes
        self.latent_shape = tuple(int(s) for s in latent_shape)  # the sampling loop draws noise of this shape
        self.register_buffer("scaling_factor", torch.tensor(float(scaling_factor)))

    @classmethod
    def from_config(cls, inner, model_cfg, info) -> LatentDenoiser:
        """``inner.from_config(model_cfg, latent info)`` (UNetDenoiser / DiTDenoiser) over :func:`build_vae`."""
        lat = latent_info(model_cfg, info)
        return cls(inner.from_config(model_cfg, lat), build_vae(model_cfg, info), lat.shape)

    def forward(self, z: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoiser(z, t, class_labels)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return encode_latent(self.vae, x, self.scaling_factor, generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z / self.scaling_factor).sample
