"""Data sets: toy2d (exact 2-D distributions), digits (scikit-learn 8x8), shapes (captioned renders), folder,
mnist / fashion_mnist / cifar10 (torchvision's files on disk).

One entry point per question: :func:`get_data_info` (what the data looks like, cheap), :func:`build_dataset`
(the items), :func:`sample_true` (toy2d's exact sampler), :class:`BenchDataModule` (training batches); the
registry ``DATA`` (catalog.py) holds one entry per ``conf/data/<name>.yaml``.
Items are ``(x, y)``: ``x`` float32, CHW images in [-1, 1] or (2,) toy points (standardised, ~unit std), ``y`` int64
label or -1 (unlabelled). Labels stay in the items even when ``data.class_conditional`` is false; only
``DataInfo.num_classes`` (what the model is conditioned on) drops to 0.
"""
from .catalog import DATA, DataInfo, build_dataset, data_key, get_data_info
from .datamodule import BenchDataModule, MirroredDataset, StepBatchSampler
from .shapes import SHAPES_COLOURS, SHAPES_KINDS, SHAPES_POSITIONS, render_shape, shapes_caption, shapes_class
from .toy2d import sample_true

__all__ = ["DATA", "DataInfo", "data_key", "get_data_info", "build_dataset", "sample_true", "BenchDataModule",
           "StepBatchSampler", "MirroredDataset", "SHAPES_COLOURS", "SHAPES_KINDS", "SHAPES_POSITIONS",
           "shapes_caption", "shapes_class", "render_shape"]
