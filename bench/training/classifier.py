"""The noise-aware classifier of classifier guidance (Dhariwal & Nichol 2021, §4), trained by the harness on noised
training images (a latent family's: on their latents, z = scaling · z_q, z_q ~ q(z | x) of its cached VAE) and cached
like a model: same Lightning runner (:func:`fit.fit`), same store, lock, resume and sha256-checked weights
(:func:`store.cached_model_dir`, :func:`store.load_model_dir`), under its own key
(:func:`bench.keys.classifier_key`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import keys
from bench.data import get_data_info
from bench.env import resolve_device
from bench.models import MODELS, num_params
from bench.models.classifier import NoisyClassifier
from bench.models.latent import encode_latent, latent_info
from bench.utils import config_hash

from . import objectives as obj
from .fit import fit
from .module import DiffusionModule
from .store import cached_model_dir, load_model_dir, models_root, write_model_dir
from .vae import load_or_train_vae


class ClassifierModule(DiffusionModule):
    """Cross-entropy of ``NoisyClassifier(x_t, t)`` against each image's label, x_t = alpha x0 + sigma eps at a random
    noise level of the objective's forward process (:func:`objectives.sample_noise_level`: DDPM t ~ U{0..T-1}, or
    flow's shifted sigma), so it has seen every x_t a sampler will show it. EMA, warm-up, per-step seeded randomness
    and exact resume are DiffusionModule's; ``cfg.classifier`` plays the part of ``cfg.train``. ``first_stage``: a
    latent family's frozen encoder (:class:`FirstStage`): x0 is then the image's scaled latent, as the denoiser's is."""

    def __init__(self, cfg, info, first_stage: FirstStage | None = None):
        super().__init__(cfg.model, cfg.objective, cfg.schedule, cfg.classifier, info,
                         model=NoisyClassifier.from_config(cfg.classifier, input_info(cfg, info)))
        self.first_stage = first_stage

    def drop_labels(self, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return y  # a classifier learns every label (CFG's dropout is the denoiser's)

    def compute_loss(self, x0: torch.Tensor, labels, g: torch.Generator) -> torch.Tensor:
        if self.first_stage is not None:
            x0 = self.first_stage(x0, g)
        t, alpha, sigma = obj.sample_noise_level(self.objective_cfg.name, self.schedule_cfg, x0.shape[0], g,
                                                 x0.device, self.alphas_cumprod)
        eps = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        return F.cross_entropy(self.model(obj.add_noise(x0, eps, alpha, sigma), t).float(), labels)


class FirstStage(torch.nn.Module):
    """A latent family's frozen VAE as the classifier's encoder: x → scaling · z_q, z_q ~ q(z | x) (the step's
    generator), the latent its denoiser is trained on (LatentDenoiser.encode)."""

    def __init__(self, vae, scaling_factor: float):
        super().__init__()
        self.vae, self.scaling_factor = vae.eval().requires_grad_(False), float(scaling_factor)

    def forward(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return encode_latent(self.vae, x, self.scaling_factor, g)


def input_info(cfg, info):
    """What the classifier sees: the data's images, or a latent family's latents (:func:`latent_info`)."""
    return latent_info(cfg.model, info) if MODELS[cfg.model.name].latent else info


def load_or_train_classifier(cfg) -> tuple[torch.nn.Module, dict]:
    """(classifier in eval mode on ``cfg.device``, info: classifier_key, path, train_steps, train_seconds, cached,
    num_params) — from the model cache, or trained on ``cfg.data``'s train split and cached there."""
    info = get_data_info(cfg.data)
    key_cfg = keys.classifier_key_config(cfg)
    key = config_hash(key_cfg)

    def train(work) -> dict:
        first_stage = None
        if MODELS[cfg.model.name].latent:  # the family's VAE (trained and cached first, as for its denoiser)
            vae, vae_info = load_or_train_vae(cfg)
            first_stage = FirstStage(vae, vae_info["vae_scaling_factor"])
        module = fit(lambda: ClassifierModule(cfg, info, first_stage), cfg.data, cfg.classifier, cfg.trainer, work)
        return write_model_dir(module, cfg, info, work, key=key, config=key_cfg, network="noisy_classifier")

    path, meta, cached = cached_model_dir(models_root(cfg), key, train)
    model = load_model_dir(path, cfg.model, info, resolve_device(cfg.device),
                           model=NoisyClassifier.from_config(cfg.classifier, input_info(cfg, info)))
    return model, {"classifier_key": key, "path": str(path), "train_steps": int(meta["train_steps"]),
                   "train_seconds": float(meta["train_seconds"]), "cached": cached, "num_params": num_params(model)}
