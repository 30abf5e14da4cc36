"""Procedurally rendered coloured shapes at positions, with captions: a small text-to-image stand-in.

Class k = (colour, shape, position), 4 x 3 x 4 = 48 classes; caption "a red circle at the top left". Every item is
drawn from its own seeded generator, so the data set is a pure function of (split_seed, split, index). Each item's
mask (the pixels the shape covers at least half of, drawn with the image) is kept beside it: the control of a
ControlNet or T2I-Adapter.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .memory import InMemoryDataset

SHAPES_COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 215, 40)}
SHAPES_KINDS = ("circle", "square", "triangle")
SHAPES_POSITIONS = ("top left", "top right", "bottom left", "bottom right")
BACKGROUND = (16, 16, 24)
SUPERSAMPLE = 4  # draw at 4x, then box-downsample: antialiased edges
SIZE_RANGE = (0.55, 0.95)  # shape extent as a fraction of its quadrant's side
DEFAULT_NUM_TRAIN = 6000
_SPLIT_CODE = {"train": 0, "test": 1, "control": 2}
MASK_COVERAGE = 0.5  # a pixel is in a shape's mask when the shape covers at least half of it


def shapes_class(k: int) -> tuple[str, str, str]:
    """(colour, shape, position) of class ``k``; k = (colour * 3 + shape) * 4 + position."""
    colour, rest = divmod(int(k), len(SHAPES_KINDS) * len(SHAPES_POSITIONS))
    kind, position = divmod(rest, len(SHAPES_POSITIONS))
    return list(SHAPES_COLOURS)[colour], SHAPES_KINDS[kind], SHAPES_POSITIONS[position]


def shapes_classes_of(colour: str, kind: str) -> list[int]:
    """The classes of a ``colour`` ``kind`` (its four positions); [] when there is no such colour or shape."""
    if colour not in SHAPES_COLOURS or kind not in SHAPES_KINDS:
        return []
    first = (list(SHAPES_COLOURS).index(colour) * len(SHAPES_KINDS) + SHAPES_KINDS.index(kind)) * len(SHAPES_POSITIONS)
    return list(range(first, first + len(SHAPES_POSITIONS)))


def to_tensor(imgs: np.ndarray, channels: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, channels, H, W) in [-1, 1]; one channel: ITU-R 601 luma (PIL's "L")."""
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if int(channels) == 1:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x.contiguous()


def shapes_caption(k: int) -> str:
    colour, kind, position = shapes_class(k)
    return f"a {colour} {kind} at the {position}"


def render_shape(colour: str, kind: str, position: str, size: float, rng: np.random.Generator,
                 image_size: int = 16) -> np.ndarray:
    """One uint8 (H, W, 3) image: a ``colour`` ``kind`` of side ``size`` (fraction of its quadrant, 0..1) placed
    at a random offset (``rng``) inside the ``position`` quadrant of a dark background."""
    return draw_shape(colour, kind, position, size, rng, image_size)[0]


def draw_shape(colour: str, kind: str, position: str, size: float, rng: np.random.Generator,
               image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(:func:`render_shape`'s image, its coverage): float32 (H, W) in [0, 1], the fraction of each pixel the shape
    covers (its supersampled silhouette, box-downsampled as the image is). ``coverage >= MASK_COVERAGE`` is the mask."""
    side = image_size * SUPERSAMPLE
    quad = side / 2
    extent = float(np.clip(size, 0.05, 1.0)) * quad
    row, col = position.split()
    x0 = (quad if col == "right" else 0.0) + rng.uniform(0.0, quad - extent)
    y0 = (quad if row == "bottom" else 0.0) + rng.uniform(0.0, quad - extent)
    x1, y1 = x0 + extent, y0 + extent
    img = Image.new("RGB", (side, side), BACKGROUND)
    silhouette = Image.new("L", (side, side), 0)
    for canvas, fill in ((img, SHAPES_COLOURS[colour]), (silhouette, 255)):
        draw = ImageDraw.Draw(canvas)
        if kind == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif kind == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif kind == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"shape kind={kind!r} is not allowed: {' | '.join(SHAPES_KINDS)}")
    small = (image_size, image_size)
    coverage = np.asarray(silhouette.resize(small, Image.Resampling.BOX), dtype=np.float32) / 255.0
    return np.asarray(img.resize(small, Image.Resampling.BOX)), coverage


def shapes_item(split_seed: int, split: str, i: int, label: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) of item ``i`` of ``split`` drawn as class ``label``: uint8 (H, W, 3) and bool (H, W). ``split``
    "control" is a third stream of the same distribution, for the controls a cell is sampled with."""
    rng = np.random.default_rng([int(split_seed), _SPLIT_CODE[split], int(i)])
    colour, kind, position = shapes_class(label)
    img, coverage = draw_shape(colour, kind, position, rng.uniform(*SIZE_RANGE), rng, image_size)
    return img, coverage >= MASK_COVERAGE


class ShapesDataset(InMemoryDataset):
    """Item i has class i % 48 (balanced), size and offset from ``default_rng([split_seed, split, i])``."""

    num_classes = len(SHAPES_COLOURS) * len(SHAPES_KINDS) * len(SHAPES_POSITIONS)

    @staticmethod
    def num_items(data_cfg, split: str) -> int:
        n = int(data_cfg.num_train) or DEFAULT_NUM_TRAIN
        return n if split == "train" else max(1, int(round(n * data_cfg.test_fraction)))

    def __init__(self, data_cfg, split: str):
        n, size = self.num_items(data_cfg, split), int(data_cfg.image_size)
        self.y = torch.arange(n, dtype=torch.int64) % self.num_classes
        imgs = np.empty((n, size, size, 3), np.uint8)
        masks = np.empty((n, 1, size, size), bool)
        for i in range(n):
            imgs[i], masks[i, 0] = shapes_item(data_cfg.split_seed, split, i, int(self.y[i]), size)
        self.x = to_tensor(imgs, int(data_cfg.channels))
        self.masks = torch.from_numpy(masks)  # (n, 1, H, W) bool: item i's mask
