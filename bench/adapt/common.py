"""What every adapter kind shares: its key, its data, its training (the Lightning runner every harness model trains
through), its cache entry and its loading for a cell.

An adapter is trained on top of the model a config names (the *base*, trained or loaded by
:func:`bench.training.load_or_train`) on the data set's items of ``adapter.classes``, and stored like a model:
``<cache_dir>/models/<key>/`` with key = hash(base model key, the kind's ``adapter.*`` settings, the classes it is
trained on, the ``train.*`` settings it takes from the base's). Only the adapter's own weights are stored (their
size is the row's ``adapter_bytes``); a cell builds the base, puts the adapter in and loads them.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bench import keys, training
from bench.data import DataInfo, get_data_info
from bench.data.catalog import check_classes
from bench.env import resolve_device
from bench.models import LatentDenoiser
from bench.registry import Entry
from bench.results import AdapterColumns
from bench.schema import ConfigError
from bench.training.store import WEIGHTS
from bench.utils import config_hash, to_plain


def _identity(adapter_cfg, model):
    return model


@dataclass(frozen=True)
class Kind(Entry):
    """An adapter kind (``conf/adapter/<kind>.yaml``). ``build(adapter_cfg, model)``: ``model`` (a copy of the base)
    with the adapter in it and only the adapter's parameters requiring grad (what is trained and stored);
    ``check(cfg, info)``: its settings against the base model; ``fields``: the ``adapter.*`` settings that change
    its weights (its key); ``for_sampling(adapter_cfg, model)``: the trained model as a cell samples it;
    ``rank``: the ``adapter.*`` setting reported as its rank (None: none); ``scaled``: ``adapter.lora_scale``
    weights its update when sampling; ``controlled``: it is steered by a control map per image (the shape's mask,
    ``adapter.conditioning_scale``); ``loss(module, x0, labels, generator)``: its training loss, if not the base
    objective's; ``into_pipeline(cfg, loaded, base_key)``: a given file (``adapter.path``) loaded into a
    ``model=pipeline`` subject, returning its columns; ``training``, ``evaluate``: its own objective, items and
    scores (DreamBooth's)."""

    fields: tuple = ()
    for_sampling: Callable = _identity
    rank: str | None = None
    scaled: bool = False
    controlled: bool = False
    loss: Callable | None = None
    into_pipeline: Callable | None = None
    # cfg -> (the LightningModule class that trains it, its training items); None: AdapterModule on the data set's
    # items of its classes
    training: Callable | None = None
    evaluate: Callable | None = None  # (cfg, model, columns) -> its columns with its own scores (DreamBooth's)


OPTIM_FIELDS = ("max_steps", "batch_size", "lr", "warmup_steps", "ema_decay", "seed")


def network(model: torch.nn.Module) -> torch.nn.Module:
    """The denoising network an adapter changes: a latent family's denoiser, never its frozen VAE."""
    return model.denoiser if isinstance(model, LatentDenoiser) else model


def trainable(model: torch.nn.Module) -> list[str]:
    """Names of the parameters an adapter trains (those requiring grad)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


# ------------------------------------------------------------------------------------------------- classes

def trained_classes(cfg) -> tuple[int, ...] | None:
    """The classes the sampled model was trained on last: ``adapter.classes`` (an adapter on), else
    ``data.classes`` (None: all)."""
    a = cfg.get("adapter")
    chosen = a.classes if a is not None and a.kind != "none" and a.classes is not None else cfg.data.get("classes")
    return None if chosen is None else tuple(int(c) for c in chosen)


def scored_classes(cfg) -> tuple[int, ...] | None:
    """The classes a cell samples and is scored on: ``sampling.classes``, else :func:`trained_classes`."""
    chosen = cfg.sampling.get("classes")
    return tuple(int(c) for c in chosen) if chosen is not None else trained_classes(cfg)


def with_classes(data_cfg, classes):
    """``data_cfg`` restricted to ``classes`` (the items an adapter trains on, or a cell is scored against)."""
    out = copy.deepcopy(data_cfg)
    out.classes = None if classes is None else list(classes)
    return out


def scored(cfg):
    """``cfg`` whose data is the items of the classes its cell samples (:func:`scored_classes`): the reference
    statistics, the row's data id and the sampled labels follow it. ``cfg`` itself when that is its data already."""
    classes = scored_classes(cfg)
    if classes == (None if cfg.data.get("classes") is None else tuple(cfg.data.classes)):
        return cfg
    out = copy.deepcopy(cfg)
    out.data = with_classes(cfg.data, classes)
    return out


def check_classes_settings(cfg, info: DataInfo) -> None:
    """``adapter.classes`` and ``sampling.classes``: labels of the data set; no class subset for a loaded pipeline
    (it samples prompts, not the harness's labels)."""
    base = get_data_info(with_classes(cfg.data, None))  # the whole label space
    for key in ("adapter.classes", "sampling.classes"):
        group, name = key.split(".")
        value = cfg[group].get(name)
        if value is not None and not (group == "adapter" and cfg.adapter.kind == "none"):
            check_classes(value, base, key)
    if cfg.model.name == "pipeline" and scored_classes(cfg) is not None:
        raise ConfigError("sampling.classes", list(scored_classes(cfg)), "null with model=pipeline",
                          "a loaded pipeline samples its prompts, not the data set's labels")


def check_common(cfg, info: DataInfo) -> None:
    """What every adapter kind needs: a base model the harness trains (not a distilled student, not a loaded
    pipeline: those take a given LoRA file, ``adapter.path``) and class subsets of the data set's labels."""
    check_classes_settings(cfg, info)
    kind = cfg.adapter.kind
    if cfg.distill.method != "none":
        raise ConfigError("distill.method", cfg.distill.method, f"none with adapter={kind}",
                          "an adapter is trained on the base model itself")
    if cfg.model.name == "mlp":
        raise ConfigError("adapter.kind", kind, "none with model=mlp", "adapters are for the image families")
    if cfg.model.name != "pipeline" and cfg.adapter.path:
        raise ConfigError("adapter.path", cfg.adapter.path, f"null with model={cfg.model.name}",
                          "the harness trains the adapters of its own families; a given file is for model=pipeline")


# ----------------------------------------------------------------------------------------------------- keys

def adapter_key(cfg, kind: Kind, base_key: str) -> tuple[dict, str]:
    """(key config, key) of the adapter ``cfg`` names on the base model ``base_key``."""
    fields = tuple(f for f in kind.fields if f != "classes")
    key_cfg = keys.adapter_key_config(cfg, base_key, fields, trained_classes(cfg))
    return key_cfg, config_hash(key_cfg)


def adapter_train(cfg):
    """The ``train.*`` settings an adapter trains by: ``cfg.train`` with max_steps, batch_size, lr, warmup_steps,
    ema_decay and seed from ``adapter.*`` (no gradient accumulation)."""
    a = cfg.adapter
    return OmegaConf.create({**to_plain(cfg.train), "max_steps": int(a.max_steps), "batch_size": int(a.batch_size),
                             "lr": float(a.lr), "warmup_steps": int(a.warmup_steps),
                             "ema_decay": float(a.ema_decay), "seed": int(a.seed), "accumulate_grad_batches": 1})


class AdapterModule(training.DiffusionModule):
    """The base model's diffusion objective (or the kind's ``loss``), optimising only the adapter's parameters (those
    requiring grad)."""

    def __init__(self, *args, loss: Callable | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss = loss

    def compute_loss(self, x0: torch.Tensor, labels, g: torch.Generator) -> torch.Tensor:
        return super().compute_loss(x0, labels, g) if self.loss is None else self.loss(self, x0, labels, g)

    def configure_optimizers(self):
        tc = self.train_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=float(tc.lr), weight_decay=float(tc.weight_decay))
        warmup = int(tc.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# -------------------------------------------------------------------------------------------------- training

def load_or_adapt(cfg, kind: Kind) -> tuple[torch.nn.Module, dict]:
    """(the base model with its adapter, trained on a cache miss, in eval mode on ``cfg.device`` as a cell samples
    it; train_info). train_info is the base's (:func:`bench.training.load_or_train`) with ``model_key``, ``path`` and
    ``cached`` the adapter's, and ``adapter``: its :class:`AdapterColumns`."""
    info = get_data_info(cfg.data)
    device = resolve_device(cfg.device)
    base, base_info = training.load_or_train(cfg)
    key_cfg, key = adapter_key(cfg, kind, base_info["model_key"])
    classes = trained_classes(cfg)
    settings = adapter_train(cfg)

    def adapted() -> torch.nn.Module:
        return kind.build(cfg.adapter, copy.deepcopy(base).cpu().train())

    def train(work: Path) -> dict:
        module_cls, items = kind.training(cfg) if kind.training else (AdapterModule, None)

        def make() -> AdapterModule:  # after fit's seeding: the adapter's initial weights are part of its key
            return module_cls(cfg.model, cfg.objective, cfg.schedule, settings, info, model=adapted(),
                              loss=kind.loss)

        module = training.fit(make, with_classes(cfg.data, classes), settings, cfg.trainer, work, train_set=items)
        names = trainable(module.model)
        return training.write_model_dir(module, cfg, info, work, key=key, config=key_cfg, names=set(names),
                                        base_key=base_info["model_key"], adapter=cfg.adapter.kind,
                                        trainable_params=sum(p.numel() for p in module.model.parameters()
                                                             if p.requires_grad))

    path, meta, hit = training.cached_model_dir(training.models_root(cfg), key, train)
    model = training.load_model_dir(path, cfg.model, info, device, model=adapted(), strict=False)
    model = kind.for_sampling(cfg.adapter, model).eval().to(device)
    rank = int(cfg.adapter[kind.rank]) if kind.rank else None
    columns = AdapterColumns(adapter=cfg.adapter.kind, adapter_key=key, base_model_key=base_info["model_key"],
                             adapter_rank=rank, adapter_trainable_params=int(meta["trainable_params"]),
                             adapter_bytes=(path / WEIGHTS).stat().st_size,
                             adapter_train_steps=int(meta["train_steps"]),
                             adapter_train_seconds=round(float(meta["train_seconds"]), 3),
                             adapter_classes=None if classes is None else list(classes),
                             lora_scale=float(cfg.adapter.lora_scale) if kind.scaled else None,
                             conditioning_scale=float(cfg.adapter.conditioning_scale) if kind.controlled else None)
    return model, {**base_info, "model_key": key, "path": str(path), "cached": base_info["cached"] and hit,
                   "adapter": columns}
