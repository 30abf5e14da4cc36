"""DreamBooth (Ruiz et al. 2023, "DreamBooth: Fine Tuning Text-to-Image Diffusion Models for Subject-Driven
Generation", eq. 2) on the text-conditioned UNet and captioned shapes.

A few images of a subject the base model never saw (``adapter.instance``: a colour + shape held out of
``data.classes``) are bound to a rare token in the instance prompt ("a sks circle"), and the class prompt ("a
circle") is kept where it was by the prior-preservation loss on class images the base model drew from it:

    L = E ||eps - eps_theta(x_t, "a sks circle")||^2 + lambda E ||eps' - eps_theta(x'_t, "a circle")||^2

(diffusers' ``examples/dreambooth/train_dreambooth.py``: each batch holds instance and class images, the two MSEs
added with ``prior_loss_weight``, 1.0 with 100 class images). lambda = 0 is plain fine-tuning on the instance images
(no class images). ``adapter.method``: every UNet weight (``full``) or a LoRA of ``adapter.rank`` (``lora``).

The prompts are rows appended to the text UNet's caption states after the empty prompt: label ``num_classes`` stays
the null prompt, labels above it are DreamBooth's prompts, so the one sampling loop samples them as classes.

Scores, in the paper's terms (§4.1, Table 3), with the offline CLIP (the paper uses DINO and LPIPS for some; noted):
CLIP-I, CLIP-T, PRES, DIV (:func:`clip_i`, :func:`clip_t`, :func:`pres`, :func:`div`) and drift: FID of the
class-prompt samples against the base model's class-prompt samples (same seeds, same sampler).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from bench import training
from bench.data import get_data_info
from bench.data.shapes import SHAPES_COLOURS, SHAPES_KINDS, SHAPES_POSITIONS, render_shape, shapes_classes_of, to_tensor
from bench.env import resolve_device
from bench.evaluators.clip import load_clip
from bench.images import quantize_uint8
from bench.metrics import distances
from bench.metrics.cost import CostMeter
from bench.metrics.stats import FeatureStats
from bench.models.text_unet import text_encoder
from bench.results import DreamBoothColumns
from bench.sampling.samplers import build_sampler
from bench.sampling.subject import Denoiser, Provenance, sampling_call
from bench.schema import ConfigError, SamplerConfig
from bench.utils import config_hash

from . import lora
from .common import AdapterModule, check_common

log = logging.getLogger("bench")

FIELDS = ("method", "rank", "alpha", "target_modules", "conv", "instance", "num_instance", "token", "prior_weight",
          "num_class_images", "class_steps", "class_guidance", "max_steps", "batch_size", "lr", "warmup_steps",
          "ema_decay", "seed")
METHODS = ("full", "lora")
# instance image i: default_rng([data.split_seed, 2, i]), the shapes generator's third stream (train 0, test 1;
# "control" 2, which controlled kinds draw their masks from: the same distribution, a subject's images are items of it)
INSTANCE_SPLIT = 2
CLASS_SEED = 3_000_000  # class image j: per-image seed CLASS_SEED + adapter.seed * 10_000 + j, apart from cells'


# ---------------------------------------------------------------------------------------------- the subject

def subject(adapter_cfg) -> tuple[str, str]:
    """(colour, shape) of ``adapter.instance``, or a one-line ConfigError naming the subjects there are."""
    parts = str(adapter_cfg.instance or "").split()
    if len(parts) != 2 or not shapes_classes_of(*parts):
        raise ConfigError("adapter.instance", adapter_cfg.instance,
                          f"'<colour> <shape>' with colour in {' | '.join(SHAPES_COLOURS)} and shape in "
                          f"{' | '.join(SHAPES_KINDS)}", "no such instance set")
    return parts[0], parts[1]


@dataclass(frozen=True)
class Prompts:
    """DreamBooth's prompts: ``texts`` (instance, class, then the instance in each position), the scoring caption of
    each position prompt (the token read as the subject's colour: what the offline CLIP knows), and their labels."""

    texts: tuple[str, ...]
    scoring: tuple[str, ...]
    num_classes: int  # the base's captions; label num_classes is the null prompt ""

    @property
    def instance(self) -> int:
        return self.num_classes + 1

    @property
    def cls(self) -> int:
        return self.num_classes + 2

    @property
    def contexts(self) -> list[int]:
        return [self.num_classes + 3 + i for i in range(len(self.scoring))]


def prompts(adapter_cfg, num_classes: int) -> Prompts:
    colour, kind = subject(adapter_cfg)
    token = str(adapter_cfg.token)
    contexts = tuple(f"a {token} {kind} at the {p}" for p in SHAPES_POSITIONS)
    return Prompts((f"a {token} {kind}", f"a {kind}", *contexts),
                   tuple(f"a {colour} {kind} at the {p}" for p in SHAPES_POSITIONS), num_classes)


def with_prompts(adapter_cfg, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (a text UNet) with DreamBooth's prompts' token states appended to its caption states."""
    p = prompts(adapter_cfg, model.num_classes)
    if model.text_states.shape[0] == p.num_classes + 1:
        states = text_encoder(None).encode_text_tokens(list(p.texts)).to(model.text_states)
        model.text_states = torch.cat([model.text_states, states])
    return model


def build(adapter_cfg, model: torch.nn.Module) -> torch.nn.Module:
    """The base's copy with the prompts in it and what ``adapter.method`` trains requiring grad."""
    model = with_prompts(adapter_cfg, model)
    if adapter_cfg.method == "lora":
        return lora.inject(adapter_cfg, model)
    return model.requires_grad_(True)


def instance_images(data_cfg, adapter_cfg) -> torch.Tensor:
    """The subject's ``num_instance`` images (position i % 4; size and offset from their own seeded generator),
    drawn as the shapes data set draws its items."""
    colour, kind = subject(adapter_cfg)
    size = int(data_cfg.image_size)
    imgs = np.empty((int(adapter_cfg.num_instance), size, size, 3), np.uint8)
    for i in range(len(imgs)):
        rng = np.random.default_rng([int(data_cfg.split_seed), INSTANCE_SPLIT, i])
        imgs[i] = render_shape(colour, kind, SHAPES_POSITIONS[i % len(SHAPES_POSITIONS)], rng.uniform(0.55, 0.95),
                               rng, size)
    return to_tensor(imgs, int(data_cfg.channels))


# --------------------------------------------------------------------------------------------------- checks

def check(cfg, info) -> None:
    """The text UNet with its shipped tower, an instance set that exists and that the base never saw, a method, a
    token that is one word not in the captions; LoRA's own checks with method=lora."""
    check_common(cfg, info)
    a = cfg.adapter
    if cfg.model.name != "text_unet" or cfg.data.name != "shapes":
        raise ConfigError("adapter.kind", "dreambooth", "none with this model/data",
                          f"DreamBooth here is for model=text_unet on data=shapes, not {cfg.model.name} on "
                          f"{cfg.data.name}")
    if cfg.model.text_encoder:
        raise ConfigError("model.text_encoder", cfg.model.text_encoder, "null with adapter=dreambooth",
                          "its prompts are encoded by the shipped offline CLIP tower")
    if a.method not in METHODS:
        raise ConfigError("adapter.method", a.method, " | ".join(METHODS))
    colour, kind = subject(a)
    seen = sorted(set(shapes_classes_of(colour, kind)) & set(range(info.num_classes) if cfg.data.classes is None
                                                             else cfg.data.classes))
    if seen:
        raise ConfigError("adapter.instance", a.instance, "a colour + shape held out of data.classes",
                          f"the base model is trained on its classes {seen}")
    token = str(a.token)
    words = {w for c in info.class_names for w in c.split()}
    if len(token.split()) != 1 or token in words:
        raise ConfigError("adapter.token", token, "one word that no caption uses (a rare token, e.g. sks)")
    if a.method == "lora":
        lora.check(cfg, info)


# ------------------------------------------------------------------------------------------------- training

def class_images(cfg, base: torch.nn.Module, base_key: str) -> torch.Tensor:
    """``adapter.num_class_images`` samples of the class prompt by the base model (DDIM, ``adapter.class_steps``,
    ``adapter.class_guidance``, per-image seeds), drawn once and cached under ``<cache_dir>/dreambooth/<key>``."""
    a = cfg.adapter
    p = prompts(a, base.num_classes)
    sampler = SamplerConfig(name="ddim")
    key_cfg = {"base": base_key, "prompt": p.texts[1], "n": int(a.num_class_images), "steps": int(a.class_steps),
               "guidance_scale": float(a.class_guidance), "sampler": dataclasses.asdict(sampler),
               "seed": CLASS_SEED + 10_000 * int(a.seed)}
    key = config_hash(key_cfg)

    def draw(work) -> dict:
        work.mkdir(parents=True, exist_ok=True)
        model = with_prompts(a, _copy(base))
        images = _sample(model, cfg, sampler, p.cls, key_cfg["n"], key_cfg["seed"], key_cfg["steps"],
                         key_cfg["guidance_scale"])
        save_file({"images": images.contiguous()}, str(work / "images.safetensors"))
        meta = {**key_cfg, "key": key}
        (work / "meta.json").write_text(json.dumps(meta, indent=1))  # written last: what marks the entry complete
        return meta

    path, _, hit = training.cached_model_dir(Path(cfg.cache_dir) / "dreambooth", key, draw)
    log.info("DreamBooth class images %s (%s)", path, "cached" if hit else "drawn")
    return load_file(str(path / "images.safetensors"))["images"]


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).cpu().eval()


def _sample(model, cfg, sampler_cfg, label: int, n: int, seed: int, steps: int, guidance: float,
            device: str = "cpu") -> torch.Tensor:
    """``n`` images of prompt ``label`` (image i: seed + i) through the one sampling loop, in [-1, 1] on the CPU."""
    info = get_data_info(cfg.data)
    scheduler = build_sampler(sampler_cfg, cfg.schedule, cfg.objective.name)
    den = Denoiser(model.to(device), scheduler, model.num_classes, Provenance(cfg.objective.name, cfg.schedule.name,
                                                                            sampler_cfg.timestep_spacing))
    call = dataclasses.replace(sampling_call(cfg.sampling, sampler_cfg, cfg.cost, cfg.metric, cfg.model, info, device),
                               num_samples=n, seed=seed, num_inference_steps=steps, guidance_scale=guidance,
                               classes=(label,), channels_last=False)
    return torch.cat([b.x.cpu() for b in den.batches(call, CostMeter(device))])


class PriorPairs(Dataset):
    """Item i: (instance image i % K, class image i % M) stacked (2, C, H, W) with their prompts' labels (2,), as
    train_dreambooth.py's dataset pairs them; without class images, (instance image i, its label)."""

    def __init__(self, instance: torch.Tensor, labels: Prompts, classes: torch.Tensor | None):
        self.instance, self.classes, self.p = instance, classes, labels
        self.n = len(instance) if classes is None else max(len(instance), len(classes))

    def __len__(self) -> int:
        return self.n

    def get_batch(self, indices):
        idx = torch.as_tensor(indices)
        x = self.instance[idx % len(self.instance)]
        if self.classes is None:
            return x, torch.full((len(idx),), self.p.instance)
        y = torch.tensor([self.p.instance, self.p.cls]).expand(len(idx), 2)
        return torch.stack([x, self.classes[idx % len(self.classes)]], 1), y

    def __getitem__(self, i):
        x, y = self.get_batch([i])
        return x[0], y[0]


class DreamBoothModule(AdapterModule):
    """The instance loss plus ``prior_weight`` times the class (prior-preservation) loss (eq. 2)."""

    prior_weight = 0.0

    def compute_loss(self, x0, labels, g):
        if x0.dim() == 4:  # instance images only (prior_weight 0)
            return super().compute_loss(x0, labels, g)
        instance = super().compute_loss(x0[:, 0], labels[:, 0], g)
        prior = super().compute_loss(x0[:, 1], labels[:, 1], g)
        return instance + self.prior_weight * prior

    def drop_labels(self, y, g):
        return super().drop_labels(y.flatten(), g).view_as(y)  # CFG label dropout per image, as the base trained


def prior_training(cfg):
    """(DreamBoothModule with ``adapter.prior_weight``, the instance images paired with the base's class images;
    without prior preservation the instance images alone: no class images are drawn)."""
    a = cfg.adapter
    base, base_info = training.load_or_train(cfg)
    p = prompts(a, base.num_classes)
    weight = float(a.prior_weight)
    classes = class_images(cfg, base, base_info["model_key"]) if weight > 0 else None
    module = type("DreamBoothModule", (DreamBoothModule,), {"prior_weight": weight})
    return module, PriorPairs(instance_images(cfg.data, a), p, classes)


# ---------------------------------------------------------------------------------------------------- scores

def _unit(x) -> torch.Tensor:
    return F.normalize(torch.as_tensor(x, dtype=torch.float64), dim=-1)


def clip_i(generated, real) -> float:
    """Subject fidelity CLIP-I: mean cosine between each generated and each real subject image's embedding."""
    return float((_unit(generated) @ _unit(real).T).mean())


def clip_t(generated, texts) -> float:
    """Prompt fidelity CLIP-T: mean cosine between each generated image's embedding and its prompt's (row-paired)."""
    return float((_unit(generated) * _unit(texts)).sum(-1).mean())


def pres(class_generated, real) -> float:
    """Prior preservation PRES: mean cosine between class-prompt samples and the real subject images (high: the
    class collapsed onto the subject). The paper's DINO embeddings are here the offline CLIP's."""
    return clip_i(class_generated, real)


def div(generated) -> float:
    """Diversity DIV: mean distance 1 - cos over the distinct pairs of samples of one prompt (the paper's LPIPS
    distance is here the offline CLIP's cosine distance)."""
    u = _unit(generated)
    n = len(u)
    sim = u @ u.T
    return float(1.0 - (sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def drift(features, base_features) -> float:
    """Fréchet distance (float64) between the class-prompt samples' features and the base model's."""
    a = FeatureStats.from_features(np.asarray(features, np.float64), keep_features=False)
    b = FeatureStats.from_features(np.asarray(base_features, np.float64), keep_features=False)
    return float(distances.frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


def evaluate(cfg, model: torch.nn.Module, columns) -> DreamBoothColumns:
    """Sample ``adapter.num_eval`` images of each prompt (the cell's sampler, steps, guidance, seeds) from the
    DreamBooth model, and of the class prompt from the base model; the adapter's columns with the five scores."""
    a, n = cfg.adapter, int(cfg.adapter.num_eval)
    device = resolve_device(cfg.device)
    p = prompts(a, model.num_classes)
    clip = load_clip(cfg)
    s = cfg.sampling
    seed, steps, scale = int(s.seed), int(s.num_inference_steps), float(s.guidance_scale)

    def embed(label, net):
        x = _sample(net, cfg, cfg.sampler, label, n, seed, steps, scale, device)
        return clip.encode_image(quantize_uint8(x)).double()

    was = model.training
    model.eval()
    instance = embed(p.instance, model)
    contexts = [embed(label, model) for label in p.contexts]
    cls = embed(p.cls, model)
    base = with_prompts(a, _copy(training.load_or_train(cfg)[0]))
    base_cls = embed(p.cls, base)
    model.train(was)
    real = clip.encode_image(quantize_uint8(instance_images(cfg.data, a))).double()
    texts = clip.encode_text(list(p.scoring)).double()
    fid = np.sqrt(instance.shape[1])  # the FID features' scale: sqrt(d) · unit embedding (bench.evaluators.clip)
    same = {f.name: getattr(columns, f.name) for f in dataclasses.fields(columns)}
    same["adapter_rank"] = int(a.rank) if a.method == "lora" else None
    return DreamBoothColumns(**same,
                             dreambooth_method=str(a.method), instance=str(a.instance), token=str(a.token),
                             prior_weight=float(a.prior_weight), num_class_images=int(a.num_class_images),
                             clip_i=clip_i(instance, real),
                             clip_t=clip_t(torch.cat(contexts), texts.repeat_interleave(n, 0)),
                             pres=pres(cls, real), div=div(instance),
                             drift=drift(fid * _unit(cls).numpy(), fid * _unit(base_cls).numpy()),
                             dreambooth_num_eval=n, dreambooth_net=clip.label, dreambooth_net_hash=clip.weights_hash)
