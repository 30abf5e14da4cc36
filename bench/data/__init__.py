"""Data sets: toy2d (exact 2-D distributions), digits (scikit-learn 8x8), shapes (captioned renders), folder.

One entry point per question: :func:`get_data_info` (what the data looks like, cheap), :func:`build_dataset`
(the items), :func:`sample_true` (toy2d's exact sampler), :class:`BenchDataModule` (training batches).
Items are ``(x, y)``: ``x`` float32, CHW images in [-1, 1] or (2,) toy points (standardised, ~unit std), ``y`` int64
label or -1 (unlabelled). Labels stay in the items even when ``data.class_conditional`` is false; only
``DataInfo.num_classes`` (what the model is conditioned on) drops to 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

from torch.utils.data import Dataset

from bench.schema import ConfigError
from bench.utils import config_hash

from .datamodule import BenchDataModule, MirroredDataset, StepBatchSampler
from .digits import DigitsDataset
from .folder import FolderDataset, scan_folder
from .shapes import (SHAPES_COLOURS, SHAPES_KINDS, SHAPES_POSITIONS, ShapesDataset, render_shape,
                     shapes_caption, shapes_class)
from .toy2d import PointsDataset, sample_true

DATA_NAMES = ("toy2d", "digits", "folder", "shapes")
SPLITS = ("train", "test")

__all__ = ["DataInfo", "get_data_info", "build_dataset", "sample_true", "BenchDataModule", "StepBatchSampler",
           "MirroredDataset", "SHAPES_COLOURS", "SHAPES_KINDS", "SHAPES_POSITIONS", "shapes_caption",
           "shapes_class", "render_shape", "DATA_NAMES"]


@dataclass
class DataInfo:
    kind: str  # "points" | "images"
    shape: Tuple[int, ...]  # one item's x: (2,) or (C, H, W)
    num_classes: int  # classes the model is conditioned on; 0 = unconditional
    class_names: List[str] = field(default_factory=list)  # the data set's label names (shapes: captions)
    id: str = ""  # e.g. "digits-8px-c1"; names reference statistics


def _split_suffix(data_cfg) -> str:
    """Non-default split settings change the items, so they must change the id (reference stats are keyed by it)."""
    parts = []
    if data_cfg.test_fraction != 0.2:
        parts.append(f"tf{data_cfg.test_fraction:g}")
    if data_cfg.split_seed != 0:
        parts.append(f"s{data_cfg.split_seed}")
    return "".join(f"-{p}" for p in parts)


def get_data_info(data_cfg) -> DataInfo:
    """Shape, classes and id of the data set named by ``data_cfg`` (without building it, except folder scans)."""
    name = data_cfg.name
    cond = bool(data_cfg.class_conditional)
    size, ch = int(data_cfg.image_size), int(data_cfg.channels)
    if name == "toy2d":
        if data_cfg.toy not in ("moons", "gmm"):
            raise ConfigError("data.toy", data_cfg.toy, "moons | gmm")
        return DataInfo("points", (2,), 0, [], f"toy2d-{data_cfg.toy}")
    if name == "digits":
        _check_channels(ch)
        names = [str(d) for d in range(10)]
        cap = f"-n{data_cfg.num_train}" if data_cfg.num_train else ""
        return DataInfo("images", (ch, size, size), 10 if cond else 0, names,
                        f"digits-{size}px-c{ch}{cap}{_split_suffix(data_cfg)}")
    if name == "shapes":
        _check_channels(ch)
        names = [shapes_caption(k) for k in range(len(SHAPES_COLOURS) * len(SHAPES_KINDS) * len(SHAPES_POSITIONS))]
        n = ShapesDataset.num_items(data_cfg, "train")
        return DataInfo("images", (ch, size, size), len(names) if cond else 0, names,
                        f"shapes-{size}px-c{ch}-n{n}{_split_suffix(data_cfg)}")
    if name == "folder":
        _check_channels(ch)
        files, classes = scan_folder(data_cfg.path)
        cap = f"-n{data_cfg.num_train}" if data_cfg.num_train else ""
        crop = "" if data_cfg.center_crop else "-nocrop"
        root_id = config_hash(str(data_cfg.path), n=8)
        return DataInfo("images", (ch, size, size), len(classes) if (cond and classes) else 0, classes,
                        f"folder-{root_id}-{size}px-c{ch}{crop}{cap}{_split_suffix(data_cfg)}")
    raise ConfigError("data.name", name, " | ".join(DATA_NAMES))


def _check_channels(ch: int) -> None:
    if ch not in (1, 3):
        raise ConfigError("data.channels", ch, "1 (grey) | 3 (RGB)")


def build_dataset(data_cfg, split: str) -> Dataset:
    """The ``split`` ("train" | "test") items of the data set: deterministic given ``data_cfg``, un-augmented.

    Training adds horizontal flips (``data.hflip``) on top, see :class:`MirroredDataset`.
    """
    if split not in SPLITS:
        raise ConfigError("split", split, " | ".join(SPLITS))
    name = data_cfg.name
    get_data_info(data_cfg)  # validates name / toy / channels with one-line errors
    if name == "toy2d":
        return PointsDataset(data_cfg, split)
    if name == "digits":
        return DigitsDataset(data_cfg, split)
    if name == "shapes":
        return ShapesDataset(data_cfg, split)
    return FolderDataset(data_cfg, split)
