"""What every task on real images shares: its held-out images (:func:`held_out`), what the model is conditioned on
(:func:`condition_of`), the checks every such task makes (:func:`check_real_images`, :func:`check_target`), how an
output image is compared with its real one (:func:`image_scores`) and what its row records (:class:`TaskResult`,
:class:`bench.results.TaskColumns`)."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from bench.data import build_dataset
from bench.metrics.scorer import SCORES
from bench.models import MODELS, diffusers_checkpoint as ckpt
from bench.results import Columns, TaskColumns
from bench.schema import ConfigError

SPLITS = ("test", "train")
PSNR_MAX_DB = 100.0  # an image identical to its reference (MSE 0) counts as 100 dB rather than +inf
SSIM_SIGMA = 1.5  # SSIM's Gaussian window (Wang et al. 2004; torchmetrics' default)


@dataclass
class TaskResult:
    """What a task's runner hands back to the cell: its scores, its cost (bench.metrics.cost's columns) and the typed
    column groups it adds to the row (:class:`bench.results.TaskColumns` first)."""

    scores: dict
    cost: dict
    columns: tuple[Columns, ...] = ()


@dataclass
class RealImages:
    """One batch of held-out real images: ``x`` float32 (B, C, H, W) in the data's [-1, 1]; ``labels`` int64 (B,) the
    class each image is conditioned on (None: the model has no class condition); ``captions`` each image's caption
    (text-conditioned models); ``index`` their positions 0 .. N - 1 in the task's image set."""

    x: torch.Tensor
    labels: torch.Tensor | None
    index: torch.Tensor
    captions: list[str] | None = None


def condition_of(cfg, info) -> str | None:
    """What the model of ``cfg`` is conditioned on: "text" (captions: text_unet, a text-to-image pipeline), "class"
    (class labels of the data set) or None (unconditional)."""
    if cfg.model.name == "pipeline":
        return "text" if ckpt.read_checkpoint(cfg.model).takes_prompt else None
    if not info.num_classes:
        return None
    return "text" if MODELS[cfg.model.name].text else "class"


def held_out(cfg, info, batch_size: int) -> Iterator[RealImages]:
    """The task's images, batch by batch: the first ``task.num_images`` items of ``task.split`` (the split is a seeded
    shuffle, stratified by class: a class-balanced draw), with the condition the model takes for each."""
    ds = build_dataset(cfg.data, cfg.task.split)
    n, cond = int(cfg.task.num_images), condition_of(cfg, info)
    for i0 in range(0, n, batch_size):
        items = [ds[i] for i in range(i0, min(i0 + batch_size, n))]
        x = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x, _ in items])
        y = torch.as_tensor([int(y) for _, y in items], dtype=torch.long)
        labels = y if cond is not None and (y >= 0).all() else None
        captions = [info.class_names[k] for k in y.tolist()] if cond == "text" and labels is not None else None
        yield RealImages(x, labels, torch.arange(i0, i0 + len(items)), captions)


def task_columns(cfg) -> TaskColumns:
    return TaskColumns(task=cfg.task.name, real_split=cfg.task.split, num_real_images=int(cfg.task.num_images))


def task_call(call, cfg):
    """The cell's sampling call for a task: its images are the task's ``num_images`` real ones."""
    return dataclasses.replace(call, num_samples=int(cfg.task.num_images))


def check_real_images(cfg, info) -> None:
    """Every task on real images: image data (not toy2d's points), a known split holding ``task.num_images`` images,
    one pass over them (metric.repeats = 1) in one process. Each a one-line ConfigError."""
    t = cfg.task
    if info.kind != "images":
        raise ConfigError("task", t.name, f"generate for data={cfg.data.name}",
                          f"{t.name} starts from real images; data {info.id} is {info.kind}")
    if t.split not in SPLITS:
        raise ConfigError("task.split", t.split, " | ".join(SPLITS))
    have = len(build_dataset(cfg.data, t.split))
    if t.num_images > have:
        raise ConfigError("task.num_images", t.num_images, f"at most {have}",
                          f"the {t.split} split of data {info.id} holds {have} images")
    if cfg.sampling.get("classes") is not None:
        raise ConfigError("sampling.classes", cfg.sampling.classes, f"null with task={t.name}",
                          "its images are the held-out split's, every class of it")
    if int(cfg.sampling.devices) != 1:
        raise ConfigError("sampling.devices", cfg.sampling.devices, f"1 with task={t.name}",
                          "a task on real images runs in one process")
    if int(cfg.metric.repeats) != 1:
        raise ConfigError("metric.repeats", cfg.metric.repeats, f"1 with task={t.name}",
                          "the real images are one fixed set: there are no seed blocks to repeat over")


def check_scores(cfg, task: str, computes: tuple[str, ...] = ()) -> None:
    """The scores beyond FID (``metric.<name>``, :data:`bench.metrics.scorer.SCORES`) that ``task`` computes: one
    switched on that it does not compute is refused (a one-line ConfigError), never silently left out of the row."""
    for name in SCORES:
        if cfg.metric.get(name) and name not in computes:
            allowed = f"false with task={task}" + (f" (it computes {', '.join(computes)})" if computes else "")
            raise ConfigError(f"metric.{name}", True, allowed, f"task={task} does not compute {name}")


def check_target(cfg, info) -> None:
    """``task.target``: ``same`` (each image's own condition), a class index of a class-conditional model, or a
    caption of a text-conditioned one (on captioned data: one of its captions). One-line ConfigError naming what the
    model is conditioned on."""
    target, cond = str(cfg.task.target), condition_of(cfg, info)
    if target == "same":
        return
    if cond is None:
        raise ConfigError("task.target", target, f"same for model={cfg.model.name} on data {info.id}",
                          "the model is unconditional: it has no condition to edit towards")
    if cond == "class":
        ok = target.isdigit() and int(target) < info.num_classes
        if not ok:
            raise ConfigError("task.target", target, f"same or a class index 0..{info.num_classes - 1}",
                              f"model={cfg.model.name} is conditioned on the {info.num_classes} classes of {info.id}")
    elif not target.strip():
        raise ConfigError("task.target", target, "same or a non-empty caption")


def image_scores(preds: torch.Tensor, target: torch.Tensor, kernel_size: int = 11) -> dict[str, torch.Tensor]:
    """Per-image scores (each (B,), float64) of ``preds`` against ``target``, both (B, C, H, W) intensities in [0, 1]:
    ``mse``, ``l2`` (Euclidean distance), ``psnr`` (dB, at most :data:`PSNR_MAX_DB`) and ``ssim`` (torchmetrics,
    Gaussian window sigma = :data:`SSIM_SIGMA` of ``kernel_size`` pixels, data range 1). The one pixel comparison of
    every task (an edit to its input, a reconstruction to its real image); each task records its kernel size."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim  # lazy: slow import

    a, b = preds.double(), target.double()
    mse = (a - b).pow(2).flatten(1).mean(1)
    return {"mse": mse, "l2": (a - b).flatten(1).norm(dim=1),
            "psnr": 10 * torch.log10(1 / mse.clamp(min=10 ** (-PSNR_MAX_DB / 10))),
            "ssim": ssim(a, b, gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=int(kernel_size), data_range=1.0,
                         reduction="none")}
