"""The data registry (``conf/data/<name>.yaml`` ↔ one entry): what each data set looks like and its items.

:func:`get_data_info` (shape, classes, id; cheap) and :func:`build_dataset` (the items) dispatch through ``DATA``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset, default_collate

from bench.registry import Entry, Registry
from bench.schema import ConfigError

from .digits import DigitsDataset
from .folder import FolderDataset, folder_fingerprint, scan_folder
from .shapes import SHAPES_COLOURS, SHAPES_KINDS, SHAPES_POSITIONS, ShapesDataset, shapes_caption
from .standard import SETS, StandardDataset, fingerprint, locate
from .toy2d import TOYS, PointsDataset

SPLITS = ("train", "test")


@dataclass
class DataInfo:
    kind: str  # "points" | "images"
    shape: tuple[int, ...]  # one item's x: (2,) or (C, H, W)
    num_classes: int  # classes the model is conditioned on; 0 = unconditional
    class_names: list[str] = field(default_factory=list)  # the data set's label names (shapes: captions)
    id: str = ""  # e.g. "digits-8px-c1"; names reference statistics
    classes: tuple[int, ...] | None = None  # data.classes: the only labels its items have (None: all)


def _split_suffix(data_cfg) -> str:
    """Non-default split settings change the items, so they must change the id (reference stats are keyed by it)."""
    parts = []
    if data_cfg.test_fraction != 0.2:
        parts.append(f"tf{data_cfg.test_fraction:g}")
    if data_cfg.split_seed != 0:
        parts.append(f"s{data_cfg.split_seed}")
    return "".join(f"-{p}" for p in parts)


def _check_channels(ch: int) -> None:
    if ch not in (1, 3):
        raise ConfigError("data.channels", ch, "1 (grey) | 3 (RGB)")


def _toy2d_info(d) -> DataInfo:
    if d.toy not in TOYS:
        raise ConfigError("data.toy", d.toy, " | ".join(TOYS))
    return DataInfo("points", (2,), 0, [], f"toy2d-{d.toy}")


def _digits_info(d) -> DataInfo:
    size, ch = int(d.image_size), int(d.channels)
    _check_channels(ch)
    cap = f"-n{d.num_train}" if d.num_train else ""
    return DataInfo("images", (ch, size, size), 10 if d.class_conditional else 0, [str(k) for k in range(10)],
                    f"digits-{size}px-c{ch}{cap}{_split_suffix(d)}")


def _shapes_info(d) -> DataInfo:
    size, ch = int(d.image_size), int(d.channels)
    _check_channels(ch)
    names = [shapes_caption(k) for k in range(len(SHAPES_COLOURS) * len(SHAPES_KINDS) * len(SHAPES_POSITIONS))]
    n = ShapesDataset.num_items(d, "train")
    return DataInfo("images", (ch, size, size), len(names) if d.class_conditional else 0, names,
                    f"shapes-{size}px-c{ch}-n{n}{_split_suffix(d)}")


def _folder_info(d) -> DataInfo:
    size, ch = int(d.image_size), int(d.channels)
    _check_channels(ch)
    files, classes = scan_folder(d.path)
    cap = f"-n{d.num_train}" if d.num_train else ""
    crop = "" if d.center_crop else "-nocrop"
    root_id = folder_fingerprint(d.path, files)  # by content: new images under the same path -> new keys
    return DataInfo("images", (ch, size, size), len(classes) if (d.class_conditional and classes) else 0, classes,
                    f"folder-{root_id}-{size}px-c{ch}{crop}{cap}{_split_suffix(d)}")


def _standard_info(d) -> DataInfo:
    size, ch = int(d.image_size), int(d.channels)
    _check_channels(ch)
    s = SETS[d.name]
    cap = f"-n{d.num_train}" if d.num_train else ""
    # published splits (test_fraction / split_seed have no effect); the files are parsed and fingerprinted here
    return DataInfo("images", (ch, size, size), len(s.classes) if d.class_conditional else 0, list(s.classes),
                    f"{d.name}-{fingerprint(d.name, locate(d.name, d))}-{size}px-c{ch}{cap}")


def _check_folder(cfg, info) -> None:
    if not cfg.data.path:
        raise ConfigError("data.path", cfg.data.path, "a directory of images (data.path=/path/to/images)")


@dataclass(frozen=True)
class DataSet(Entry):
    """``build(data_cfg, split)`` -> the items; ``info(data_cfg)`` -> :class:`DataInfo` (validates with one-line
    errors); ``check(cfg, info)`` runs before ``info`` (cheap config checks)."""

    info: Callable | None = None
    # the items live outside the config (a folder on disk): DataInfo.id fingerprints them and joins the model and
    # cell keys (data_key), so new contents under the same config make new keys
    content_keyed: bool = False


DATA = Registry("data", "data.name", {
    "toy2d": DataSet(PointsDataset, info=_toy2d_info),
    "digits": DataSet(DigitsDataset, info=_digits_info),
    "folder": DataSet(FolderDataset, _check_folder, info=_folder_info, content_keyed=True),
    "shapes": DataSet(ShapesDataset, info=_shapes_info),
    **{name: DataSet(StandardDataset, info=_standard_info, content_keyed=True) for name in SETS},
})


def data_key(data_cfg) -> dict:
    """What the model and cell keys add for the data beyond its config: {"content_id": DataInfo.id} for data sets
    whose items live on disk (folder, mnist, fashion_mnist, cifar10), {} for the built-in ones (their items follow
    from the config)."""
    if not DATA[data_cfg.name].content_keyed:
        return {}
    return {"content_id": get_data_info(data_cfg).id}


def get_data_info(data_cfg) -> DataInfo:
    """Shape, classes and id of the data set named by ``data_cfg`` (without building it, except folder scans and
    the standard sets' file checks); ``data.classes`` set: only those labels' items (the id says which)."""
    info = DATA[data_cfg.name].info(data_cfg)
    classes = data_cfg.get("classes")
    if classes is None:
        return info
    classes = check_classes(classes, info, "data.classes")
    return dataclasses.replace(info, id=f"{info.id}-cls{'.'.join(map(str, classes))}", classes=classes)


def check_classes(classes, info: DataInfo, key: str) -> tuple[int, ...]:
    """A subset of the data set's labels: a non-empty, increasing list of labels in [0, number of labels)."""
    n = len(info.class_names)
    classes = tuple(int(c) for c in classes)
    if not n:
        raise ConfigError(key, list(classes), "null", f"data {info.id} has no labels")
    if not classes or any(c < 0 or c >= n for c in classes) or list(classes) != sorted(set(classes)):
        raise ConfigError(key, list(classes), f"an increasing, non-empty list of labels in [0, {n - 1}] (or null)")
    return classes


class ClassSubset(Dataset):
    """The items of ``base`` (whose labels are ``base.y``) with a label in ``classes``, in their order."""

    def __init__(self, base, classes):
        self.base = base
        self.index = torch.nonzero(torch.isin(base.y, torch.as_tensor(classes))).flatten().tolist()
        self.y = base.y[self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        return self.base[self.index[i]]

    def get_batch(self, indices):
        idx = [self.index[i] for i in indices]
        get_batch = getattr(self.base, "get_batch", None)  # in-memory data: one indexing op
        return get_batch(idx) if get_batch is not None else default_collate([self.base[i] for i in idx])


def build_dataset(data_cfg, split: str) -> Dataset:
    """The ``split`` ("train" | "test") items of the data set: deterministic given ``data_cfg``, un-augmented.

    Training adds horizontal flips (``data.hflip``) on top, see :class:`MirroredDataset`.
    """
    if split not in SPLITS:
        raise ConfigError("split", split, " | ".join(SPLITS))
    info = get_data_info(data_cfg)  # validates name / toy / channels / classes with one-line errors
    ds = DATA[data_cfg.name].build(data_cfg, split)
    return ds if info.classes is None else ClassSubset(ds, info.classes)
