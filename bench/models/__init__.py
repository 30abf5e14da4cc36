"""Denoisers with one interface: ``forward(x, t, class_labels=None)`` → a tensor shaped like ``x``.

``t`` is a float (B,) tensor in scheduler timestep units [0, num_train_timesteps] (flow: sigma * T);
``class_labels`` are int64 in [0, num_classes] with index ``num_classes`` the null class (classifier-free
guidance, Ho & Salimans 2022); ``None`` means the null class.
"""
from __future__ import annotations


from torch import nn

from bench.schema import ConfigError

from .mlp import MLPDenoiser
from .unet import UNetDenoiser, load_pretrained_unet

MODEL_NAMES = ("mlp", "unet")

__all__ = ["build_model", "MLPDenoiser", "UNetDenoiser", "load_pretrained_unet", "num_params", "MODEL_NAMES"]


def build_model(cfg, info) -> nn.Module:
    """The denoiser for ``cfg.model`` on data described by ``info`` (a :class:`bench.data.DataInfo`).

    ``model.pretrained`` set → that diffusers UNet, loaded (not trained)."""
    m = cfg.model
    if m.pretrained:
        return load_pretrained_unet(m.pretrained, info)
    if m.name == "mlp":
        if info.kind != "points":
            raise ConfigError("model.name", m.name, "unet for image data", f"data {info.id} has shape {info.shape}")
        return MLPDenoiser(dim=info.shape[0], hidden=m.hidden, layers=m.layers, time_embed_dim=m.time_embed_dim,
                           num_classes=info.num_classes)
    if m.name == "unet":
        if info.kind != "images":
            raise ConfigError("model.name", m.name, "mlp for point data", f"data {info.id} has shape {info.shape}")
        return UNetDenoiser.from_config(m, info)
    raise ConfigError("model.name", m.name, " | ".join(MODEL_NAMES))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
