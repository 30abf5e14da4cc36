"""What a cell samples, behind one interface (k-diffusion's ``external.py`` idea): the harness's own models (every
family, distilled students, classifier-guided or not) and loaded diffusers pipelines answer the same calls, so the
cell, its sharded path and ``bench-perf`` never ask which kind they got.

- ``scheduler``: the diffusers scheduler it samples with (the cell writes its config to ``scheduler.json``);
- ``batches(call, cost, start, stop, progress)``: images ``start .. stop - 1`` of the cell described by ``call``
  (image i seeded ``call.seed + i``), one :class:`~bench.sampling.loop.Batch` per ``call.batch_size`` images;
- ``columns()``: what the row records about it (:class:`Provenance`: typed column groups, never free dicts);
- ``prompts_of(call)``: the prompt each image of the cell is scored against, when it has prompts (else None);
- ``to(device)``: itself on ``device`` (a sharded cell moves it to each rank's device);
- ``predictor()``: its model as one prediction call on any x_t (:class:`~bench.sampling.predictor.Predictor`), for
  tasks that start from real images (bench.tasks).

:func:`sampling_call` is the one place a cell's sampling request is built from its config.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from bench.metrics.cost import CostMeter
from bench.models import MODELS
from bench.results import Columns
from bench.sampling.loop import Batch, ClassifierGuidance, sample
from bench.sampling.predictor import OwnModelPredictor, Predictor


@dataclass(frozen=True)
class SamplingCall:
    """One cell's sampling request: images 0 .. ``num_samples`` - 1 of ``shape`` (image i seeded ``seed + i``, so
    nothing depends on the batch size or on how the images are split over processes). ``inference_mode``,
    ``channels_last`` and ``check_every_step`` are speed options of the harness's loop (bench.metrics.cost,
    ``bench-perf``); a loaded pipeline's own ``__call__`` ignores them."""

    shape: tuple
    num_samples: int
    batch_size: int
    seed: int
    num_inference_steps: int
    guidance_scale: float
    eta: float
    device: str
    inference_mode: bool = True
    channels_last: bool = False
    check_every_step: bool = False
    classes: tuple | None = None  # the labels images cycle through (image i: classes[i % len]); None: all
    # image-to-image (bench.sampling.img2img): image i starts from init[i] (data space) noised to ``strength``, and
    # is conditioned on class_labels[i] (else classes[i % len], else i % num_classes)
    init: Any = None
    strength: float = 1.0
    class_labels: tuple | None = None


def uses_channels_last(cost_cfg, model_cfg) -> bool:
    """``cost.channels_last`` applies to the families whose registry entry says so (the convolutional UNet)."""
    return bool(cost_cfg.channels_last and MODELS[model_cfg.name].channels_last)


def sampling_call(sampling_cfg, sampler_cfg, cost_cfg, metric_cfg, model_cfg, info, device: str) -> SamplingCall:
    """The cell's :class:`SamplingCall`: ``sampling.num_samples`` x ``metric.repeats`` images (repeat r = images
    [r N, (r + 1) N): disjoint per-image seeds) of the data's shape, labelled by its classes (``info.classes``)."""
    s = sampling_cfg
    return SamplingCall(shape=tuple(info.shape), num_samples=int(s.num_samples) * int(metric_cfg.repeats),
                        batch_size=int(s.batch_size), seed=int(s.seed), num_inference_steps=int(s.num_inference_steps),
                        guidance_scale=float(s.guidance_scale), eta=float(sampler_cfg.eta), device=str(device),
                        inference_mode=bool(cost_cfg.inference_mode),
                        channels_last=uses_channels_last(cost_cfg, model_cfg), classes=info.classes)


@dataclass(frozen=True)
class Provenance:
    """What the row records about the sampled model: the objective, schedule and timestep spacing it was sampled on
    (a loaded checkpoint's own) and its typed column groups (:class:`bench.results.Columns`)."""

    objective: str
    schedule: str
    timestep_spacing: str
    groups: tuple[Columns, ...] = ()


class Subject(Protocol):
    """What a cell samples (see the module docstring)."""

    scheduler: Any

    def batches(self, call: SamplingCall, cost: CostMeter, start: int = 0, stop: int | None = None,
                progress: bool = False) -> Iterator[Batch]: ...

    def columns(self) -> Provenance: ...

    def prompts_of(self, call: SamplingCall) -> list | None: ...

    def to(self, device) -> Subject: ...

    def predictor(self) -> Predictor: ...


@dataclass(frozen=True)
class _Cycle:
    """Image i's label ``classes[i % len(classes)]``: a class subset in the loop's ``i % num_classes`` order."""

    classes: tuple

    def __getitem__(self, i: int) -> int:
        return self.classes[i % len(self.classes)]


@dataclass
class Denoiser:
    """The harness's own model (any family, a distilled student) sampled by the one loop (:func:`sample`) with
    ``scheduler``; ``guide``: classifier guidance in the loop; ``num_classes``: the model's own conditioning;
    ``control``: each image's control map (a ControlNet or T2I-Adapter on the model), ``control(labels, seeds)``."""

    model: nn.Module
    scheduler: Any
    num_classes: int
    provenance: Provenance
    guide: ClassifierGuidance | None = None
    control: Callable | None = None

    def batches(self, call: SamplingCall, cost: CostMeter, start: int = 0, stop: int | None = None,
                progress: bool = False) -> Iterator[Batch]:
        stop = call.num_samples if stop is None else stop
        return sample(self.model, self.scheduler, shape=call.shape, num_samples=stop - start,
                      batch_size=call.batch_size, seed=call.seed, num_inference_steps=call.num_inference_steps,
                      guidance_scale=call.guidance_scale, num_classes=self.num_classes, device=call.device, cost=cost,
                      eta=call.eta, progress=progress, inference_mode=call.inference_mode,
                      channels_last=call.channels_last, check_every_step=call.check_every_step, start=start,
                      classifier_guidance=self.guide, control=self.control, init=call.init,
                      strength=call.strength,
                      class_labels=(call.class_labels if call.class_labels is not None
                                    else None if call.classes is None else _Cycle(call.classes)))

    def columns(self) -> Provenance:
        return self.provenance

    def prompts_of(self, call: SamplingCall) -> None:
        return None  # class labels, not prompts: the scorer maps them to captions itself

    def to(self, device) -> Denoiser:
        self.model.to(device)
        if self.guide is not None:
            self.guide.classifier.to(device)
        return self

    def predictor(self) -> OwnModelPredictor:
        return OwnModelPredictor(self.model, self.num_classes)

