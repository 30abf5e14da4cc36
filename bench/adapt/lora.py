"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3): each adapted layer's
W x becomes W x + (alpha / r) B A x with A (r x in) Gaussian and B (out x r) zero at initialisation, so the adapted
model starts as the base model exactly; only A and B are trained.

Through ``peft`` with diffusers' conventions (``train_text_to_image_lora.py``: ``LoraConfig(r, lora_alpha=r,
init_lora_weights="gaussian", target_modules=["to_k", "to_q", "to_v", "to_out.0"])``). ``UNet2DConditionModel``
takes it with its own ``add_adapter`` (diffusers' PEFT mixin); ``UNet2DModel`` and the DiT have no such mixin and get
the same layers from ``peft.inject_adapter_in_model``.
"""
from __future__ import annotations

import math
from pathlib import Path

import diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from torch import nn

from bench import keys
from bench.models import build_model
from bench.models.diffusers_checkpoint import read_checkpoint
from bench.results import AdapterColumns
from bench.schema import ConfigError
from bench.utils import config_hash

from .common import check_common, network

CONV_TARGETS = ("conv1", "conv2")  # a diffusers ResnetBlock2D's 3x3 convolutions (adapter.conv=true)


def target_modules(adapter_cfg) -> list[str]:
    return [*adapter_cfg.target_modules, *(CONV_TARGETS if adapter_cfg.conv else ())]


def lora_config(adapter_cfg) -> LoraConfig:
    r = int(adapter_cfg.rank)
    alpha = float(adapter_cfg.alpha) if adapter_cfg.alpha is not None else r
    return LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=target_modules(adapter_cfg))


def diffusers_net(model: nn.Module) -> nn.Module:
    """The diffusers model inside a harness denoiser (its ``unet`` or ``dit``)."""
    net = network(model)
    return getattr(net, "unet", None) or getattr(net, "dit", None) or net


def inject(adapter_cfg, model: nn.Module) -> nn.Module:
    """``model`` with LoRA layers on its ``target_modules`` (Gaussian A, zero B); only they require grad."""
    model.requires_grad_(False)
    net, config = diffusers_net(model), lora_config(adapter_cfg)
    if hasattr(net, "add_adapter"):  # diffusers' PEFT mixin (UNet2DConditionModel)
        net.add_adapter(config)
    else:
        inject_adapter_in_model(config, net)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def scaled(adapter_cfg, model: nn.Module) -> nn.Module:
    """Sampling with W + lora_scale (alpha / r) B A (diffusers' ``lora_scale``; 0 = the base model)."""
    for m in model.modules():
        if isinstance(m, LoraLayer):
            m.scale_layer(float(adapter_cfg.lora_scale))
    return model


def layer_names(model: nn.Module) -> list[str]:
    """The target-module names a model offers: the last part of each Linear/Conv2d's name (``to_out.0``'s two)."""
    out = set()
    for name, m in diffusers_net(model).named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            parts = name.split(".")
            out.add(".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1])
    return sorted(out)


def check(cfg, info) -> None:
    """A rank >= 1; target modules the base model has (their names listed); a LoRA file only for a pipeline."""
    check_common(cfg, info)
    a = cfg.adapter
    if int(a.rank) < 1:
        raise ConfigError("adapter.rank", a.rank, "an integer >= 1 (the LoRA rank r)")
    if cfg.model.name == "pipeline":
        _check_pipeline(cfg)
        return
    targets = target_modules(a)
    if not targets:
        raise ConfigError("adapter.target_modules", list(a.target_modules), "at least one module name")
    names = layer_names(build_model(cfg.model, info))  # a small network: built to read its layers' names
    missing = [t for t in targets if t not in names]
    if missing:
        key = "adapter.target_modules" if set(missing) - set(CONV_TARGETS) or not a.conv else "adapter.conv"
        value = list(a.target_modules) if key == "adapter.target_modules" else a.conv
        raise ConfigError(key, value, f"names of model={cfg.model.name}'s layers: {', '.join(names)}",
                          f"it has no {', '.join(missing)}")


FIELDS = ("rank", "alpha", "target_modules", "conv", "max_steps", "batch_size", "lr", "warmup_steps", "ema_decay",
          "seed")


# ------------------------------------------------------------------------------ a given LoRA file on a pipeline

PIPELINE_ADAPTER = "bench"  # the adapter name the file is loaded under
DOWN = ("lora_A", "lora_down", "lora.down")  # the A (in -> r) matrices in peft, kohya and diffusers files


def lora_file(path) -> Path:
    """The safetensors file of ``adapter.path``: the file itself, or the one ``*.safetensors`` of a directory
    (``save_lora_weights`` writes ``pytorch_lora_weights.safetensors``)."""
    p = Path(str(path)).expanduser()
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else [p] if p.suffix == ".safetensors" and p.is_file() else []
    if len(files) != 1:
        raise ConfigError("adapter.path", str(path), "a LoRA .safetensors file, or a directory holding one",
                          f"found {len(files)}")
    return files[0]


def _check_pipeline(cfg) -> None:
    """model=pipeline: a given LoRA file, a pipeline class that loads one (diffusers' LoRA loader mixin), no
    compiled denoiser (its graph would be traced before the LoRA layers exist)."""
    a = cfg.adapter
    if not a.path:
        raise ConfigError("adapter.path", a.path, "a LoRA file or directory with model=pipeline",
                          "a pipeline's LoRA is given (load_lora_weights), not trained here")
    lora_file(a.path)
    cls = read_checkpoint(cfg.model).pipeline_class
    if not hasattr(getattr(diffusers, cls, None), "load_lora_weights"):
        raise ConfigError("adapter", "lora", f"none for {cls}", "it has no load_lora_weights")
    if cfg.model.compile:
        raise ConfigError("model.compile", True, "false with adapter=lora", "the LoRA layers are loaded after load")


def into_pipeline(cfg, loaded, base_key: str) -> AdapterColumns:
    """The loaded pipeline with the LoRA of ``adapter.path`` (``load_lora_weights``) weighted by
    ``adapter.lora_scale`` (``set_adapters``); its columns: key = the pipeline's key + the file's content, rank and
    parameters read from the file."""
    a, file, pipe = cfg.adapter, lora_file(cfg.adapter.path), loaded.pipe
    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=PIPELINE_ADAPTER)
    pipe.set_adapters([PIPELINE_ADAPTER], adapter_weights=[float(a.lora_scale)])
    with safe_open(str(file), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    ranks = [s[0] for k, s in shapes.items() if any(d in k for d in DOWN)]
    key = config_hash(keys.adapter_key_config(cfg, base_key, ("path",), None))
    params = sum(math.prod(s) for s in shapes.values())
    return AdapterColumns(adapter="lora", adapter_key=key, base_model_key=base_key,
                          adapter_rank=max(ranks) if ranks else None, adapter_trainable_params=params,
                          adapter_bytes=file.stat().st_size, lora_scale=float(a.lora_scale))
