"""Denoisers with one interface: ``forward(x, t, class_labels=None)`` → a tensor shaped like ``x``.

``t`` is a float (B,) tensor in scheduler timestep units [0, num_train_timesteps] (flow: sigma * T);
``class_labels`` are int64 in [0, num_classes] with index ``num_classes`` the null class (classifier-free
guidance, Ho & Salimans 2022); ``None`` means the null class.
"""
from __future__ import annotations

from torch import nn

from bench.registry import Entry, Registry
from bench.schema import ConfigError

from .dit import DiTDenoiser, check_dit
from .mlp import MLPDenoiser
from .unet import UNetDenoiser, load_pretrained_unet

__all__ = ["MODELS", "build_model", "DiTDenoiser", "MLPDenoiser", "UNetDenoiser", "load_pretrained_unet", "num_params"]


def _mlp(m, info) -> nn.Module:
    if info.kind != "points":
        raise ConfigError("model.name", m.name, "unet for image data", f"data {info.id} has shape {info.shape}")
    return MLPDenoiser(dim=info.shape[0], hidden=m.hidden, layers=m.layers, time_embed_dim=m.time_embed_dim,
                       num_classes=info.num_classes)


def _image_family(cls):
    """The builder of an image denoiser family (``cls.from_config(model_cfg, info)``); point data is refused."""

    def build(m, info) -> nn.Module:
        if info.kind != "images":
            raise ConfigError("model.name", m.name, "mlp for point data", f"data {info.id} has shape {info.shape}")
        return cls.from_config(m, info)

    return build


def _needs(kind: str, other: str, then=None):
    """A check: this family only denoises ``kind`` data (points: mlp; images: unet, dit); ``then(model_cfg, info)``
    checks the family's own keys after that."""

    def check(cfg, info) -> None:
        if info.kind != kind:
            raise ConfigError("model", cfg.model.name, f"model={other} for data={cfg.data.name}")
        if then is not None:
            then(cfg.model, info)

    return check


MODELS = Registry("model", "model.name", {
    "mlp": Entry(_mlp, _needs("points", "unet")),
    "unet": Entry(_image_family(UNetDenoiser), _needs("images", "mlp")),
    "dit": Entry(_image_family(DiTDenoiser), _needs("images", "mlp", check_dit)),
})


def build_model(model_cfg, info) -> nn.Module:
    """The denoiser for ``model_cfg`` (``cfg.model``) on data described by ``info`` (a :class:`bench.data.DataInfo`).

    ``model.pretrained`` set → that diffusers UNet, loaded (not trained)."""
    if model_cfg.pretrained:
        return load_pretrained_unet(model_cfg.pretrained, info)
    return MODELS[model_cfg.name].build(model_cfg, info)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
