"""The denoiser a config names: from the model store, or trained (a latent family's VAE first) and stored."""
from __future__ import annotations

from pathlib import Path

import torch

from bench import keys
from bench.data import get_data_info
from bench.env import resolve_device
from bench.models import MODELS, build_model, num_params
from bench.tracking import finish_logger, training_logger

from .fit import fit
from .module import DiffusionModule
from .store import cached_model_dir, load_model_dir, models_root, write_model_dir
from .vae import load_or_train_vae


def _train_info(cfg, path: Path, meta: dict, cached: bool) -> dict:
    return {"model_key": keys.model_key(cfg), "path": str(path), "train_steps": int(meta["train_steps"]),
            "train_seconds": float(meta["train_seconds"]), "cached": cached, "num_params": int(meta["num_params"])}


def load_or_train(cfg) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode with EMA weights on ``cfg.device``, train_info) — from the cache, or trained and cached.

    train_info (a dict; ``info`` is always the data's DataInfo): model_key, path, train_steps, train_seconds,
    cached, num_params. ``model.pretrained`` set → that model, loaded and never trained (cached=True,
    train_steps=0). ``distill.*`` is ignored: the distilled students of this
    model are :func:`bench.distill.load_or_distill`'s (``bench.pipeline`` picks which one a cell samples)."""
    info = get_data_info(cfg.data)
    device = resolve_device(cfg.device)
    key = keys.model_key(cfg)
    if cfg.model.get("pretrained") or MODELS[cfg.model.name].loaded:  # loaded (model=unet's pretrained, model=torch)
        model = build_model(cfg.model, info).eval().to(device)
        path = cfg.model.get("pretrained") or cfg.model.get("target")
        return model, {"model_key": key, "path": str(path), "train_steps": 0, "train_seconds": 0.0,
                       "cached": True, "num_params": num_params(model)}
    latent = MODELS[cfg.model.name].latent
    vae, vae_info = load_or_train_vae(cfg) if latent else (None, {})  # the first stage, trained (and cached) first

    def make() -> DiffusionModule:
        model = None
        if latent:  # its denoiser starts random (seeded by fit); its VAE is the trained one, frozen, and scaled
            model = build_model(cfg.model, info)
            model.vae.load_state_dict(vae.state_dict())
            model.scaling_factor.fill_(vae_info["vae_scaling_factor"])
        return DiffusionModule(cfg.model, cfg.objective, cfg.schedule, cfg.train, info, model=model)

    def train(work: Path) -> dict:
        logger = training_logger(cfg.tracker, Path(cfg.out_dir) / cfg.name, f"train-{key}", group=cfg.name,
                                 config={"model_key": key, **keys.model_key_config(cfg)})
        try:
            module = fit(make, cfg.data, cfg.train, cfg.trainer, work, logger=logger)
        finally:
            finish_logger(logger)
        return write_model_dir(module, cfg, info, work, **vae_info)

    final, meta, cached = cached_model_dir(models_root(cfg), key, train)
    return load_model_dir(final, cfg.model, info, device), _train_info(cfg, final, meta, cached=cached)



