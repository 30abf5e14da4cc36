"""An image folder (optionally one sub-folder per class), loaded lazily with PIL.

Decoding is exact for every PIL mode a folder may hold, or the file is refused by name: 16-bit grey (``I;16*``,
``I``) is scaled 65535 -> 255 (``convert("L")`` would clip it to solid white); palette images go through their
palette; an alpha channel (``LA``, ``RGBA``, ``PA``, palette transparency) is composited over a **white** background
(transparent pixels' colour values are arbitrary, so dropping alpha would be undefined); CMYK, YCbCr and HSV convert
to RGB with PIL's formulas; float images (``F``) have no defined range and are refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from bench.schema import ConfigError
from bench.utils import files_fingerprint

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
    if len(files) < 2:
        raise ConfigError("data.path", str(path), allowed + " with at least 2 images",
                          "it holds 1 image: a train and a held-out split need two or more")
    return files, classes


FULL_HASH_MAX_BYTES = 64 << 20  # folders up to 64 MiB are fingerprinted by content, larger ones by size + mtime


def folder_fingerprint(path, files: list[tuple[str, int]]) -> str:
    """What a folder's keys are made of, so that replacing its images under the same ``data.path`` makes new keys
    (model, cell, reference statistics): :func:`bench.utils.files_fingerprint` of every image by relative name and
    label; by content up to FULL_HASH_MAX_BYTES in all (copies with new mtimes keep their keys), else by size and
    mtime (a file rewritten with the same size and mtime is not seen: touch it, or use a new folder)."""
    root = Path(path)
    return files_fingerprint([(f"{Path(f).relative_to(root).as_posix()}\0{k}", Path(f)) for f, k in files],
                             FULL_HASH_MAX_BYTES)


def _refuse(path, why: str):
    return ConfigError("data.path", str(path), "a folder of readable 8- or 16-bit images", f"{path}: {why}")


def decode_image(path, mode: str) -> Image.Image:
    """The image at ``path`` as 8-bit ``mode`` ("L" or "RGB"), decoded as described in the module docstring."""
    try:
        im = Image.open(path)
        im.load()  # decode now: a truncated file fails here, naming the file, not later inside a batch
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _refuse(path, f"cannot be decoded ({type(e).__name__}: {e})".splitlines()[0]) from None
    src = im.mode
    if src in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise _refuse(path, f"mode {src} holds values outside 0..65535")
        im = Image.fromarray(np.round(a / 257.0).astype(np.uint8), "L")
    elif src == "F":
        raise _refuse(path, "mode F (32-bit float) has no defined intensity range")
    elif src == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif src == "PA":
        im = im.convert("RGBA")
    elif src in ("CMYK", "YCbCr", "HSV"):
        im = im.convert("RGB")
    elif src not in ("1", "L", "LA", "RGB", "RGBA", "La", "RGBa"):
        raise _refuse(path, f"PIL mode {src} is not supported (convert it to 8/16-bit grey or RGB)")
    if im.mode in ("LA", "RGBA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert(mode)


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
        with decode_image(path, self.mode) as im:
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
