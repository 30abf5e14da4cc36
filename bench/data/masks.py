"""Masks as controls (ControlNet, T2I-Adapter): the masks a cell is sampled with, the mask an image shows, and how
closely one follows the other.

- :func:`control_masks`: image i of a cell (label y_i, seed + i) is steered by the mask of a shape of class y_i drawn
  from the data set's "control" stream (the training distribution, never its items);
- :func:`extract_masks`: the shapes annotator: the pixels an image's shape covers at least half of, found from the
  known background and palette (on the data set's own RGB items it returns their drawn masks exactly);
- :func:`iou_f1`: control fidelity per image, IoU and F1 (Dice) of the control mask and the extracted one.
"""
from __future__ import annotations

import torch

from bench.schema import ConfigError

from .shapes import BACKGROUND, MASK_COVERAGE, SHAPES_COLOURS, SUPERSAMPLE, shapes_item

MASKED = ("shapes",)  # data sets whose items are drawn with a mask (one so far: no registry field for it)
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as the shapes set's grey items
TOP_PIXELS = 4  # the image's colour: the palette entry nearest to its strongest pixels' mean
# a drawn pixel's coverage comes in steps of 1 / SUPERSAMPLE² (its covered sub-pixels); uint8 rounding moves the
# estimate from an image by far less than half a step, so half a step below MASK_COVERAGE separates them exactly
THRESHOLD = MASK_COVERAGE - 0.5 / SUPERSAMPLE**2


def check_masks(data_cfg, key: str, value) -> None:
    """A control needs a data set whose items have masks: else one ConfigError on ``key``."""
    if data_cfg.name not in MASKED:
        raise ConfigError(key, value, f"a data set drawn with masks (data={' | '.join(MASKED)})",
                          f"data={data_cfg.name} has no masks to use as the control")


def control_masks(data_cfg, labels: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """Float (B, 1, H, W) masks in {0, 1}: row j is a shape of class ``labels[j]`` drawn from the "control" stream
    with seed ``seeds[j]`` (a cell's image i: seed + i)."""
    size = int(data_cfg.image_size)
    masks = [shapes_item(data_cfg.split_seed, "control", int(s), int(y), size)[1]
             for y, s in zip(labels.tolist(), seeds.tolist())]
    return torch.stack([torch.from_numpy(m) for m in masks])[:, None].float()


def _palette(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(background (C,), shape colours minus background (K, C)) in model space [-1, 1], RGB or luma."""
    bg = torch.tensor(BACKGROUND, dtype=torch.float64) / 127.5 - 1
    colours = torch.tensor(list(SHAPES_COLOURS.values()), dtype=torch.float64) / 127.5 - 1
    if channels == 1:
        w = torch.tensor(LUMA, dtype=torch.float64)
        bg, colours = (bg * w).sum(0, keepdim=True), (colours * w).sum(1, keepdim=True)
    return bg, colours - bg


def extract_masks(x: torch.Tensor) -> torch.Tensor:
    """Bool (B, 1, H, W): the pixels of each image (float (B, C, H, W) in [-1, 1], C = 3 or 1) whose shape coverage
    is at least ``MASK_COVERAGE``. A pixel covering a fraction c of a shape of colour k is bg + c (colour_k - bg), so
    c = <x - bg, colour_k - bg> / |colour_k - bg|²; k is the palette colour nearest to the image's strongest pixels."""
    bg, palette = _palette(x.shape[1])
    d = x.double() - bg.view(1, -1, 1, 1)
    flat = d.flatten(2)  # (B, C, HW)
    top = flat.norm(dim=1).topk(min(TOP_PIXELS, flat.shape[2]), dim=1).indices
    strong = torch.gather(flat, 2, top[:, None, :].expand(-1, flat.shape[1], -1)).mean(2)
    colour = palette[torch.cdist(strong, palette).argmin(1)]  # (B, C)
    coverage = (d * colour[:, :, None, None]).sum(1, keepdim=True) / colour.pow(2).sum(1).view(-1, 1, 1, 1)
    return coverage >= THRESHOLD


def iou_f1(control: torch.Tensor, extracted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image IoU |A ∩ B| / |A ∪ B| and F1 2 |A ∩ B| / (|A| + |B|) of two (B, 1, H, W) masks (nonzero = in the
    mask), float64 (B,); both 1 where both masks are empty."""
    a, b = control.flatten(1) != 0, extracted.flatten(1) != 0
    inter = (a & b).sum(1).double()
    union = (a | b).sum(1).double()
    sizes = a.sum(1).double() + b.sum(1).double()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    f1 = torch.where(sizes > 0, 2 * inter / sizes.clamp(min=1), torch.ones_like(sizes))
    return iou, f1
