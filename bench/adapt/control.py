"""Control adapters on the text-conditioned UNet, steered by the shape's mask (bench.data.masks):

- **ControlNet** (Zhang, Rao & Agrawala 2023, "Adding Conditional Control to Text-to-Image Diffusion Models", eq. 2):
  a trainable copy of the UNet's encoder and middle block (diffusers' ``ControlNetModel.from_unet``) reads
  x_t + Z(c) and adds its features to the frozen UNet's skip connections and middle block through zero
  convolutions, so at initialisation the model is the base model exactly. Its conditioning embedding Z maps the
  control to the UNet's input resolution: in pixel space (16 x 16 images, a 16 x 16 UNet input) one level, no
  stride-2 convolution (Stable Diffusion's four levels map 512 px to its 64 x 64 latents).
- **T2I-Adapter** (Mou et al. 2023, eq. 2 and 3): a small network of its own (diffusers' ``T2IAdapter``,
  ``downscale_factor=1`` in pixel space) whose multi-scale features F_c^i are added to the UNet encoder's features
  F_enc^i at each scale.

Both are sampled by the harness's loop (every sampler): the residuals, weighted by ``adapter.conditioning_scale``
(0: the base model's output), enter the UNet through diffusers' own arguments
(``down_block_additional_residuals`` / ``mid_block_additional_residual``; ``down_intrablock_additional_residuals``).
They are trained on the data set's images with the mask the shapes annotator finds in each (as ControlNet is trained
on the edges or poses a detector finds in its images), the base model frozen. With ``model=pipeline``, a given
ControlNet directory (``adapter.path``) steers a Stable Diffusion pipeline as diffusers'
``StableDiffusionControlNetPipeline``.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, T2IAdapter
from torch import nn

from bench import keys
from bench.data.masks import check_masks, control_masks, extract_masks
from bench.models import TextUNetDenoiser
from bench.models.diffusers_checkpoint import read_checkpoint
from bench.results import AdapterColumns
from bench.schema import ConfigError
from bench.training import objectives as obj
from bench.utils import config_hash

from .common import OPTIM_FIELDS, check_common

CONTROL_CHANNELS = 1  # the control is a mask


class ControlNet(nn.Module):
    """``ControlNetModel.from_unet(unet)`` with a one-level conditioning embedding of ``embedding_channels`` (the
    control at the UNet's input resolution): its residuals for the UNet's down blocks and middle block."""

    def __init__(self, unet, embedding_channels: int):
        super().__init__()
        self.net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(int(embedding_channels),),
                                             conditioning_channels=CONTROL_CHANNELS)

    def residuals(self, x, t, states, control, scale: float) -> dict:
        down, mid = self.net(x, t, encoder_hidden_states=states, controlnet_cond=control, conditioning_scale=scale,
                             return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def t2i_feature_shapes(down_block_types, block_out_channels, size: int) -> list[tuple[int, int]]:
    """(channels, side) of the feature diffusers' UNet2DConditionModel adds each T2I-Adapter output to, block by
    block: a cross-attention down block takes it before its downsampler, a plain one after it."""
    out = []
    blocks = list(down_block_types)
    for i, (kind, ch) in enumerate(zip(blocks, block_out_channels)):
        last = i == len(blocks) - 1
        if "CrossAttn" in kind:
            out.append((ch, size))
        size = size if last else (size + 1) // 2
        if "CrossAttn" not in kind:
            out.append((ch, size))
    return out


def t2i_adapter_shapes(channels, size: int) -> list[tuple[int, int]]:
    """(channels, side) of the features of a full T2I-Adapter with ``downscale_factor=1`` on a ``size`` control."""
    out = []
    for ch in channels:
        out.append((ch, size))
        size = (size + 1) // 2  # AvgPool2d(2, ceil_mode=True) in each block after the first
    return out


class T2IAdapterNet(nn.Module):
    """diffusers' ``T2IAdapter`` (full adapter, ``downscale_factor=1``) with the UNet's block widths: one feature per
    down block, added inside it."""

    def __init__(self, unet, num_res_blocks: int):
        super().__init__()
        self.net = T2IAdapter(in_channels=CONTROL_CHANNELS, channels=list(unet.config.block_out_channels),
                              num_res_blocks=int(num_res_blocks), downscale_factor=1, adapter_type="full_adapter")

    def residuals(self, x, t, states, control, scale: float) -> dict:
        return {"down_intrablock_additional_residuals": [f * scale for f in self.net(control)]}  # a new list: the
        # UNet pops from it


class ControlledUNet(nn.Module):
    """``forward(x, t, class_labels=None, control=None)``: the text UNet (its weights the base model's) with the
    adapter's residuals at ``conditioning_scale`` for the control maps ``control`` (float (B, 1, H, W))."""

    def __init__(self, base: TextUNetDenoiser, adapter: nn.Module, conditioning_scale: float = 1.0):
        super().__init__()
        self.base, self.adapter = base, adapter
        self.conditioning_scale = float(conditioning_scale)
        self.num_classes, self.text_encoder_id = base.num_classes, base.text_encoder_id

    def forward(self, x: torch.Tensor, t, class_labels: torch.Tensor | None = None,
                control: torch.Tensor | None = None) -> torch.Tensor:
        if control is None:  # never the base model in disguise: its row would say controlled
            raise ValueError("a controlled model is called with control=(B, 1, H, W) maps")
        t, states = self.base.condition(x, t, class_labels)
        residuals = self.adapter.residuals(x, t, states, control.to(x.dtype), self.conditioning_scale)
        return self.base.unet(x, t, encoder_hidden_states=states, **residuals).sample


def controlnet(adapter_cfg, model: TextUNetDenoiser) -> ControlledUNet:
    """The base model with a ControlNet copied from its UNet; only the ControlNet requires grad."""
    model.requires_grad_(False)
    return ControlledUNet(model, ControlNet(model.unet, adapter_cfg.embedding_channels).requires_grad_(True))


def t2i_adapter(adapter_cfg, model: TextUNetDenoiser) -> ControlledUNet:
    """The base model with a T2I-Adapter of its UNet's widths; only the adapter requires grad."""
    model.requires_grad_(False)
    return ControlledUNet(model, T2IAdapterNet(model.unet, adapter_cfg.num_res_blocks).requires_grad_(True))


def scaled(adapter_cfg, model: ControlledUNet) -> ControlledUNet:
    """Sampling with the residuals weighted by ``adapter.conditioning_scale`` (diffusers' ``conditioning_scale`` /
    ``adapter_conditioning_scale``)."""
    model.conditioning_scale = float(adapter_cfg.conditioning_scale)
    return model


def annotated_loss(module, x0: torch.Tensor, labels, g: torch.Generator) -> torch.Tensor:
    """The base objective's loss with each training image's control: the mask the shapes annotator finds in it."""
    rows = module.rows()
    control = extract_masks(x0).to(x0.dtype)
    model = functools.partial(module.model, control=control if rows is None else control[rows])
    return obj.diffusion_loss(model, x0, labels, module.objective_cfg, module.schedule_cfg, g, module.alphas_cumprod,
                              rows=rows)


# --------------------------------------------------------------------------------------------------- checks

def check(cfg, info) -> None:
    """A data set with masks; the harness's text UNet (a T2I-Adapter: one whose down blocks take its features at
    each scale), or with ``model=pipeline`` a ControlNet directory for a Stable Diffusion pipeline sampling the
    shapes prompts (whose classes the masks are drawn for)."""
    check_common(cfg, info)
    kind, m = cfg.adapter.kind, cfg.model
    check_masks(cfg.data, "adapter.kind", kind)
    if m.name == "pipeline":
        _check_pipeline(cfg)
        return
    if m.name != "text_unet":
        raise ConfigError("model", m.name, f"text_unet with adapter={kind}",
                          "the control adapters steer diffusers' UNet2DConditionModel")
    if kind == "t2i_adapter":
        size = int(info.shape[-1])
        want = t2i_feature_shapes(m.down_block_types, m.block_out_channels, size)
        have = t2i_adapter_shapes(m.block_out_channels, size)
        if want != have:
            raise ConfigError("model.down_block_types", list(m.down_block_types), "cross-attention blocks but the "
                              "last (e.g. [CrossAttnDownBlock2D, DownBlock2D], as Stable Diffusion) with "
                              "adapter=t2i_adapter", f"the UNet adds its features at (channels, side) {want}, the "
                              f"adapter (downscale_factor=1) makes {have}")


def _check_pipeline(cfg) -> None:
    a = cfg.adapter
    if a.kind != "controlnet":
        raise ConfigError("adapter.kind", a.kind, "controlnet (adapter.path: a ControlNet directory) with "
                          "model=pipeline", "a given T2I-Adapter is not supported")
    controlnet_dir(a.path)
    cls = read_checkpoint(cfg.model).pipeline_class
    if cls != "StableDiffusionPipeline":
        raise ConfigError("model.path", cfg.model.path, "a StableDiffusionPipeline with adapter=controlnet",
                          f"it is a {cls}; StableDiffusionControlNetPipeline extends Stable Diffusion")
    if cfg.prompts.name != "shapes":
        raise ConfigError("prompts", cfg.prompts.name, "shapes with adapter=controlnet",
                          "each image's control is a mask of its prompt's class")
    if cfg.model.compile:
        raise ConfigError("model.compile", True, "false with adapter=controlnet", "the pipeline is rebuilt after load")


def controlnet_dir(path) -> Path:
    """``adapter.path``: a directory written by ``ControlNetModel.save_pretrained`` (its config.json names it)."""
    p = Path(str(path)).expanduser() if path else None
    conf = p / "config.json" if p is not None else None
    name = json.loads(conf.read_text()).get("_class_name") if conf is not None and conf.is_file() else None
    if name != "ControlNetModel":
        raise ConfigError("adapter.path", path, "a ControlNet directory (ControlNetModel.save_pretrained) with "
                          "model=pipeline", "no such directory" if p is None or not p.is_dir()
                          else f"its config.json names {name!r}")
    return p


# --------------------------------------------------------------------------------------------------- a pipeline

def into_pipeline(cfg, loaded, base_key: str) -> AdapterColumns:
    """``loaded`` (a Stable Diffusion pipeline) as diffusers' ``StableDiffusionControlNetPipeline`` with the ControlNet
    of ``adapter.path``, each image steered by a mask of its prompt's class at ``adapter.conditioning_scale``; its
    columns: key = the pipeline's key + the directory's content, the ControlNet's parameters and bytes."""
    a, path = cfg.adapter, controlnet_dir(cfg.adapter.path)
    pipe = loaded.pipe
    net = ControlNetModel.from_pretrained(str(path), dtype=pipe.dtype, local_files_only=True)
    loaded.pipe = StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=net.to(pipe.device))
    loaded.pipe.set_progress_bar_config(disable=True)
    loaded.control = functools.partial(control_masks, cfg.data)
    loaded.conditioning_scale = float(a.conditioning_scale)
    key = config_hash(keys.adapter_key_config(cfg, base_key, ("path",), None))
    return AdapterColumns(adapter="controlnet", adapter_key=key, base_model_key=base_key,
                          adapter_trainable_params=sum(p.numel() for p in net.parameters()),
                          adapter_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                          conditioning_scale=float(a.conditioning_scale))


CONTROLNET_FIELDS = ("embedding_channels", *OPTIM_FIELDS)
T2I_FIELDS = ("num_res_blocks", *OPTIM_FIELDS)
