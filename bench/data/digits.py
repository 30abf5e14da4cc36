"""scikit-learn's 8x8 digits (1797 images, values 0..16, 10 classes) scaled to [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from .memory import InMemoryDataset
from .splits import split_indices


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with antialiasing (NCHW float); identity when already ``size``."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)


class DigitsDataset(InMemoryDataset):
    def __init__(self, data_cfg, split: str):
        d = load_digits()
        idx = split_indices(d.target, split, data_cfg.test_fraction, data_cfg.split_seed, int(data_cfg.num_train))
        x = torch.from_numpy(d.images[idx].astype(np.float32) / 16.0 * 2.0 - 1.0)[:, None]
        x = resize_images(x, int(data_cfg.image_size))
        if int(data_cfg.channels) == 3:
            x = x.repeat(1, 3, 1, 1)
        self.x = x.contiguous()
        self.y = torch.from_numpy(d.target[idx].astype(np.int64))
