"""Adapters trained on a base model, benchmarked like models: one registry entry per ``conf/adapter/<kind>.yaml``.

- ``none``: the model itself;
- ``lora``: low-rank updates of the attention projections (and optionally the ResNet convolutions), through peft
  (:mod:`bench.adapt.lora`); with ``model=pipeline``, a given LoRA file (``adapter.path``) at ``lora_scale``;
- ``full``: every weight of the denoiser fine-tuned: the baseline an adapter's parameters and forgetting are
  measured against;
- ``controlnet``, ``t2i_adapter``: steered by the shape's mask (:mod:`bench.adapt.control`); with
  ``model=pipeline``, a given ControlNet directory (``adapter.path``) at ``conditioning_scale``;
- ``dreambooth``: a subject bound to a rare token with prior preservation, full or LoRA
  (:mod:`bench.adapt.dreambooth`), scored by CLIP-I, CLIP-T, PRES, DIV and drift.

Every kind trains through the Lightning runner and the model store (:func:`load_or_adapt`), is keyed by the base
model's key + its settings + its data (:func:`adapter_key`) and is sampled by the cell as its model
(``bench.subjects``). A new kind is one entry here (:class:`Kind`) plus one YAML file.
"""
from __future__ import annotations

import functools

from torch import nn

from bench.data.masks import control_masks
from bench.registry import Registry
from bench.schema import ConfigError

from . import control, dreambooth, lora
from .common import (
    OPTIM_FIELDS,
    AdapterModule,
    Kind,
    adapter_key,
    check_classes_settings,
    check_common,
    load_or_adapt,
    network,
    scored,
    scored_classes,
    trainable,
    trained_classes,
)


def _full(adapter_cfg, model: nn.Module) -> nn.Module:
    """Every weight of the denoising network trainable (a latent family's VAE stays frozen)."""
    model.requires_grad_(False)
    network(model).requires_grad_(True)
    return model


def _check_none(cfg, info) -> None:
    check_classes_settings(cfg, info)


def _check_full(cfg, info) -> None:
    check_common(cfg, info)
    if cfg.model.name == "pipeline":
        raise ConfigError("adapter.kind", "full", "none or lora (a given LoRA file) or controlnet (a given ControlNet "
                          "directory) with model=pipeline",
                          "the harness fine-tunes its own families")


KINDS = Registry("adapter", "adapter.kind", {
    "none": Kind(check=_check_none, doc="the model itself"),
    "lora": Kind(lora.inject, lora.check, fields=lora.FIELDS, for_sampling=lora.scaled, rank="rank", scaled=True,
                 into_pipeline=lora.into_pipeline, doc="low-rank updates through peft (diffusers' conventions)"),
    "full": Kind(_full, _check_full, fields=OPTIM_FIELDS, doc="every weight of the denoiser fine-tuned"),
    "controlnet": Kind(control.controlnet, control.check, fields=control.CONTROLNET_FIELDS, for_sampling=control.scaled,
                       controlled=True, loss=control.annotated_loss, into_pipeline=control.into_pipeline,
                       doc="ControlNet (from_unet, zero convolutions) steered by the shape's mask"),
    "t2i_adapter": Kind(control.t2i_adapter, control.check, fields=control.T2I_FIELDS, for_sampling=control.scaled,
                        controlled=True, loss=control.annotated_loss, doc="T2I-Adapter steered by the shape's mask"),
    "dreambooth": Kind(dreambooth.build, dreambooth.check, fields=dreambooth.FIELDS, training=dreambooth.prior_training,
                       evaluate=dreambooth.evaluate,
                       doc="a subject bound to a rare token, with prior preservation (full or LoRA)"),
})


def load_adapted(cfg):
    """(the model a cell samples with ``cfg.adapter`` on its base, train_info): :func:`load_or_adapt` by kind, its
    own scores (``Kind.evaluate``) in its columns."""
    kind = KINDS[cfg.adapter.kind]
    model, train_info = load_or_adapt(cfg, kind)
    if kind.evaluate is not None:
        train_info = {**train_info, "adapter": kind.evaluate(cfg, model, train_info["adapter"])}
    return model, train_info


def controls(cfg):
    """Each image's control map, ``controls(labels, seeds)``, for a controlled kind (a mask of its class); else None."""
    return functools.partial(control_masks, cfg.data) if KINDS[cfg.adapter.kind].controlled else None


__all__ = ["KINDS", "Kind", "AdapterModule", "adapter_key", "check_common", "controls", "load_adapted", "load_or_adapt",
           "network", "scored", "scored_classes", "trainable", "trained_classes"]
