"""The first stage of a latent family (Rombach et al. 2022): its AutoencoderKL trained on the data (or a pretrained
one loaded), measured (scaling factor, reconstruction PSNR) and stored like a model under its own key
(:func:`bench.keys.vae_key`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from bench import keys
from bench.data import build_dataset, get_data_info
from bench.env import resolve_device
from bench.models import build_vae, num_params
from bench.models.latent import latent_info
from bench.utils import atomic_write_json, atomic_write_text, config_hash

from .fit import fit
from .module import VAEModule
from .store import cached_model_dir, load_model_dir, models_root, write_model_dir


@torch.no_grad()
def vae_stats(vae, data_cfg, seed: int = 0, batch_size: int = 256) -> dict:
    """vae_scaling_factor = 1 / std(z), z ~ q(z | x) (seeded) over the train split, so the latents the denoiser sees
    have unit variance (how SD's 0.18215 was measured, Rombach et al. 2022 §G); vae_psnr = 10 log10(2² / MSE) of
    D(mode q(z | x)) against the held-out split (images in [-1, 1]; one MSE over every pixel), in dB."""
    vae = vae.eval()
    dev = next(vae.parameters()).device  # wherever training left it (a GPU): the data comes to it
    g = torch.Generator(device=dev).manual_seed(seed)
    z = [vae.encode(x.to(dev)).latent_dist.sample(generator=g).double()
         for x, _ in torch.utils.data.DataLoader(build_dataset(data_cfg, "train"), batch_size=batch_size)]
    sq, n = 0.0, 0
    for x, recon in held_out_reconstructions(vae, data_cfg, batch_size):
        sq += float((recon.double() - x.double()).pow(2).sum())
        n += x.numel()
    return {"vae_scaling_factor": float(1 / torch.cat(z).std()), "vae_psnr": float(10 * np.log10(4 / (sq / n)))}


@torch.no_grad()
def held_out_reconstructions(vae, data_cfg, batch_size: int = 256):
    """(x, D(mode q(z | x))) per batch of the held-out split, on the VAE's device: what its PSNR and its
    reconstruction FID (bench.pipeline.model_columns) are measured on."""
    dev = next(vae.parameters()).device
    for x, _ in torch.utils.data.DataLoader(build_dataset(data_cfg, "test"), batch_size=batch_size):
        x = x.to(dev)
        yield x, vae.decode(vae.encode(x).latent_dist.mode()).sample


def load_or_train_vae(cfg) -> tuple[torch.nn.Module, dict]:
    """(the latent family's AutoencoderKL in eval mode on ``cfg.device``, info: vae_key, vae_path, vae_scaling_factor,
    vae_psnr, vae_train_steps, vae_train_seconds, vae_num_params). ``model.vae`` set: that VAE, measured once and its
    measurements cached; else trained (:class:`VAEModule`) on the train split and cached like a model."""
    info = get_data_info(cfg.data)
    key_cfg = keys.vae_key_config(cfg)
    key = config_hash(key_cfg)
    m = cfg.model

    def train(work: Path) -> dict:
        if m.vae:
            work.mkdir(parents=True, exist_ok=True)
            vae = build_vae(m, info)
            atomic_write_text(work / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(key_cfg)))
            meta = {"model_key": key, "train_steps": 0, "train_seconds": 0.0, "num_params": num_params(vae),
                    "data_id": info.id, "network": "autoencoder_kl", **vae_stats(vae, cfg.data)}
            atomic_write_json(work / "meta.json", meta)  # no weights here: they are model.vae's, keyed by content
            return meta
        settings = OmegaConf.create(keys.vae_train(cfg))
        module = fit(lambda: VAEModule(cfg, info, build_vae(m, info), settings, m.vae_kl_weight), cfg.data, settings,
                     cfg.trainer, work)
        return write_model_dir(module, cfg, info, work, key=key, config=key_cfg, network="autoencoder_kl",
                               **vae_stats(module.ema, cfg.data))

    path, meta, _ = cached_model_dir(models_root(cfg), key, train)
    device = resolve_device(cfg.device)
    vae = build_vae(m, info).eval().to(device) if m.vae else load_model_dir(path, m, info, device,
                                                                           model=build_vae(m, info))
    return vae, {"vae_key": key, "vae_path": str(path), "vae_scaling_factor": float(meta["vae_scaling_factor"]),
                 "vae_psnr": float(meta["vae_psnr"]), "vae_train_steps": int(meta["train_steps"]),
                 "vae_train_seconds": float(meta["train_seconds"]), "vae_num_params": int(meta["num_params"])}


def latent_columns(cfg, vae_info: dict) -> dict:
    """A latent family's row columns: latent_shape and its VAE's key, reconstruction PSNR, scaling factor, size and
    training steps, from ``vae_info`` (:func:`load_or_train_vae`'s)."""
    info = get_data_info(cfg.data)
    return {"latent_shape": list(latent_info(cfg.model, info).shape),
            **{k: vae_info[k] for k in ("vae_key", "vae_psnr", "vae_scaling_factor", "vae_num_params",
                                        "vae_train_steps")}}
