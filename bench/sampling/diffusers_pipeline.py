"""A local diffusers pipeline as a benchmark subject (``model=pipeline``): all adaptation to foreign models is here
(k-diffusion's ``external.py`` idea).

- **Scheduler from the checkpoint.** The configured sampler's diffusers class is built with
  ``from_config(<the checkpoint's scheduler config>, <the sampler's own algorithm knobs>)``, so prediction type, betas,
  flow shift and timestep spacing are the checkpoint's. ``objective=`` / ``schedule=`` other than ``auto`` must agree
  with it: a contradiction is a ConfigError, never a silent override.
- **Sampling through the pipeline's own ``__call__``** (no re-implementation of SDXL's added conditioning, SD3's joint
  attention or Flux's packing): batch by batch, one CPU generator per image seeded ``seed + i`` (the harness's
  convention: images do not depend on the batch size), ``callback_on_step_end`` checks the latents for NaN/Inf,
  the denoiser's ``forward`` is wrapped to count real model calls (CFG's batched pass counts 2 rows per image).
- **Guidance follows the model**: a pipeline whose ``__call__`` takes no ``guidance_scale`` samples at 1 only; a
  text pipeline applies CFG for scale > 1 (diffusers' ``do_classifier_free_guidance``), samples with the prompt at 1
  and with the empty prompt (the null condition) at 0; 0 < scale < 1 is refused (diffusers would ignore it).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bench import keys
from bench.data.prompts import PromptSet, load_prompts
from bench.metrics.cost import CostMeter, counting
from bench.models import diffusers_checkpoint as ckpt
from bench.models.diffusers_checkpoint import Checkpoint, read_checkpoint
from bench.results import ClassifierColumns, PipelineColumns
from bench.sampling.loop import Batch, NonFiniteError
from bench.sampling.predictor import PipelinePredictor
from bench.sampling.rng import image_generators
from bench.sampling.samplers import SAMPLERS, _err, lcm_grid
from bench.sampling.subject import Provenance, SamplingCall
from bench.schedule import SCHEDULES

# --------------------------------------------------------------------------------------------------- the scheduler

def _algorithm_kwargs(smp, objective: str, sched: dict, grid: int) -> dict:
    """The sampler's own knobs (solver order, Karras sigmas, DPM-Solver++'s algorithm); the schedule stays the
    checkpoint's. Flow checkpoints on dpmpp/unipc: diffusers' flow sigmas with the checkpoint's shift."""
    name = smp.name
    kw: dict = {}
    if name in ("dpmpp", "unipc", "deis"):
        kw["solver_order"] = smp.solver_order
    if name == "dpmpp":
        kw["algorithm_type"] = "dpmsolver++"
    if SAMPLERS[name].karras and objective != "flow":
        kw["use_karras_sigmas"] = smp.use_karras_sigmas
    if objective == "flow" and name in ("dpmpp", "unipc"):
        kw.update(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=sched.get("shift", 1.0))
    if name == "lcm":
        kw["original_inference_steps"] = grid
    return kw


def build_scheduler(sampler_cfg, checkpoint: Checkpoint, grid: int):
    """``SAMPLERS[sampler.name].cls.from_config(checkpoint scheduler config, **algorithm knobs)``; ``grid``: the LCM
    skip-step grid (:func:`bench.sampling.lcm_grid`)."""
    kw = _algorithm_kwargs(sampler_cfg, checkpoint.objective, checkpoint.scheduler, grid)
    return SAMPLERS[sampler_cfg.name].cls.from_config(checkpoint.scheduler, **kw)


# ------------------------------------------------------------------------------------------------------- checks

def _check_schedule(cfg, c: Checkpoint) -> None:
    s = cfg.schedule
    if s.name == "auto":
        return
    if c.objective == "flow":
        want = {"num_train_timesteps": s.num_train_timesteps, "shift": s.flow_shift}
    else:
        want = {"num_train_timesteps": s.num_train_timesteps, "beta_schedule": SCHEDULES[s.name].build,
                "beta_start": s.beta_start, "beta_end": s.beta_end}
    want = {k: v for k, v in want.items() if f"schedule.{k}" not in keys.without_effect(cfg)}  # cosine: no betas
    have = {k: c.scheduler.get(k) for k in want}
    diff = [f"{k}={have[k]}" for k in want if have[k] is not None and have[k] != want[k]]
    if diff:
        _err("schedule", s.name, f"auto (the checkpoint's own) or one matching it for model.path={cfg.model.path}",
             f"its scheduler config has {', '.join(diff)}; sampling it on another schedule would be silently wrong")


def check(cfg, info) -> None:
    """Every rule of ``model=pipeline`` (in place of the objective/schedule/sampler entries' own checks)."""
    m, s, smp = cfg.model, cfg.sampling, cfg.sampler
    if not m.path:
        _err("model.path", None, "a local pipeline directory or a cached hub id", "model=pipeline")
    c = read_checkpoint(m)
    if cfg.objective.name not in ("auto", c.objective):
        _err("objective", cfg.objective.name, f"auto or {c.objective} for model.path={m.path}",
             f"the checkpoint's scheduler says prediction_type={c.scheduler.get('prediction_type', 'epsilon')}"
             f" ({c.scheduler.get('_class_name')}); another objective would be a silent wrong sample")
    _check_schedule(cfg, c)
    entry = SAMPLERS[smp.name]
    if c.objective not in entry.objectives:
        ok = [n for n in SAMPLERS if c.objective in SAMPLERS[n].objectives]
        _err("sampler", smp.name, f"one of {', '.join(ok)} for this {c.objective} checkpoint ({c.pipeline_class})")
    T = int(c.scheduler.get("num_train_timesteps", 1000))
    if not 1 <= s.num_inference_steps <= T:
        _err("sampling.num_inference_steps", s.num_inference_steps, f"1..{T} (the checkpoint's num_train_timesteps)")
    if smp.eta != 0 and (smp.name != "ddim" or "eta" not in c.call_params):
        _err("sampler.eta", smp.eta, f"0 with sampler={smp.name} on {c.pipeline_class}",
             "its __call__ would ignore it while the row records it")
    g = float(s.guidance_scale)
    if "guidance_scale" not in c.call_params and g != 1:
        _err("sampling.guidance_scale", g, f"1 for {c.pipeline_class} (it takes no guidance)",
             "guidance needs a conditional model; this one would be sampled unguided at twice the recorded cost")
    if c.takes_prompt and 0 < g < 1:
        _err("sampling.guidance_scale", g, "0 (empty prompt), 1 (prompt, no CFG) or > 1 (CFG)",
             "diffusers applies CFG only above 1 and would silently ignore this value")
    if c.takes_prompt and cfg.prompts.name == "none":
        _err("prompts", "none", "shapes or file", f"{c.pipeline_class} is a text-to-image pipeline")
    if not c.takes_prompt and cfg.prompts.name != "none":
        _err("prompts", cfg.prompts.name, f"none for {c.pipeline_class}", "its __call__ takes no prompt")
    if "class_labels" in c.call_params:
        _err("model.path", m.path, "an unconditional or text-to-image pipeline",
             f"{c.pipeline_class} (class-conditional pipelines) is not supported yet")
    if c.sample_size is not None and c.sample_size != info.shape[-1]:
        _err("data.image_size", info.shape[-1], f"{c.sample_size} (the checkpoint's sample_size)",
             "its images are scored against this data set's reference")
    if info.shape[0] != 3:
        _err("data.channels", info.shape[0], "3 (pipelines produce RGB images)")
    if m.cpu_offload and not (cfg.device != "cpu" and torch.cuda.is_available()):
        _err("model.cpu_offload", True, "false without a CUDA device", "offload moves components to the GPU in turn")
    if m.dtype == "fp16" and not (cfg.device != "cpu" and torch.cuda.is_available()):
        _err("model.dtype", "fp16", "fp32 or bf16 on the CPU", "half-precision kernels are GPU kernels")
    if cfg.distill.method != "none":
        _err("distill", cfg.distill.method, "none with model=pipeline", "the harness distils its own models")
    if float(cfg.sampling.get("classifier_scale", 0.0) or 0.0) != 0:
        _err("sampling.classifier_scale", cfg.sampling.classifier_scale, "0 with model=pipeline")
    # the prompt set itself (file, column, data set) is the prompts registry entry's check (bench.data.prompts)


def check_pretrained(cfg, info) -> None:
    """``model.pretrained`` (a UNet the harness's own loop samples on objective= and schedule=): guidance needs the
    UNet's own class embedding, whatever the data set's labels; a pipeline directory's scheduler config must agree
    with objective= and schedule= (else a one-line error pointing at model=pipeline)."""
    root = Path(str(cfg.model.pretrained)).expanduser()
    conf = next((f for f in (root / "config.json", root / "unet" / "config.json") if f.is_file()), None)
    if conf is not None and not json.loads(conf.read_text()).get("num_class_embeds"):
        g = float(cfg.sampling.guidance_scale)
        if g != 1:
            _err("sampling.guidance_scale", g, f"1 for model.pretrained={cfg.model.pretrained} (an unconditional "
                 f"UNet)", "it has no class embedding: the data's labels would be ignored, the samples unguided "
                 "and the cost doubled")
    if not (root / "scheduler" / "scheduler_config.json").is_file():
        return
    sched = ckpt.scheduler_config(root)
    obj = ckpt.checkpoint_objective(sched)
    s = cfg.schedule
    theirs = {"objective": obj, "beta_schedule": sched.get("beta_schedule"), "beta_start": sched.get("beta_start"),
              "beta_end": sched.get("beta_end"), "num_train_timesteps": sched.get("num_train_timesteps")}
    ours = {"objective": cfg.objective.name, "beta_schedule": SCHEDULES[s.name].build if s.name != "auto" else None,
            "beta_start": s.beta_start, "beta_end": s.beta_end, "num_train_timesteps": s.num_train_timesteps}
    moot = keys.without_effect(cfg)  # cosine: no betas
    diff = [f"{k}={theirs[k]} (run: {ours[k]})" for k in theirs
            if theirs[k] is not None and theirs[k] != ours[k] and f"schedule.{k}" not in moot]
    if sched.get("clip_sample"):  # DDPMScheduler()'s default: the checkpoint's samples are clipped, the loop's not
        diff.append("clip_sample=True (run: the harness's samplers do not clip)")
    if diff:
        _err("model.pretrained", cfg.model.pretrained, "a checkpoint whose scheduler agrees with objective=/schedule=",
             f"its scheduler config has {'; '.join(diff)}: use model=pipeline model.path=... to sample it as saved")


# ----------------------------------------------------------------------------------------------------- the model

@dataclass
class LoadedPipeline:
    """A loaded pipeline with its checkpoint description, prompt set and the scheduler it samples with: a subject of
    a cell (:class:`bench.sampling.subject.Subject`), sampled through the pipeline's own ``__call__``."""

    pipe: object
    checkpoint: Checkpoint
    prompts: PromptSet | None
    scheduler: object
    compile_s: float = 0.0
    options: dict = field(default_factory=dict)  # the GPU options it was loaded with (model.*), recorded in the row
    extra: tuple = ()  # column groups of what was loaded into it (a LoRA: bench.adapt)
    control: Callable | None = None  # a ControlNet in it: each image's control map, control(labels, seeds)
    conditioning_scale: float = 1.0  # the ControlNet's residuals' weight

    def batches(self, call: SamplingCall, cost: CostMeter, start: int = 0, stop: int | None = None,
                progress: bool = False) -> Iterator[Batch]:
        stop = call.num_samples if stop is None else stop
        return sample(self, num_samples=stop - start, batch_size=call.batch_size, seed=call.seed,
                      num_inference_steps=call.num_inference_steps, guidance_scale=call.guidance_scale,
                      size=call.shape[-1], cost=cost, eta=call.eta, progress=progress, start=start)

    def columns(self) -> Provenance:
        """What the checkpoint decided (objective, schedule, spacing) and :class:`PipelineColumns`. Every row of a
        cell has the classifier-guidance columns; a pipeline is never classifier-guided (checked)."""
        c, p, sc = self.checkpoint, self.prompts, self.scheduler.config
        prompts = {} if p is None else dict(prompts_id=p.id, prompts_sha256=p.sha256, num_prompts=len(p.texts),
                                            images_per_prompt=p.images_per_prompt, negative_prompt=p.negative_prompt)
        columns = PipelineColumns(
            pipeline_class=c.pipeline_class, checkpoint_objective=c.objective,
            checkpoint_scheduler=c.scheduler.get("_class_name"), checkpoint_path=c.root,
            model_dtype=str(self.pipe.dtype).replace("torch.", ""), compile_s=self.compile_s,
            **{k: bool(self.options.get(k)) for k in ("attention_slicing", "vae_tiling", "cpu_offload", "compile")},
            scheduler_class=type(self.scheduler).__name__, **prompts)
        return Provenance(c.objective, sc.get("beta_schedule", "flow"), sc.get("timestep_spacing", ""),
                          (ClassifierColumns(nfe_classifier=0.0), columns, *self.extra))

    def prompts_of(self, call: SamplingCall) -> list | None:
        """Each image's prompt when the images are scored against their prompts (not when sampled unconditionally,
        at guidance 0, or by a pipeline without prompts)."""
        p = self.prompts
        if p is None or call.guidance_scale == 0:
            return None
        return [p.texts[p.of(i)] for i in range(call.num_samples)]

    def to(self, device) -> LoadedPipeline:
        if not self.options.get("cpu_offload"):  # offloaded components are moved by diffusers as they run
            self.pipe.to(device)
        return self

    def predictor(self) -> PipelinePredictor:
        """Its own components (unet, vae, text encoder) as one prediction call, for tasks on real images."""
        p = self.prompts
        return PipelinePredictor(self.pipe, self.checkpoint.takes_prompt, p.negative_prompt if p is not None else "")


def model_key(cfg) -> str:
    """The checkpoint's identity by content (every file: weights, configs, tokenizer) and its load options."""
    return keys.model_key(cfg)


def load(cfg, info, device: str) -> tuple[LoadedPipeline, dict]:
    """(LoadedPipeline, train_info) for ``model=pipeline``: loaded, never trained, on the checkpoint's own scheduler
    config with the configured sampler; with ``model.compile``, warmed up by one untimed image."""
    pipe = ckpt.load(cfg.model, device)
    c = read_checkpoint(cfg.model)
    options = {k: cfg.model[k] for k in ("attention_slicing", "vae_tiling", "cpu_offload", "compile")}
    scheduler = build_scheduler(cfg.sampler, c, lcm_grid(cfg))
    loaded = LoadedPipeline(pipe, c, load_prompts(cfg.prompts, cfg.data), scheduler, options=options)
    if cfg.model.compile:
        den = getattr(pipe, c.denoiser)
        den.forward = torch.compile(den.forward)
        loaded.compile_s = warm_up(loaded, cfg.sampling, info.shape[-1])
    return loaded, {"model_key": model_key(cfg), "path": c.root, "train_steps": 0, "train_seconds": 0.0,
                    "cached": True, "num_params": ckpt.num_params(pipe)}


# ------------------------------------------------------------------------------------------------------ sampling

def call_kwargs(loaded: LoadedPipeline, idx: range, *, num_inference_steps: int, guidance_scale: float, eta: float,
                size: int, gens, control: torch.Tensor | None = None) -> dict:
    """The ``__call__`` arguments for images ``idx`` (also what tests pass to the pipeline directly); ``control``:
    their control maps (B, 1, H, W) in [0, 1], given to a ControlNet as its conditioning image."""
    c, p = loaded.checkpoint, loaded.prompts
    kw = {"num_inference_steps": num_inference_steps, "generator": gens}
    kw["output_type"] = "pt" if c.takes_prompt else "np"  # DDPM/DDIM pipelines return numpy only
    if c.takes_prompt:
        prompts = [p.texts[p.of(i)] for i in idx]
        if guidance_scale == 0:  # unconditional: the null condition (the empty prompt), no CFG pass
            prompts, guidance_scale = [""] * len(idx), 1.0
        kw.update(prompt=prompts, height=size, width=size, guidance_scale=float(guidance_scale))
        if p.negative_prompt and guidance_scale > 1:
            kw["negative_prompt"] = [p.negative_prompt] * len(idx)
    else:
        kw["batch_size"] = len(idx)
    if "eta" in c.call_params:  # DDIM's eta (0 unless sampler=ddim: checked); other schedulers ignore it
        kw["eta"] = eta
    if control is not None:
        channels = int(loaded.pipe.controlnet.config.conditioning_channels)
        kw.update(image=control.expand(-1, channels, -1, -1), controlnet_conditioning_scale=loaded.conditioning_scale)
    return kw


def sample(loaded: LoadedPipeline, *, num_samples: int, batch_size: int, seed: int, num_inference_steps: int,
           guidance_scale: float, size: int, cost: CostMeter, eta: float = 0.0, progress: bool = True,
           start: int = 0) -> Iterator[Batch]:
    """Images i = start .. start + num_samples - 1 through ``pipe.__call__`` with ``loaded.scheduler``, one
    :class:`Batch` per batch, in model space [-1, 1] (the pipeline's own [0, 1] output, rescaled). Raises
    NonFiniteError on NaN/Inf latents."""
    pipe, c, p = loaded.pipe, loaded.checkpoint, loaded.prompts
    pipe.scheduler = loaded.scheduler
    den = getattr(pipe, c.denoiser)
    own_forward = den.forward
    den.forward = counting(own_forward, cost)
    takes_callback = "callback_on_step_end" in c.call_params
    try:
        with tqdm(total=num_samples, disable=not progress, desc=c.pipeline_class, unit="img") as bar:
            for i0 in range(start, start + num_samples, batch_size):
                idx = range(i0, min(i0 + batch_size, start + num_samples))
                index = torch.arange(idx.start, idx.stop)
                control = None
                if loaded.control is not None:  # a mask of each prompt's class (checked: the prompts have classes)
                    control = loaded.control(torch.as_tensor([p.labels[p.of(i)] for i in idx]), seed + index)
                kw = call_kwargs(loaded, idx, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                 eta=eta, size=size, gens=image_generators(seed, idx.start, idx.stop),
                                 control=control)
                if takes_callback:
                    kw["callback_on_step_end"] = _finite_check(num_inference_steps)
                with cost.batch(len(idx)), torch.inference_mode():
                    x = to_model_space(pipe(**kw).images)
                if not torch.isfinite(x).all():
                    raise NonFiniteError(num_inference_steps - 1, None, num_inference_steps)
                labels = None
                if p is not None and p.labels is not None:
                    labels = torch.as_tensor([p.labels[p.of(i)] for i in idx], dtype=torch.long)
                if c.takes_prompt and guidance_scale == 0:
                    labels = None  # unconditional samples have no caption to be scored against
                bar.update(len(idx))
                yield Batch(x=x.contiguous(), labels=labels, index=index,
                            prompts=None if p is None or labels is not None or guidance_scale == 0
                            else [p.texts[p.of(i)] for i in idx], control=control)
    finally:
        den.forward = own_forward


def to_model_space(images) -> torch.Tensor:
    """A pipeline's output images ([0, 1]: a NCHW tensor for output_type="pt", NHWC numpy for DDPM/DDIM's "np") as
    the harness's float32 NCHW [-1, 1] on the CPU."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2) if isinstance(images, np.ndarray) else images
    return x.to("cpu", torch.float32) * 2 - 1


def _finite_check(num_steps: int):
    def callback(pipe, step, timestep, kwargs):
        latents = kwargs.get("latents")
        if latents is not None and not torch.isfinite(latents).all():
            raise NonFiniteError(int(step), float(timestep), num_steps)
        return kwargs

    return callback


def warm_up(loaded: LoadedPipeline, sampling_cfg, size: int) -> float:
    """model.compile: one untimed image through the pipeline so compilation is not in the latency; its seconds."""
    t0 = time.perf_counter()
    for _ in sample(loaded, num_samples=1, batch_size=1, seed=sampling_cfg.seed, size=size,
                    num_inference_steps=sampling_cfg.num_inference_steps,
                    guidance_scale=sampling_cfg.guidance_scale, cost=CostMeter("cpu"), progress=False):
        pass
    return time.perf_counter() - t0
