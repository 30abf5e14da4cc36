"""A cell's identity: which part of the config determines its numbers, and the hash of that part (the cell key)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bench.data import data_key
from bench.models import diffusers_checkpoint as checkpoints
from bench.schema import ConfigError, elide_defaults
from bench.utils import config_hash, path_fingerprint, to_plain


def results_root(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


# Keys that do not change a cell's numbers: excluded from its key, so changing them does not re-run finished cells.
# batch_size is here on purpose: per-image seeds make samples independent of it; `cost` says how time is measured;
# sampling.devices/shard_size only say how the work is split (bench.distributed: same samples and scores).
NON_RESULT_KEYS = ("tracker", "trainer", "cost", "out_dir", "cache_dir", "name", "fail_fast", "device")
NON_RESULT_SAMPLING_KEYS = ("batch_size", "save_samples", "grid_size", "devices", "shard_size")


def cell_config(cfg: DictConfig) -> dict:
    """The part of the config that determines a cell's numbers; its hash is the cell key."""
    c = to_plain(cfg)
    for k in NON_RESULT_KEYS:
        c.pop(k, None)
    for k in NON_RESULT_SAMPLING_KEYS:
        c["sampling"].pop(k, None)
    c["data"].update(data_key(cfg.data))  # folder data: its content fingerprint, not only its path
    for group, key in (("model", "pretrained"), ("model", "vae"), ("model", "text_encoder"),  # by content
                       ("metric", "reference_stats")):
        if c[group].get(key):
            c[group][f"{key}_content"] = path_fingerprint(c[group][key])
    if c["model"].get("path"):  # model=pipeline: every file of the checkpoint (weights, configs, its scheduler)
        try:
            c["model"]["path_content"] = path_fingerprint(checkpoints.resolve(c["model"]["path"]))
        except ConfigError:
            pass  # a path that does not resolve never runs: validation refuses it with this same error
    return elide_defaults(c)


def cell_key(cfg: DictConfig) -> str:
    return config_hash(cell_config(cfg))




# --- temporary adapters (replaced by the key builders moving here) ---
def model_key(cfg) -> str:
    from bench import training
    from bench.distill import progressive_rounds, student_key_config
    from bench.sampling import diffusers_pipeline

    if cfg.model.name == "pipeline":
        return diffusers_pipeline.model_key(cfg)
    key = training.model_key(cfg)
    if cfg.distill.method != "none":
        for n in progressive_rounds(cfg) if cfg.distill.method == "progressive" else [None]:
            key = config_hash(student_key_config(cfg, key, n))
    return key


def classifier_key(cfg) -> str:
    from bench import training
    return training.classifier_key(cfg)


def vae_key(cfg) -> str:
    from bench.training.cache import vae_key_config
    return config_hash(vae_key_config(cfg))
