"""A subject's model as one prediction call on any x_t: what tasks on real images (inversion, editing) need beyond
:meth:`Subject.batches`, behind one interface (:class:`Predictor`) so they never ask which kind of model they got.

- ``encode(x)`` / ``decode(z)``: real images ([-1, 1]) to the space the model diffuses in and back (a latent
  family's or a pipeline's VAE, z = scaling_factor · mode q(z | x); identity for pixel models);
- ``condition(labels, captions)``: the batch's condition in the model's own form (class labels, or prompt
  embeddings), None for an unconditional model;
- ``null(cond)``: the null condition of each image as tensors that may be optimised (null-text inversion, Mokady
  et al. 2023): one set per image, so nothing depends on the batch size;
- ``output(x, t, cond, guidance_scale, meter, null=None)``: the model's raw output (its objective's) under
  classifier-free guidance out_u + w (out_c - out_u), the unconditional branch on ``null`` when given, every call
  counted on ``meter``.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from bench.metrics.cost import CostMeter
from bench.models import LatentDenoiser


class Predictor(Protocol):
    num_classes: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def condition(self, labels: torch.Tensor | None, captions: list | None) -> Any: ...

    def null(self, cond) -> list[torch.Tensor]: ...

    def output(self, x, t, cond, guidance_scale: float, meter: CostMeter, null=None) -> torch.Tensor: ...


def _cfg(out_c, out_u, guidance_scale: float):
    return out_u + guidance_scale * (out_c - out_u)


def null_tables(model: nn.Module, num_classes: int) -> dict[str, torch.Tensor]:
    """{name: tensor} of the tables a harness model embeds its class label with (row ``num_classes`` = the null
    class): every ``nn.Embedding`` of num_classes + 1 rows (a UNet's class embedding, each DiT block's label table)
    and a text family's caption states (``text_states``: the empty prompt's token states in the last row)."""
    out = {f"{name}.weight": m.weight for name, m in model.named_modules()
           if isinstance(m, nn.Embedding) and m.num_embeddings == num_classes + 1}
    out.update({name: b for name, b in model.named_buffers() if name.split(".")[-1] == "text_states"})
    return out


class OwnModelPredictor:
    """The harness's own model (any family, a distilled student): ``model(x, t, class_labels)``, labels in
    [0, num_classes], the null class = num_classes. A per-image null condition (null-text inversion) is each
    embedding table extended by one row per image (labels num_classes + 1 + i), called through
    ``torch.func.functional_call``: the model is not modified."""

    def __init__(self, model: nn.Module, num_classes: int):
        self.model, self.num_classes = model, int(num_classes)
        self.latent = isinstance(model, LatentDenoiser)  # as the sampling loop decides it

    def encode(self, x):
        if not self.latent:
            return x
        return self.model.vae.encode(x).latent_dist.mode() * self.model.scaling_factor  # deterministic: its mode

    def decode(self, z):
        return self.model.decode(z) if self.latent else z

    def condition(self, labels, captions):
        return labels if self.num_classes and labels is not None else None

    def null(self, cond) -> list[torch.Tensor]:
        n = cond.shape[0]
        return [t[self.num_classes].detach().clone().unsqueeze(0).repeat(n, *([1] * (t.dim() - 1)))
                for t in null_tables(self.model, self.num_classes).values()]

    def _null_output(self, x, t, null):
        tables = null_tables(self.model, self.num_classes)
        over = {name: torch.cat([tab, rows.to(tab.dtype)]) for (name, tab), rows in zip(tables.items(), null)}
        labels = self.num_classes + 1 + torch.arange(x.shape[0], device=x.device)
        return torch.func.functional_call(self.model, over, (x, t), {"class_labels": labels})

    def output(self, x, t, cond, guidance_scale, meter, null=None):
        n = x.shape[0]
        if cond is None or (guidance_scale == 1 and null is None):
            with meter.call(n):
                return self.model(x, t, class_labels=cond)
        if null is None:  # cond and uncond rows in one forward of 2B, as the sampling loop does
            if guidance_scale == 0:
                with meter.call(n):
                    return self.model(x, t, class_labels=torch.full_like(cond, self.num_classes))
            with meter.call(2 * n):
                null_labels = torch.full_like(cond, self.num_classes)
                out_c, out_u = self.model(torch.cat([x, x]), torch.cat([t, t]),
                                          class_labels=torch.cat([cond, null_labels])).chunk(2)
            return _cfg(out_c, out_u, guidance_scale)
        with meter.call(n):
            out_u = self._null_output(x, t, null)
        if guidance_scale == 0:
            return out_u
        with meter.call(n):
            out_c = self.model(x, t, class_labels=cond)
        return _cfg(out_c, out_u, guidance_scale)


class PipelinePredictor:
    """A diffusers pipeline's own components: its ``unet`` (UNet2DModel: unconditional; UNet2DConditionModel: on
    prompt embeddings from the pipeline's own ``encode_prompt``, the null condition the negative or empty prompt's),
    its ``vae`` (latent pipelines). The pipeline's __call__ is not used: inversion needs the model on any x_t."""

    def __init__(self, pipe, takes_prompt: bool, negative_prompt: str = ""):
        self.pipe, self.takes_prompt, self.negative_prompt = pipe, bool(takes_prompt), negative_prompt
        self.unet, self.vae = pipe.unet, getattr(pipe, "vae", None)
        self.num_classes = 0
        self.dtype = self.unet.dtype

    def encode(self, x, generators=None):
        """z = scaling_factor · the mode of q(z | x) (deterministic: inversion), or with one generator per image a
        draw from it (diffusers' img2img ``retrieve_latents``: image i's noise from ``generators[i]``)."""
        if self.vae is None:
            return x.to(self.dtype)
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        if generators is None:
            return dist.mode() * self.vae.config.scaling_factor
        eps = torch.stack([torch.randn(tuple(dist.mean.shape[1:]), generator=g) for g in generators])
        return (dist.mean + dist.std * eps.to(dist.mean.device, dist.mean.dtype)) * self.vae.config.scaling_factor

    def decode(self, z):
        if self.vae is None:
            return z.float()
        return self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()

    def condition(self, labels, captions):
        if not self.takes_prompt or captions is None:
            return None
        cond, null = self.pipe.encode_prompt(list(captions), self.unet.device, 1, True,
                                             negative_prompt=[self.negative_prompt] * len(captions))
        return {"cond": cond, "null": null}

    def null(self, cond) -> list[torch.Tensor]:
        return [cond["null"].detach().clone()]

    def _unet(self, x, t, states, meter):
        with meter.call(x.shape[0]):
            if states is None:
                return self.unet(x, t).sample
            return self.unet(x, t, encoder_hidden_states=states).sample

    def output(self, x, t, cond, guidance_scale, meter, null=None):
        x = x.to(self.dtype)
        if cond is None:
            return self._unet(x, t, None, meter)
        uncond = cond["null"] if null is None else null[0]
        if guidance_scale == 1:
            return self._unet(x, t, cond["cond"], meter)
        if guidance_scale == 0:
            return self._unet(x, t, uncond, meter)
        if null is None:  # one forward of 2B, as the pipeline's own CFG
            out_u, out_c = self._unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond["cond"]]),
                                      meter).chunk(2)
        else:
            out_u, out_c = self._unet(x, t, uncond, meter), self._unet(x, t, cond["cond"], meter)
        return _cfg(out_c, out_u, guidance_scale)
