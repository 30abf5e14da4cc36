"""Training: diffusion objectives (``objectives``), the Lightning module (``module``) and runner (``fit``), the model
store (``store``), a latent family's first stage (``vae``), the denoiser a config names (``denoiser``) and the
noise-aware classifier of classifier guidance (``classifier``). What each stored model's key hashes is
``bench.keys``'."""
from . import objectives
from .classifier import ClassifierModule, load_or_train_classifier
from .denoiser import load_or_train
from .fit import TrainingStopped, check_trainer, fit, processes
from .module import DiffusionModule, VAEModule
from .store import (
                    ModelCacheError,
                    cached_model_dir,
                    load_model_dir,
                    models_root,
                    partial_dir,
                    read_meta,
                    write_model_dir,
)
from .vae import held_out_reconstructions, latent_columns, load_or_train_vae

__all__ = ["objectives", "DiffusionModule", "fit", "check_trainer", "processes", "load_or_train", "load_model_dir",
           "partial_dir", "cached_model_dir", "models_root", "read_meta", "write_model_dir", "ModelCacheError",
           "TrainingStopped", "ClassifierModule", "load_or_train_classifier", "VAEModule", "load_or_train_vae",
           "latent_columns", "held_out_reconstructions"]
