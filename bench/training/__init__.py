"""Training: diffusion objectives (``objectives``), the Lightning module, the model cache (``load_or_train``) and the
noise-aware classifier of classifier guidance (``load_or_train_classifier``, same cache)."""
from . import objectives
from .classifier import ClassifierModule, classifier_key, load_or_train_classifier
from .cache import (cached_model_dir, fit, key_config, held_out_reconstructions, latent_columns, load_model_dir,
                    load_or_train, load_or_train_vae, model_key, models_root, partial_dir, write_model_dir,
                    TrainingStopped)
from .module import DiffusionModule, VAEModule

__all__ = ["objectives", "DiffusionModule", "fit", "load_or_train", "load_model_dir", "model_key", "key_config",
           "partial_dir", "cached_model_dir", "models_root", "write_model_dir", "TrainingStopped", "ClassifierModule",
           "classifier_key", "load_or_train_classifier", "VAEModule", "load_or_train_vae", "latent_columns",
           "held_out_reconstructions"]
