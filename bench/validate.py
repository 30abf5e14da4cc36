"""Checks a composed config before any work: one clear ConfigError naming the key, the value and what is allowed.

Hydra + the dataclass schema already reject unknown keys, wrong types and unknown group options; this adds the
value ranges and the combinations that are individually valid but impossible together.
"""
from __future__ import annotations

import os
from pathlib import Path

from bench.schema import ConfigError

ALLOWED = {
    "data.name": ("toy2d", "digits", "folder", "shapes"),
    "model.name": ("mlp", "unet"),
    "objective.name": ("eps", "v", "x0", "flow"),
    "schedule.name": ("linear", "scaled_linear", "cosine"),
    "metric.name": ("auto", "inception", "none"),
    "tracker.name": ("wandb", "none"),
    "distill.method": ("none", "progressive", "consistency"),
    "device": ("auto", "cpu", "cuda"),
    "objective.loss_weighting": ("uniform", "min_snr"),
}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _positive(cfg, key: str, strict: bool = True):
    v = _get(cfg, key)
    if (v <= 0) if strict else (v < 0):
        raise ConfigError(key, v, "a positive number" if strict else "a number >= 0")


def _unit(cfg, key: str, closed_right: bool = False):
    v = _get(cfg, key)
    if not (0 <= v <= 1 if closed_right else 0 <= v < 1):
        raise ConfigError(key, v, f"a number in [0, 1{']' if closed_right else ')'}")


def check_output_dir(path: str | os.PathLike, key: str = "out_dir") -> None:
    """The nearest existing ancestor of `path` must be a writable directory."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(key, str(path), "a writable directory", f"{p} is not writable")


def _check_metric_files(cfg, info) -> None:
    """Local files the scores need, checked before training rather than after it (their contents are verified when
    loaded: Inception's sha256, the reference statistics' arrays)."""
    if cfg.metric.name == "none" or info.kind != "images":
        return
    from bench.evaluators import resolve_feature_net

    if resolve_feature_net(cfg) == "inception":
        from bench.evaluators.inception import ENV_VAR, OFFICIAL_FILE, weights_file

        given, path = weights_file(cfg)
        if path is None:
            raise ConfigError("metric.inception_weights", given, f"a local Inception-v3 weights file ({OFFICIAL_FILE}"
                              f", never downloaded), or set ${ENV_VAR}", "file not found" if given else "not set")
    ref = cfg.metric.reference_stats
    if ref and not Path(ref).expanduser().is_file():
        raise ConfigError("metric.reference_stats", ref, "a local .npz with mu/sigma or an ADM arr_0 batch",
                          "file not found")


def validate(cfg, info=None) -> None:
    """Raise ConfigError for the first bad value or combination in `cfg` (a composed BenchConfig)."""
    for key, allowed in ALLOWED.items():
        value = _get(cfg, key)
        if value not in allowed:
            raise ConfigError(key, value, "one of " + ", ".join(allowed))
    data, model = cfg.data.name, cfg.model.name
    if (data == "toy2d") != (model == "mlp"):
        want = "mlp" if data == "toy2d" else "unet"
        raise ConfigError("model", model, f"model={want} for data={data}")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device", "cuda", "auto or cpu", "no CUDA device is visible")
    for key in ("sampling.num_samples", "sampling.batch_size", "train.batch_size", "train.lr",
                "schedule.num_train_timesteps", "data.image_size", "metric.repeats"):
        _positive(cfg, key)
    _positive(cfg, "cost.repeats")
    for key in ("train.max_steps", "train.warmup_steps", "train.grad_clip", "metric.bootstrap", "sampler.eta",
                "cost.warmup_batches", "cost.min_timed_batches", "cost.num_threads"):
        _positive(cfg, key, strict=False)
    _unit(cfg, "train.ema_decay")
    _unit(cfg, "train.cond_drop_prob")
    if cfg.sampling.guidance_scale < 0:
        raise ConfigError("sampling.guidance_scale", cfg.sampling.guidance_scale,
                          "a number >= 0 (0 = unconditional, 1 = conditional, > 1 = classifier-free guidance)")
    if cfg.data.name == "folder" and not cfg.data.path:
        raise ConfigError("data.path", cfg.data.path, "a directory of images (data.path=/path/to/images)")
    check_output_dir(cfg.out_dir)

    from bench.sampling import check_combination, check_guidance

    check_combination(cfg)
    if info is None:
        from bench.data import get_data_info

        info = get_data_info(cfg.data)
    check_guidance(cfg.sampling.guidance_scale, info.num_classes)
    _check_metric_files(cfg, info)
    from bench.distill import check_distill

    check_distill(cfg, info.num_classes)
    from bench.distributed import check_distributed

    check_distributed(cfg)
