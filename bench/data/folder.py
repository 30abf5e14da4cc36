"""An image folder (optionally one sub-folder per class), loaded lazily with PIL."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench.schema import ConfigError

from .splits import split_indices

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _images_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def scan_folder(path) -> tuple[list[tuple[str, int]], list[str]]:
    """([(file, label)], class_names): class sub-folders (sorted) are labels; otherwise every image is -1."""
    allowed = "an image folder (" + "|".join(f"*{e}" for e in IMAGE_EXTS) + ")"
    if not path or not os.path.isdir(path):
        raise ConfigError("data.path", path, allowed, "it is not a directory; point data.path at an image folder")
    root = Path(path)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and _images_under(d))
    if classes:
        files = [(str(f), k) for k, c in enumerate(classes) for f in _images_under(root / c)]
    else:
        files = [(str(f), -1) for f in _images_under(root)]
    if not files:
        raise ConfigError("data.path", str(path), allowed, "it contains no images; point data.path at an image folder")
    return files, classes


class FolderDataset(Dataset):
    """Centre crop (``data.center_crop``) → bicubic resize to ``data.image_size`` → RGB/L by ``data.channels``."""

    def __init__(self, data_cfg, split: str):
        files, self.class_names = scan_folder(data_cfg.path)
        labels = np.array([k for _, k in files])
        idx = split_indices(labels, split, data_cfg.test_fraction, data_cfg.split_seed, int(data_cfg.num_train))
        self.files = [files[i][0] for i in idx]
        self.y = torch.from_numpy(labels[idx].astype(np.int64))
        self.size, self.center_crop = int(data_cfg.image_size), bool(data_cfg.center_crop)
        self.mode = "L" if int(data_cfg.channels) == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.files)

    def load(self, path: str) -> torch.Tensor:
        with Image.open(path) as im:
            im = im.convert(self.mode)
            if self.center_crop:
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            im = im.resize((self.size, self.size), Image.Resampling.BICUBIC)
            a = np.asarray(im, dtype=np.float32)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return torch.from_numpy(a.copy()) / 127.5 - 1.0

    def __getitem__(self, i):
        return self.load(self.files[i]), self.y[i]
