"""What a cell samples, loaded the way its model family's registry entry says (``MODELS[name].sampled_as``):

- ``denoiser``: the harness's own model — trained (or loaded from ``model.pretrained``) and cached, its distilled
  student when ``distill.method`` is set, or with its adapter when ``adapter.kind`` is (:mod:`bench.adapt`) — in
  the harness's loop, classifier-guided when ``sampling.classifier_scale`` > 0, with its family's columns (text
  tower; a latent family's VAE);
- ``diffusers_pipeline``: a saved diffusers pipeline, loaded as is (:mod:`bench.sampling.diffusers_pipeline`).

Each loader returns ``(subject, train_info)``: a :class:`bench.sampling.subject.Subject` and the model's cache
provenance (model_key, train_steps, ...).
"""
from __future__ import annotations

import torch

from bench import adapt, distill, training
from bench.data import DataInfo
from bench.metrics.scorer import images_fid
from bench.models import MODELS
from bench.registry import Entry, Registry
from bench.results import ClassifierColumns, LatentColumns, TextTowerColumns
from bench.sampling import ClassifierGuidance, build_sampler, compiled, diffusers_pipeline
from bench.sampling.subject import Denoiser, Provenance, Subject, sampling_call, uses_channels_last


def classifier_guidance(cfg, device: str) -> tuple[ClassifierGuidance | None, ClassifierColumns]:
    """``sampling.classifier_scale`` > 0: the loop's guidance by the harness's noise-aware classifier (cached like a
    model, trained on a miss) and its columns (scale, classifier key, steps and size); else (None, scale 0, no
    classifier calls and no classifier parameters: every row has these columns, so a study can tabulate them)."""
    scale = float(cfg.sampling.classifier_scale)
    if not scale:
        return None, ClassifierColumns(nfe_classifier=0.0)
    classifier, info = training.load_or_train_classifier(cfg)
    return (ClassifierGuidance.from_config(classifier.to(device), cfg, scale),
            ClassifierColumns(classifier_scale=scale, classifier_key=info["classifier_key"],
                              classifier_train_steps=info["train_steps"], classifier_num_params=info["num_params"]))


def latent_columns(cfg, info: DataInfo) -> LatentColumns:
    """A latent family's first stage (:func:`training.latent_columns`) and, with FID on, what it alone costs, on the
    held-out split, against the cell's reference statistics in its feature network: ``vae_rfid`` (FID of the VAE's
    reconstructions D(mode q(z | x))) beside ``real_fid`` (FID of those held-out images themselves: the floor at
    that N), ``vae_rfid_n`` = N."""
    vae, vae_info = training.load_or_train_vae(cfg)
    out = training.latent_columns(cfg, vae_info)
    if cfg.metric.name != "none" and cfg.metric.fid:
        pairs = list(training.held_out_reconstructions(vae, cfg.data))
        out.update(images_fid(cfg, info, {"vae_rfid": [r.clamp(-1, 1) for _, r in pairs],
                                          "real_fid": [x for x, _ in pairs]}),
                   vae_rfid_n=sum(len(x) for x, _ in pairs))
    return LatentColumns(**out)


def load_denoiser(cfg, info: DataInfo, device: str) -> tuple[Denoiser, dict]:
    """The trained model, or its distilled student when ``distill.method`` is set, on the configured sampler;
    compiled with ``cost.compile`` (:func:`bench.sampling.compiled.compile_denoiser`: warmed up, checked)."""
    if cfg.adapter.kind != "none":
        model, train_info = adapt.load_adapted(cfg)
    else:
        model, train_info = (distill.load_or_distill(cfg) if cfg.distill.method != "none"
                             else training.load_or_train(cfg))
    if uses_channels_last(cfg.cost, cfg.model):
        model = model.to(memory_format=torch.channels_last)
    guide, groups = classifier_guidance(cfg, device)
    groups = [groups]
    if "adapter" in train_info:
        groups.append(train_info["adapter"])
    if getattr(model, "text_encoder_id", ""):
        groups.append(TextTowerColumns(model.text_encoder_id))
    if MODELS[cfg.model.name].latent:
        groups.append(latent_columns(cfg, info))
    if MODELS[cfg.model.name].probe is not None:  # the family's probe of the loaded model (validated already)
        groups.append(MODELS[cfg.model.name].probe(cfg, info))
    scheduler = build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name, lcm_grid=cfg.distill.num_ddim_timesteps)
    provenance = Provenance(cfg.objective.name, cfg.schedule.name, cfg.sampler.timestep_spacing, tuple(groups))
    num_classes = getattr(model, "num_classes", info.num_classes)  # the model's own conditioning
    eager = Denoiser(model, scheduler, num_classes, provenance, guide, control=adapt.controls(cfg))
    call = sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model, info, device)
    return compiled.compile_denoiser(eager, cfg.cost.compile, train_info["model_key"], call), train_info


def load_pipeline(cfg, info: DataInfo, device: str) -> tuple[Subject, dict]:
    """A saved diffusers pipeline (:func:`diffusers_pipeline.load`), with the file of ``adapter.path`` loaded into it
    by its kind (a LoRA, a ControlNet; the row's model_key is then the adapted pipeline's)."""
    loaded, train_info = diffusers_pipeline.load(cfg, info, device)
    if cfg.adapter.kind == "none":
        return loaded, train_info
    columns = adapt.KINDS[cfg.adapter.kind].into_pipeline(cfg, loaded, train_info["model_key"])
    loaded.extra = (columns,)
    return loaded, {**train_info, "model_key": columns.adapter_key}


LOADERS = Registry("subject", "model.name", {
    "denoiser": Entry(load_denoiser, doc="the harness's own model (trained or distilled) in its own loop"),
    "diffusers_pipeline": Entry(load_pipeline, doc="a saved diffusers pipeline through its __call__"),
})


def load_subject(cfg, info: DataInfo, device: str) -> tuple[Subject, dict]:
    """(what the cell of ``cfg`` samples, its train_info), by the model family's ``sampled_as``."""
    return LOADERS[MODELS[cfg.model.name].sampled_as].build(cfg, info, device)
