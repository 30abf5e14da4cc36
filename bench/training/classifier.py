"""The noise-aware classifier of classifier guidance (Dhariwal & Nichol 2021, §4), trained by the harness on noised
training images and cached like a model: same Lightning runner (:func:`cache.fit`), same cache directory, key, lock,
resume and sha256-checked weights (:func:`cache.cached_model_dir`, :func:`cache.load_model_dir`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.data import data_key, get_data_info
from bench.env import resolve_device
from bench.models import num_params
from bench.models.classifier import NoisyClassifier
from bench.utils import config_hash, to_plain

from . import objectives as obj
from .cache import NOT_IN_KEY, cached_model_dir, fit, load_model_dir, models_root, write_model_dir
from .module import DiffusionModule


class ClassifierModule(DiffusionModule):
    """Cross-entropy of ``NoisyClassifier(x_t, t)`` against each image's label, x_t = alpha x0 + sigma eps at a random
    noise level of the objective's forward process (:func:`objectives.sample_noise_level`: DDPM t ~ U{0..T-1}, or
    flow's shifted sigma), so it has seen every x_t a sampler will show it. EMA, warm-up, per-step seeded randomness
    and exact resume are DiffusionModule's; ``cfg.classifier`` plays the part of ``cfg.train``."""

    def __init__(self, cfg, info):
        super().__init__(cfg.model, cfg.objective, cfg.schedule, cfg.classifier, info,
                         model=NoisyClassifier.from_config(cfg.classifier, info))

    def drop_labels(self, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return y  # a classifier learns every label (CFG's dropout is the denoiser's)

    def compute_loss(self, x0: torch.Tensor, labels, g: torch.Generator) -> torch.Tensor:
        t, alpha, sigma = obj.sample_noise_level(self.objective_cfg.name, self.schedule_cfg, x0.shape[0], g,
                                                 x0.device, self.alphas_cumprod)
        eps = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        return F.cross_entropy(self.model(obj.add_noise(x0, eps, alpha, sigma), t).float(), labels)


def classifier_key_config(cfg) -> dict:
    """What changes the classifier's weights: the data (folders by content), the forward process it is noised with
    (schedule; the diffusion or the flow path) and ``classifier.*``. Not the denoiser: one classifier guides them
    all."""
    data = {k: v for k, v in to_plain(cfg.data).items() if k not in NOT_IN_KEY["data"]}
    data.update(data_key(cfg.data))
    return {"network": "noisy_classifier", "data": data, "schedule": to_plain(cfg.schedule),
            "path": "flow" if cfg.objective.name == "flow" else "diffusion", "classifier": to_plain(cfg.classifier)}


def classifier_key(cfg) -> str:
    return config_hash(classifier_key_config(cfg))


def load_or_train_classifier(cfg) -> tuple[torch.nn.Module, dict]:
    """(classifier in eval mode on ``cfg.device``, info: classifier_key, path, train_steps, train_seconds, cached,
    num_params) — from the model cache, or trained on ``cfg.data``'s train split and cached there."""
    info = get_data_info(cfg.data)
    key, key_cfg = classifier_key(cfg), classifier_key_config(cfg)

    def train(work) -> dict:
        module = fit(lambda: ClassifierModule(cfg, info), cfg.data, cfg.classifier, cfg.trainer, work)
        return write_model_dir(module, cfg, info, work, key=key, config=key_cfg, network="noisy_classifier")

    path, meta, cached = cached_model_dir(models_root(cfg), key, train)
    model = load_model_dir(path, cfg.model, info, resolve_device(cfg.device),
                           model=NoisyClassifier.from_config(cfg.classifier, info))
    return model, {"classifier_key": key, "path": str(path), "train_steps": int(meta["train_steps"]),
                   "train_seconds": float(meta["train_seconds"]), "cached": cached, "num_params": num_params(model)}
