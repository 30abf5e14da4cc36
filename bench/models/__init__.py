"""Denoisers with one interface: ``forward(x, t, class_labels=None)`` → a tensor shaped like ``x``.

``t`` is a float (B,) tensor in scheduler timestep units [0, num_train_timesteps] (flow: sigma * T);
``class_labels`` are int64 in [0, num_classes] with index ``num_classes`` the null class (classifier-free
guidance, Ho & Salimans 2022); ``None`` means the null class.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bench.registry import Entry, Registry
from bench.schema import ConfigError

from .dit import DiTDenoiser, check_dit
from .latent import LatentDenoiser, build_vae, check_latent
from .mlp import MLPDenoiser
from .text_unet import TextUNetDenoiser, check_text_unet, text_encoder, text_encoder_fingerprint
from .torch_module import TorchDenoiser, build as build_torch, check as check_torch
from .torch_probe import probe as probe_torch
from .unet import UNetDenoiser, check_unet, load_pretrained_unet

__all__ = ["MODELS", "build_model", "DiTDenoiser", "LatentDenoiser", "MLPDenoiser", "TextUNetDenoiser", "UNetDenoiser",
           "TorchDenoiser",
           "build_vae", "load_pretrained_unet", "num_params", "text_encoder",
           "text_encoder_fingerprint"]


def _mlp(m, info) -> nn.Module:
    if info.kind != "points":
        raise ConfigError("model.name", m.name, "unet for image data", f"data {info.id} has shape {info.shape}")
    return MLPDenoiser(dim=info.shape[0], hidden=m.hidden, layers=m.layers, time_embed_dim=m.time_embed_dim,
                       num_classes=info.num_classes)


def _image_family(cls, latent: bool = False):
    """The builder of an image denoiser family (``cls.from_config(model_cfg, info)``; ``latent``: that denoiser in
    an AutoencoderKL's latent space, :class:`LatentDenoiser`); point data is refused."""

    def build(m, info) -> nn.Module:
        if info.kind != "images":
            raise ConfigError("model.name", m.name, "mlp for point data", f"data {info.id} has shape {info.shape}")
        return LatentDenoiser.from_config(cls, m, info) if latent else cls.from_config(m, info)

    return build


def _latent(inner_check):
    """The check of a latent family: image data, then :func:`check_latent` with the inner denoiser's check."""
    images = _needs("images", "mlp")

    def check(cfg, info) -> None:
        images(cfg, info)
        check_latent(cfg, info, inner_check)

    return check


def _needs(kind: str, other: str, then=None):
    """A check: this family only denoises ``kind`` data (points: mlp; images: unet, dit); ``then(model_cfg, info)``
    checks the family's own keys after that."""

    def check(cfg, info) -> None:
        if info.kind != kind:
            raise ConfigError("model", cfg.model.name, f"model={other} for data={cfg.data.name}")
        if then is not None:
            then(cfg.model, info)

    return check


@dataclass(frozen=True)
class Family(Entry):
    """A model family; ``latent``: it diffuses in the latent space of an AutoencoderKL the harness trains first;
    ``text``: it is conditioned on captions through the frozen text tower (whose weights hash enters its key);
    ``channels_last``: a convolutional network that ``cost.channels_last`` puts in that memory format;
    ``sampled_as``: the kind of subject a cell samples it as (``bench.subjects.LOADERS``): ``denoiser``, the
    harness's own model (trained here, or distilled) in its own loop; ``diffusers_pipeline``, a saved pipeline
    loaded as is and sampled through its own ``__call__``; ``loaded``: its builder loads the user's own files (never
    trained here: its key is those files and its declarations); ``probe(cfg, info)``: a check of the built model on
    real data, run last in validation, whose result is a column group of the row."""

    latent: bool = False
    text: bool = False
    channels_last: bool = False
    sampled_as: str = "denoiser"
    loaded: bool = False
    probe: Callable | None = None


MODELS = Registry("model", "model.name", {
    "mlp": Family(_mlp, _needs("points", "unet")),
    "unet": Family(_image_family(UNetDenoiser), _needs("images", "mlp"), channels_last=True),
    "dit": Family(_image_family(DiTDenoiser), _needs("images", "mlp", check_dit)),
    "latent_unet": Family(_image_family(UNetDenoiser, latent=True), _latent(check_unet), latent=True),
    "latent_dit": Family(_image_family(DiTDenoiser, latent=True), _latent(check_dit), latent=True),
    "text_unet": Family(_image_family(TextUNetDenoiser), _needs("images", "mlp", check_text_unet), text=True),
    # a local diffusers pipeline, loaded as saved and sampled through its own __call__ (bench.sampling.
    # diffusers_pipeline, which also checks it against the checkpoint); never built from config or trained here
    "pipeline": Family(None, _needs("images", "mlp"), sampled_as="diffusers_pipeline"),
    # the user's own nn.Module (a factory or TorchScript, its weights file), adapted to the harness's conventions by
    # what its config declares and probed on real images before any work (bench.models.torch_module, torch_probe)
    "torch": Family(build_torch, check_torch, loaded=True, probe=probe_torch),
})


def build_model(model_cfg, info) -> nn.Module:
    """The denoiser for ``model_cfg`` (``cfg.model``) on data described by ``info`` (a :class:`bench.data.DataInfo`).

    ``model.pretrained`` set (model=unet) → that diffusers UNet, loaded (not trained)."""
    if model_cfg.get("pretrained"):
        return load_pretrained_unet(model_cfg.pretrained, info)
    return MODELS[model_cfg.name].build(model_cfg, info)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
