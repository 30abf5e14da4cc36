"""SDEdit (Meng et al. 2022, "SDEdit: guided image synthesis and editing with stochastic differential equations"):
noise a held-out real image x0 to strength s in (0, 1] of the model's forward process and denoise it with a target
condition; a realism–faithfulness trade controlled by s (the paper's Fig. 3).

- **Timesteps as diffusers' img2img** (``StableDiffusionImg2ImgPipeline.get_timesteps``): of the sampler's
  ``num_inference_steps`` = S timesteps the last ``int(S · s)`` are run, from x_t = ``scheduler.add_noise(x0, eps,
  t_start)``, eps drawn from image i's own generator (seed + i) as a generated image's initial noise is. The
  denoising is the cell's one sampling loop (:class:`bench.sampling.subject.Subject`, :mod:`bench.sampling.img2img`),
  so NFE, latency and every sampler come with it. A loaded pipeline (``model=pipeline``) is edited through its own
  components and scheduler as diffusers' ``StableDiffusionImg2ImgPipeline`` runs it (:func:`pipeline_edits`).
- **Targets** (``task.target``): ``same`` (each input's own condition; the only one of an unconditional model: a
  pure realism–faithfulness trade), a class index ``k`` or a caption of the data set (every input edited into it),
  or on captioned shapes an attribute value: a colour (``red``), a shape (``circle``) or a position (``top left``),
  each input's caption with that attribute replaced. An input already of its target is edited all the same.
- **Scores**: realism, FID/KID of the edits against the reference split's images *of the target classes* (the
  cell's feature network, the cached reference features restricted by label); faithfulness, L2 / PSNR / SSIM to the
  input (torchmetrics, on the quantised images in [0, 1]); edit success, the evaluator's classifier accuracy on the
  target class (the digits CNN's logits, the CLIP's zero-shot logits over the captions) and, on captioned data, the
  CLIP score to the target caption and the CLIP directional similarity of diffusers' evaluation guide,
  cos(E_I(edit) - E_I(input), E_T(target caption) - E_T(source caption)) on unit embeddings.
"""
from __future__ import annotations

import dataclasses
import inspect
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from bench.artifacts import save_npz, write_grid
from bench.data import SHAPES_COLOURS, SHAPES_KINDS, SHAPES_POSITIONS, build_dataset, shapes_class
from bench.evaluators import load_clip, load_feature_net
from bench.images import quantize_uint8, to_uint8_nhwc
from bench.metrics import distances
from bench.metrics.cost import CostMeter
from bench.metrics.fd_inf import fd_infinity
from bench.metrics.prdc import prdc
from bench.metrics.refstats import SUBSET_SEED, get_reference
from bench.metrics.scorer import check_fd_inf_n
from bench.metrics.stats import FeatureStats
from bench.models import diffusers_checkpoint as ckpt
from bench.sampling.img2img import img2img_timesteps, noise_to
from bench.sampling.loop import Batch, NonFiniteError
from bench.sampling.rng import image_generators, initial_noise
from bench.schema import ConfigError

from .common import (
    SSIM_SIGMA,
    TaskResult,
    check_scores,
    check_target,
    condition_of,
    held_out,
    image_scores,
    task_columns,
)

SAME = "same"
ATTRIBUTES = {"colour": tuple(SHAPES_COLOURS), "shape": SHAPES_KINDS, "position": SHAPES_POSITIONS}
SSIM_KERNEL = 11  # SSIM's Gaussian window on every image size (recorded in the row: edit_ssim_kernel)


# ------------------------------------------------------------------------------------------------------ targets

def _captioned(cfg, info) -> bool:
    """Captioned shapes: captions made of (colour, shape, position), the ones the offline CLIP knows."""
    return cfg.data.name == "shapes" and len(info.class_names) == len(SHAPES_COLOURS) * len(SHAPES_KINDS) * len(
        SHAPES_POSITIONS)


def attribute(target) -> tuple[str, str] | None:
    """(attribute, value) of an attribute target (``red``: the colour; ``circle``: the shape; ``top left``: the
    position; the values are distinct across attributes), else None."""
    return next(((a, str(target)) for a, values in ATTRIBUTES.items() if str(target) in values), None)


def check_edit_target(cfg, info) -> None:
    """``task.target`` as :func:`bench.tasks.common.check_target` allows it, where a caption must be one of the data
    set's (the harness's text families are conditioned on those), or an attribute value of captioned shapes
    (``red``, ``circle``, ``top left``). One-line ConfigError."""
    target, cond = str(cfg.task.target), condition_of(cfg, info)
    captioned = _captioned(cfg, info)
    values = " | ".join(v for vs in ATTRIBUTES.values() for v in vs)
    if attribute(target) is not None:
        if cond is None or not captioned:
            raise ConfigError("task.target", target, "an attribute value on captioned shapes with a conditional model",
                              f"model={cfg.model.name} on data {info.id} has no shapes captions to edit")
        return
    if cond == "text" or (captioned and cond == "class" and not target.isdigit() and target != SAME):
        if target != SAME and target not in info.class_names:
            raise ConfigError("task.target", target, f"same, a caption of {info.id} or an attribute value: {values}",
                              f"model={cfg.model.name} is conditioned on the {info.num_classes} captions of {info.id}")
        return
    check_target(cfg, info)


def target_labels(target, labels: torch.Tensor, info) -> torch.Tensor:
    """The target class of each input of class ``labels``. An input already of the target (a 3 edited into a 3, a
    red shape recoloured red) keeps it: SDEdit runs on it all the same, and it counts in every score."""
    target = str(target)
    if target == SAME:
        return labels.clone()
    if target.isdigit() or target in info.class_names:
        return torch.full_like(labels, int(target) if target.isdigit() else info.class_names.index(target))
    attr, value = attribute(target)
    out = []
    for y in labels.tolist():
        parts = dict(zip(ATTRIBUTES, shapes_class(y)), **{attr: value})
        c, s, p = (ATTRIBUTES[a].index(parts[a]) for a in ATTRIBUTES)
        out.append((c * len(SHAPES_KINDS) + s) * len(SHAPES_POSITIONS) + p)
    return torch.as_tensor(out, dtype=torch.int64)


# ------------------------------------------------------------------------------------------------------- scores

def target_reference(cfg, info, net, classes) -> tuple[np.ndarray, dict]:
    """The reference split's features (the cell's cached reference statistics, ``metric.reference_split``) of the
    images whose class is in ``classes`` (None: all of them, what an unconditional model's edits should look like):
    the distribution a realistic edit comes from, and its provenance."""
    ref = get_reference(cfg, info, net)
    if ref.features is None:
        raise ConfigError("metric.reference_stats", cfg.metric.reference_stats, "unset for task=edit",
                          "its realism is scored against the target classes' images, which imported mu/sigma lack")
    meta = {"ref_id": ref.meta["ref_id"], "ref_hash": ref.meta["ref_hash"], "n_ref": int(ref.n),
            "reference_split": ref.meta["split"]}
    if classes is None:
        return ref.features, meta
    ds = build_dataset(cfg.data, ref.meta["split"])
    y = torch.as_tensor(ds.y)
    n = int(cfg.metric.num_reference)
    if n:  # the same subset refstats.compute_reference drew
        y = y[torch.randperm(len(ds), generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].sort().values]
    classes = sorted({int(c) for c in classes})
    keep = np.isin(y.numpy(), classes)
    if len(y) != len(ref.features) or keep.sum() < 2:
        raise ConfigError("task.target", cfg.task.target, "classes with at least 2 reference images",
                          f"{ref.meta['ref_id']} has {int(keep.sum())} of classes {classes}")
    names = ",".join(map(str, classes)) if len(classes) <= 12 else f"{len(classes)} classes"
    return ref.features[keep], dict(meta, ref_id=f"{ref.meta['ref_id']}:classes={names}", n_ref=int(keep.sum()))


def faithfulness(edit_u8: torch.Tensor, input_u8: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image L2 (Euclidean, pixels in [0, 1], as SDEdit's Table 1), PSNR and SSIM
    (:func:`bench.tasks.common.image_scores`, window :data:`SSIM_KERNEL`) of the edit to its input, both quantised as
    a saved PNG holds them."""
    s = image_scores(edit_u8.double() / 255, input_u8.double() / 255, kernel_size=SSIM_KERNEL)
    return {k: s[k] for k in ("l2", "psnr", "ssim")}


EDIT_SCORES = ("prdc", "fd_inf")  # the scores beyond FID an edit computes (on its edits' features, as FID)


class EditScorer:
    """Scores of one SDEdit cell, streamed: ``update(edits, inputs, source, target)`` per batch, ``compute()``."""

    def __init__(self, cfg, info, classes):
        self.cfg, self.info, self.m = cfg, info, cfg.metric
        self.net = load_feature_net(cfg, info)
        self.ref_feats, self.ref_meta = target_reference(cfg, info, self.net, classes)
        self.clip = None
        if _captioned(cfg, info) and classes is not None:  # captions: CLIP score and directional similarity
            self.clip = self.net if self.net.name == "clip" else load_clip(cfg, info)
            self.text = F.normalize(self.clip.encode_text(list(info.class_names)).double(), dim=-1)
        self.feats: list[np.ndarray] = []
        self.per_image: dict[str, list[torch.Tensor]] = {}

    def _add(self, name: str, values: torch.Tensor) -> None:
        self.per_image.setdefault(name, []).append(values.detach().double().cpu())

    def update(self, edits: torch.Tensor, inputs: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> None:
        e8, i8 = quantize_uint8(edits.cpu()), quantize_uint8(inputs.cpu())
        feats, logits = self.net(e8)
        self.feats.append(feats.detach().double().cpu().numpy())
        for name, v in faithfulness(e8, i8).items():
            self._add(name, v)
        if target is None:  # an unconditional model: no class to succeed at
            return
        if logits is not None and logits.shape[1] == self.info.num_classes:
            self._add("accuracy", (logits.argmax(1).cpu() == target).double())
            _, real_logits = self.net(i8)
            self._add("source_accuracy", (real_logits.argmax(1).cpu() == source).double())
        if self.clip is not None:
            img_e = F.normalize(self.clip(e8)[0].double(), dim=-1)
            self._add("clip_score", distances.clip_score(img_e, self.text[target]))
            moved = target != source
            if moved.any():
                img_i = F.normalize(self.clip(i8[moved])[0].double(), dim=-1)
                d_txt = self.text[target[moved]] - self.text[source[moved]]
                self._add("clip_direction", F.cosine_similarity(img_e[moved] - img_i, d_txt, dim=-1))

    def compute(self) -> dict:
        feats = np.concatenate(self.feats)
        if len(feats) < 2:
            raise ValueError(f"edit scorer got {len(feats)} edits; need at least 2")
        m, out = self.m, {"feature_net": self.net.name, "feature_net_hash": self.net.weights_hash,
                          "resize": self.net.resize, "n_gen": len(feats), **self.ref_meta}
        if m.fid:
            gen = FeatureStats.from_features(feats, keep_features=False)
            ref = FeatureStats.from_features(self.ref_feats, keep_features=False)
            out.update(fid=distances.frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma), fid_n=len(feats))
        if m.kid:
            k, k_std, size = distances.kid(feats, self.ref_feats, int(m.kid_subsets), int(m.kid_subset_size),
                                           int(m.seed))
            out.update(kid=k, kid_std=k_std, kid_std_over="subsets", kid_subset_size=size)
        # beyond FID, against the same target reference: quality vs diversity of the edits, FID at N = infinity
        if m.prdc:
            out.update(prdc(self.ref_feats, feats, int(m.pr_k), int(m.dc_k)))
        if m.fd_inf:
            ref = FeatureStats.from_features(self.ref_feats, keep_features=False)
            out.update(fd_infinity(feats, ref.mu, ref.sigma, int(m.fd_inf_points), int(m.seed)))
        for name, parts in self.per_image.items():
            v = torch.cat(parts)
            col = name if name.startswith("clip_") else f"edit_{name}"
            # an accuracy is k / N exactly: 6 decimals keep a table's last digit off a rounding tie (121/128)
            out[col] = round(float(v.mean()), 6) if name.endswith("accuracy") else float(v.mean())
            out[f"{col}_std"] = float(v.std()) if len(v) > 1 else 0.0
        if "edit_ssim" in out:
            out["edit_ssim_kernel"] = f"gaussian sigma={SSIM_SIGMA} size={SSIM_KERNEL}"
        if self.clip is not None and self.clip is not self.net:
            out.update(clip_net=self.clip.name, clip_net_hash=self.clip.weights_hash)
        return out


def strength_steps(num_inference_steps: int, strength: float) -> int:
    """Denoising steps SDEdit runs: int(S · s) (diffusers' img2img), at least one for a valid configuration."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def check_strength(strength: float, num_inference_steps: int) -> None:
    """At least one denoising step (its range, (0, 1], is the schema's bound)."""
    if strength_steps(num_inference_steps, float(strength)) < 1:
        raise ConfigError("task.strength", strength, f">= 1/sampling.num_inference_steps = "
                          f"{1 / num_inference_steps:g}", f"int({num_inference_steps} x {strength:g}) = 0 denoising "
                          f"steps")


# --------------------------------------------------------------------------------------------------------- task

CONTROL_ADAPTERS = ("controlnet", "t2i_adapter")


def check_pipeline(cfg, info) -> None:
    """``model=pipeline``: edited through its own UNet (and VAE, text encoder), so a UNet pipeline with no control
    branch; a text-to-image one needs captioned data (its condition is each image's caption). One-line ConfigError."""
    c = ckpt.read_checkpoint(cfg.model)
    if c.denoiser != "unet":
        raise ConfigError("model.path", cfg.model.path, "a pipeline denoising with a UNet with task=edit",
                          f"{c.pipeline_class} denoises with its {c.denoiser}; the edit calls the pipeline's own unet")
    if cfg.adapter.kind in CONTROL_ADAPTERS:
        raise ConfigError("adapter", cfg.adapter.kind, "none, lora or full with task=edit on model=pipeline",
                          "the edit calls the pipeline's unet, not its control branch")
    if c.takes_prompt and not (info.num_classes and info.class_names):
        raise ConfigError("model.path", cfg.model.path, f"an unconditional pipeline on data {info.id}",
                          f"{c.pipeline_class} is conditioned on captions and {info.id} has none")


def check(cfg, info) -> None:
    """SDEdit's own settings, before any work: a strength in (0, 1] that runs at least one step, a target the model's
    conditioning can express, a pipeline the edit can reach through its components. Each a one-line ConfigError."""
    check_strength(cfg.task.strength, int(cfg.sampling.num_inference_steps))
    check_scores(cfg, "edit", EDIT_SCORES)
    if cfg.metric.fd_inf:
        check_fd_inf_n(cfg, int(cfg.task.num_images), "edited images (task.num_images)", "task.num_images")
    if cfg.model.name == "pipeline":
        check_pipeline(cfg, info)
    check_edit_target(cfg, info)


def pipeline_edits(subject, call, captions: list | None, meter: CostMeter) -> Iterator[Batch]:
    """SDEdit on a loaded pipeline through its own components (:meth:`LoadedPipeline.predictor`) and its scheduler
    (the checkpoint's config with the configured sampler), as diffusers' ``StableDiffusionImg2ImgPipeline`` runs it:
    image i (generator seed + i) is encoded by the VAE (z = scaling_factor · z_q, z_q ~ q(z | x) from the generator;
    pixel pipelines: z = x), noised with the generator's next draw to the first of the last int(S · s) timesteps, and
    denoised on them, conditioned on ``captions[i]`` (CFG as the pipeline's own: one 2B forward). One :class:`Batch`
    of decoded edits in [-1, 1] per ``call.batch_size`` images; NonFiniteError on NaN/Inf."""
    pred, scheduler, S = subject.predictor(), subject.scheduler, call.num_inference_steps
    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {"eta": call.eta} if "eta" in step_params else {}
    scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
    device, n = call.device, len(call.init)
    for i0 in range(0, n, call.batch_size):
        i1 = min(i0 + call.batch_size, n)
        gens = image_generators(call.seed, i0, i1)
        if "generator" in step_params:
            step_kwargs["generator"] = gens
        with meter.batch(i1 - i0), torch.inference_mode() if call.inference_mode else torch.no_grad():
            scheduler.set_timesteps(S, device=device)
            timesteps = img2img_timesteps(scheduler, S, call.strength)
            z0 = pred.encode(call.init[i0:i1].to(device), gens)
            z = noise_to(scheduler, z0, initial_noise(gens, z0.shape[1:]).to(device, z0.dtype), timesteps[0])
            cond = pred.condition(None, None if captions is None else captions[i0:i1])
            for k, t in enumerate(timesteps):
                out = pred.output(scale(z, t), t.float().expand(len(z)), cond, call.guidance_scale, meter)
                z = scheduler.step(out, t, z, **step_kwargs).prev_sample
                if not torch.isfinite(z).all():
                    raise NonFiniteError(k, float(t), len(timesteps))
            x = pred.decode(z).clamp(-1, 1).to("cpu", torch.float32, copy=True)
        yield Batch(x=x, labels=None, index=torch.arange(i0, i1))


def _edits(cfg, subject, call, captions, meter, progress: bool = False) -> Iterator[Batch]:
    """The edits of ``call``: a loaded pipeline's through its components, every other subject's own loop."""
    if cfg.model.name == "pipeline":
        return pipeline_edits(subject, call, captions, meter)
    return subject.batches(call, meter, progress=progress)


def run(cfg, info, subject, call, work_dir) -> TaskResult:
    """Edit the task's held-out images at ``task.strength`` towards ``task.target`` through the subject's own
    sampling (image i: its image noised with seed + i), score each batch as it arrives; write the input/edit grid."""
    t, c = cfg.task, cfg.cost
    real = list(held_out(cfg, info, call.batch_size))
    x0 = torch.cat([r.x for r in real])
    source = torch.cat([r.labels for r in real]) if real[0].labels is not None else None
    target = target_labels(t.target, source, info) if source is not None else None
    edit_call = dataclasses.replace(call, init=x0, strength=float(t.strength),
                                    class_labels=tuple(target.tolist()) if target is not None else None)
    classes = sorted(set(target.tolist())) if target is not None else None
    captions = None  # a text-to-image pipeline's prompts: the target captions
    if cfg.model.name == "pipeline" and target is not None and condition_of(cfg, info) == "text":
        captions = [info.class_names[k] for k in target.tolist()]
    scorer = EditScorer(cfg, info, classes)
    meter = CostMeter(call.device, c.warmup_batches, c.min_timed_batches)
    score_s, kept = 0.0, []
    for batch in _edits(cfg, subject, edit_call, captions, meter, bool(cfg.trainer.enable_progress_bar)):
        t0 = time.perf_counter()
        i = batch.index
        scorer.update(batch.x, x0[i], None if source is None else source[i], None if target is None else target[i])
        score_s += time.perf_counter() - t0
        kept.append(batch.x.cpu())
    t0 = time.perf_counter()
    scores = scorer.compute()
    score_s += time.perf_counter() - t0
    for _ in range(c.repeats - 1):  # re-time the sampling only; the edits are the ones already scored
        again = CostMeter(call.device, c.warmup_batches)
        for _ in _edits(cfg, subject, edit_call, captions, again):
            pass
        meter.add_timing(again)
    edits = torch.cat(kept)
    pairs = min(len(edits), max(1, cfg.sampling.grid_size // 2))
    write_grid(work_dir / "grid.png", to_uint8_nhwc(torch.stack([x0[:pairs], edits[:pairs]], 1).flatten(0, 1)))
    if cfg.sampling.save_samples:
        save_npz(work_dir / "samples.npz", images=to_uint8_nhwc(edits), inputs=to_uint8_nhwc(x0))
    cost = {**meter.summary(), "score_s": score_s, "inference_mode": bool(c.inference_mode),
            "channels_last": call.channels_last}
    return TaskResult(scores, cost, (task_columns(cfg),))
