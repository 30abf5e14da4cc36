"""Training: diffusion objectives (``objectives``), the Lightning module, and the model cache (``load_or_train``)."""
from . import objectives
from .cache import fit, key_config, load_model_dir, load_or_train, model_key, partial_dir
from .module import DiffusionModule

__all__ = ["objectives", "DiffusionModule", "fit", "load_or_train", "load_model_dir", "model_key", "key_config",
           "partial_dir"]
