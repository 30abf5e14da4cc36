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
on the edges or poses a detector finds in its images), the base model frozen.
"""
from __future__ import annotations

import functools

import torch
from diffusers import ControlNetModel, T2IAdapter
from torch import nn

from bench.data.masks import extract_masks
from bench.models import TextUNetDenoiser
from bench.training import objectives as obj

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


def t2i_feature_shapes(unet, size: int) -> list[tuple[int, int]]:
    """(channels, side) of the feature diffusers' UNet2DConditionModel adds each T2I-Adapter output to, block by
    block: a cross-attention down block takes it before its downsampler, a plain one after it."""
    out = []
    blocks = unet.config.down_block_types
    for i, (kind, ch) in enumerate(zip(blocks, unet.config.block_out_channels)):
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
