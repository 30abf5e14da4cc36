"""Structured config schema, registered in Hydra's ConfigStore so a misspelt key fails at start-up.

Values live in YAML under ``conf/``; this file only fixes the *shape* (keys and types). Combinations that are
individually valid but impossible together (a flow scheduler with an eps model, ...) are checked by
:func:`bench.validate.validate` (which walks one registry per group) before any work is done.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A bad config value. ``str(err)`` is the one line shown to the user."""

    def __init__(self, key: str, value: Any, allowed: str, why: str = ""):
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"{key}={value!r} is not allowed: {allowed}"
        if why:
            msg += f" ({why})"
        super().__init__(msg)


@dataclass
class DataConfig:
    name: str = MISSING  # a conf/data/ name (registry bench.data.DATA)
    toy: str = "moons"  # toy2d only: moons | gmm
    num_train: int = 0  # toy2d: points to draw; images: cap on the train split (0 = all)
    image_size: int = 8  # images are resized to image_size x image_size
    channels: int = 1
    path: Optional[str] = None  # folder: root of an image folder (optionally class sub-folders)
    center_crop: bool = True  # folder: centre-crop to square before resize
    hflip: bool = False  # random horizontal flip in training
    class_conditional: bool = True  # use labels when the data set has them
    test_fraction: float = 0.2  # held-out split for reference statistics / evaluators
    split_seed: int = 0
    num_workers: int = 0


@dataclass
class ModelConfig:
    name: str = MISSING  # a conf/model/ name (registry bench.models.MODELS)
    # mlp (toy2d)
    hidden: int = 128
    layers: int = 3
    time_embed_dim: int = 64
    # unet (diffusers UNet2DModel)
    block_out_channels: List[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = 1
    down_block_types: List[str] = field(default_factory=lambda: ["DownBlock2D", "AttnDownBlock2D"])
    up_block_types: List[str] = field(default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D"])
    norm_num_groups: int = 8
    attention_head_dim: int = 8  # unet: per attention block; dit: width = attention_head_dim x num_attention_heads
    # dit (diffusers DiTTransformer2DModel, Peebles & Xie 2023)
    patch_size: int = 2  # must divide data.image_size
    num_layers: int = 4  # depth: transformer blocks
    num_attention_heads: int = 4
    # latent_unet / latent_dit (Rombach et al. 2022): the denoiser above in an AutoencoderKL's latent space
    vae: Optional[str] = None  # a local diffusers AutoencoderKL directory (loaded); else trained by the harness:
    latent_channels: int = 4
    vae_block_out_channels: List[int] = field(default_factory=lambda: [32, 64])  # one 2x downsampling per level but one
    vae_max_steps: int = 1000  # its training steps (the other train.* settings are the denoiser's)
    vae_kl_weight: float = 1e-4  # loss = MSE(x, D(z)) + vae_kl_weight * KL(q(z|x) || N(0, I)) / pixels
    # text_unet: the frozen text tower; null = the shipped offline CLIP, else a local open_clip model directory, a
    # transformers CLIPTextModel directory with its tokenizer, or a diffusers pipeline directory (text_encoder/)
    text_encoder: Optional[str] = None
    # a local diffusers UNet2DModel directory (or a pipeline's unet/) sampled by the harness's loop when set
    pretrained: Optional[str] = None
    # pipeline (model=pipeline): a local diffusers pipeline directory or a hub id in the local HF cache, sampled
    # through its own __call__ with its own scheduler config (bench/sampling/pipelines.py); GPU options are recorded
    path: Optional[str] = None
    dtype: str = "fp32"  # fp32 | fp16 | bf16 (torch_dtype of from_pretrained)
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False  # enable_model_cpu_offload (CUDA)
    compile: bool = False  # torch.compile the denoiser; compile time is reported apart (compile_s)


@dataclass
class ObjectiveConfig:
    name: str = MISSING  # a conf/objective/ name (registry bench.training.objectives.OBJECTIVES)
    loss_weighting: str = "uniform"  # uniform | min_snr
    min_snr_gamma: float = 5.0


@dataclass
class ScheduleConfig:
    name: str = MISSING  # a conf/schedule/ name (registry bench.schedule.SCHEDULES)
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    flow_shift: float = 1.0  # flow objective: sigma shift (1.0 = plain rectified flow)


@dataclass
class SamplerConfig:
    name: str = MISSING  # a conf/sampler/ name (registry bench.sampling.SAMPLERS)
    eta: float = 0.0  # ddim: 0 deterministic, 1 DDPM-like
    timestep_spacing: str = "trailing"  # leading | linspace | trailing
    solver_order: int = 2  # dpmpp / unipc
    use_karras_sigmas: bool = False  # euler / heun / dpmpp
    # sigma_max policy for sigma-space samplers (euler/heun) when alphas_cumprod[T-1] ~ 0 (cosine):
    # "clip" caps sigma_max at max_sigma, "error" refuses, "allow" keeps the huge value (logged).
    sigma_max_policy: str = "clip"
    max_sigma: float = 200.0  # above the linear schedule's 157, below cosine's 2e4


@dataclass
class SamplingConfig:
    num_inference_steps: int = 20
    guidance_scale: float = 1.0  # diffusers convention: 0 = unconditional, 1 = conditional, >1 = CFG
    classifier_scale: float = 0.0  # classifier guidance (Dhariwal & Nichol 2021): + scale * grad log p(y|x_t); 0 = off
    num_samples: int = 1000
    batch_size: int = 250
    seed: int = 0  # image i of a cell uses seed + i
    save_samples: bool = False  # samples.npz (uint8 NHWC) per cell
    grid_size: int = 100  # images in grid.png
    deterministic: bool = False  # torch.use_deterministic_algorithms + no TF32 (GPU)
    # scale-out (bench/distributed.py); neither is part of the cell key: per-image seeds make the numbers independent
    devices: int = 1  # processes (GPUs, or CPU processes with gloo) that share a cell's images: Lightning Fabric DDP
    shard_size: int = 0  # images per resumable shard file under cells/<key>/shards/ (0: no shards unless devices > 1)


@dataclass
class TrainConfig:
    """Training-relevant knobs besides data/model/objective/schedule. Part of the model cache key."""

    max_steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_drop_prob: float = 0.1  # CFG label dropout
    seed: int = 0
    checkpoint_every: int = 500  # steps between resumable Lightning checkpoints
    accumulate_grad_batches: int = 1  # Lightning's: one optimizer step per N batches (effective batch N*batch_size)


@dataclass
class ClassifierConfig:
    """The noise-aware classifier of classifier guidance (bench/models/classifier.py), trained by the harness on noised
    training images when ``sampling.classifier_scale`` > 0 and cached like a model (its own key)."""

    block_out_channels: List[int] = field(default_factory=lambda: [32, 64])
    norm_num_groups: int = 8
    max_steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    seed: int = 0
    checkpoint_every: int = 500


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments that do not change the trained weights (not in the cache key)."""

    accelerator: str = "auto"
    devices: Any = 1
    precision: str = "32-true"
    strategy: str = "auto"
    log_every_n_steps: int = 50
    enable_progress_bar: bool = True
    # Lightning's max_time ("DD:HH:MM:SS"): stop training when it runs out (a SLURM time limit). A model stopped short
    # of train.max_steps is never published to the cache: the run exits 3 naming the step, and the next run resumes.
    max_time: Optional[str] = None


@dataclass
class CostConfig:
    """How cost is measured (not what is computed: excluded from the cell key, like ``trainer``). Latency = median
    (and IQR) over the timed batches: the first ``warmup_batches`` of a cell are produced and scored but not timed."""

    warmup_batches: int = 1  # batches excluded from latency (first calls allocate, fill caches)
    min_timed_batches: int = 5  # K: fewer timed batches -> a warning and latency_batches < K in the row
    repeats: int = 1  # > 1: re-time the cell's sampling (samples discarded) and pool the timed batches
    num_threads: int = 0  # torch.set_num_threads for the cell (0 = as started, e.g. OMP_NUM_THREADS); recorded
    inference_mode: bool = True  # torch.inference_mode instead of no_grad while sampling (same numbers)
    # UNet in channels_last memory format: ~12 % faster sampling on this CPU (bench-perf); float rounding differs
    # (samples agree to ~1e-3 after 50 steps, as with another batch size), so it is recorded in the row
    channels_last: bool = True
    # torch.compile the harness's own denoiser: none | default (inductor) | reduce-overhead (CUDA graphs); once per
    # model and process, warm-up apart (compile_s), first images checked against eager (bench.sampling.compiled)
    compile: str = "none"


@dataclass
class MetricConfig:
    name: str = MISSING  # a conf/metric/ name (registry bench.metrics.scorer.METRICS)
    fid: bool = True
    kid: bool = True
    inception_score: bool = True
    clip_score: bool = False
    feature_net: str = "auto"  # auto | digits_cnn | inception | clip
    inception_weights: Optional[str] = None  # local file; or env BENCH_INCEPTION_WEIGHTS
    clip_model: str = "offline"  # offline | an open_clip model name
    clip_pretrained: Optional[str] = None  # open_clip pretrained tag or local checkpoint path
    reference_split: str = "train"  # train | test
    reference_stats: Optional[str] = None  # imported npz (clean-fid / pytorch-fid mu/sigma, ADM batch)
    kid_subsets: int = 50
    kid_subset_size: int = 100
    repeats: int = 1  # independent seed blocks -> mean and std
    bootstrap: int = 0  # bootstrap resamples over features (0 = off)
    toy_num_reference: int = 10000  # toy2d: fresh samples of the true distribution
    swd_projections: int = 256
    num_reference: int = 0  # reference images from metric.reference_split (0 = the whole split); part of the ref key
    is_splits: int = 10  # Inception Score: at most this many splits of >= 5000 images (fewer images: whole set)
    seed: int = 0  # KID subsets, IS split permutation, bootstrap, SWD projections, toy2d reference points
    mmd_bandwidth: Optional[float] = None  # toy2d RBF-MMD bandwidth; None = median heuristic (recorded in the row)
    inception_sha256: Optional[str] = None  # expected sha256 of metric.inception_weights (default: the official file)
    # scores beyond FID/KID/IS (bench/metrics/scorer.py): off by default (keys.py: key version 4)
    prdc: bool = False  # precision/recall (k=pr_k, <=) and density/coverage (k=dc_k, <) vs the reference features
    pr_k: int = 3
    dc_k: int = 5
    cmmd: bool = False  # CMMD (RBF on unit CLIP embeddings): data=shapes the offline CLIP, else cmmd_clip_model
    cmmd_sigma: float = 10.0
    cmmd_clip_model: str = "ViT-L-14-336"  # an open_clip model name, weights from the local cmmd_clip_weights
    cmmd_clip_weights: Optional[str] = None
    fd_inf: bool = False  # FD extrapolated to N=inf (fit of FD against 1/N at fd_inf_points sizes in [N/5, N])
    fd_inf_points: int = 15
    sfid: bool = False  # FD on Inception-v3 Mixed_6d.branch1x1[:7] (17x17x7, ADM's sFID); metric.inception_weights
    fd_dinov2: bool = False  # FD on DINOv2 CLS features (dgm-eval preprocessing), from a local checkpoint:
    dinov2_model: str = "vitl14"  # vitl14 | vitb14 (the cheap one)
    dinov2_weights: Optional[str] = None  # Meta's dinov2_<model>_pretrain.pth
    dinov2_sha256: Optional[str] = None  # its sha256, checked before use
    dinov2_small_images: bool = False  # score images under 56 px anyway (DINOv2 sees them upsampled to 224)


@dataclass
class TrackerConfig:
    name: str = "none"  # a conf/tracker/ name (registry bench.tracking.TRACKERS)
    project: str = "bench"
    entity: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled; None = WANDB_MODE, else offline without API key
    dir: Optional[str] = None  # where offline runs go (default: <results root>)


@dataclass
class DistillConfig:
    """Distillation of the trained (teacher) model into a few-step student (bench/distill). The student is sampled
    with ``sampling.num_inference_steps``: progressive → DDIM at that count (rounds teacher_steps → … → it);
    consistency → LCMScheduler at that count (≤ num_ddim_timesteps). Part of the student's cache key."""

    method: str = "none"  # a conf/distill/ name (registry bench.distill.METHODS)
    teacher_steps: int = 64  # progressive: DDIM steps of the first teacher; each round halves them
    max_steps: int = 400  # training steps per round (progressive) / in all (consistency)
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int = 20
    ema_decay: float = 0.95  # student EMA (consistency: also the target network θ⁻)
    num_ddim_timesteps: int = 50  # consistency: skip-step grid size (skip k = T // num_ddim_timesteps)
    guidance_scale: float = 1.0  # teacher guidance baked into the student (diffusers convention); 1.0 = none
    loss: str = "l2"  # consistency: l2 | huber (pseudo-Huber, Song & Dhariwal 2023)
    huber_c: float = 0.001


@dataclass
class PromptsConfig:
    """Prompts of a text-to-image pipeline (bench/data/prompts.py): image i gets prompt (i // images_per_prompt)
    mod the set's size."""

    name: str = "none"  # a conf/prompts/ name (registry bench.data.prompts.PROMPTS): none | shapes | file
    path: Optional[str] = None  # file: .txt (one prompt per line), .csv or .tsv
    column: Optional[str] = None  # csv/tsv column (default: caption, prompt, Prompt, Prompts or text)
    num_prompts: int = 0  # a seeded subset of this many prompts (0 = all)
    seed: int = 0  # the subset's seed
    images_per_prompt: int = 1
    negative_prompt: str = ""  # used with CFG (guidance_scale > 1)


@dataclass
class BenchConfig:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    objective: ObjectiveConfig = MISSING
    schedule: ScheduleConfig = MISSING
    sampler: SamplerConfig = MISSING
    metric: MetricConfig = MISSING
    tracker: TrackerConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    distill: DistillConfig = MISSING
    prompts: PromptsConfig = MISSING
    name: str = "default"  # results go to ${out_dir}/${name}
    out_dir: str = "runs"
    cache_dir: str = "${oc.env:BENCH_CACHE,.cache/bench}"
    device: str = "auto"  # auto | cpu | cuda
    fail_fast: bool = False  # stop the sweep on a failed cell (default: record it as failed and go on)


GROUPS = {
    "data": DataConfig,
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "schedule": ScheduleConfig,
    "sampler": SamplerConfig,
    "metric": MetricConfig,
    "tracker": TrackerConfig,
    "distill": DistillConfig,
    "prompts": PromptsConfig,
}


# The bounds of every numeric key, checked for every cell before any work (bench.validate.check_bounds). A numeric
# key of the schema without an entry here fails tests/test_validators.py, so a new key must declare its range. Every
# float must also be finite (NaN passes every comparison; inf breaks every mean), Optional ones when set.
# Notation: "[lo, hi]" closed, "(lo, hi)" open, mixed allowed; "inf" for no upper bound.
SEED_MAX = 2**32 - 1  # Lightning's seed_everything and NumPy's legacy seeding refuse larger seeds (Lightning: silently
# picks a random one); sampling seeds are per image (seed + i) on torch generators and may go to 2**62
BOUNDS = {
    "data.num_train": "[0, inf)", "data.image_size": "[1, inf)", "data.channels": "[1, 4]",
    "data.test_fraction": "(0, 1)", "data.split_seed": f"[0, {SEED_MAX}]", "data.num_workers": "[0, inf)",
    "model.hidden": "[1, inf)", "model.layers": "[1, inf)", "model.time_embed_dim": "[1, inf)",
    "model.layers_per_block": "[1, inf)", "model.norm_num_groups": "[1, inf)", "model.attention_head_dim": "[1, inf)",
    "model.patch_size": "[1, inf)", "model.num_layers": "[1, inf)", "model.num_attention_heads": "[1, inf)",
    "model.latent_channels": "[1, inf)", "model.vae_max_steps": "[1, inf)", "model.vae_kl_weight": "[0, inf)",
    "objective.min_snr_gamma": "[0, inf)",
    "schedule.num_train_timesteps": "[2, inf)", "schedule.beta_start": "(0, 1)", "schedule.beta_end": "(0, 1)",
    "schedule.flow_shift": "(0, inf)",
    "sampler.eta": "[0, 1]", "sampler.solver_order": "[1, 3]", "sampler.max_sigma": "(0, inf)",
    "metric.kid_subsets": "[1, inf)", "metric.kid_subset_size": "[2, inf)", "metric.repeats": "[1, inf)",
    "metric.bootstrap": "[0, inf)", "metric.toy_num_reference": "[2, inf)", "metric.swd_projections": "[1, inf)",
    "metric.num_reference": "[0, inf)", "metric.is_splits": "[1, inf)", "metric.seed": f"[0, {SEED_MAX}]",
    "metric.mmd_bandwidth": "(0, inf)",
    "metric.pr_k": "[1, inf)", "metric.dc_k": "[1, inf)", "metric.cmmd_sigma": "(0, inf)",
    "metric.fd_inf_points": "[2, inf)",
    "train.max_steps": "[1, inf)", "train.batch_size": "[1, inf)", "train.lr": "(0, inf)",
    "train.weight_decay": "[0, inf)", "train.warmup_steps": "[0, inf)", "train.grad_clip": "[0, inf)",
    "train.ema_decay": "[0, 1)", "train.cond_drop_prob": "[0, 1)", "train.seed": f"[0, {SEED_MAX}]",
    "train.checkpoint_every": "[0, inf)", "train.accumulate_grad_batches": "[1, inf)",
    "trainer.log_every_n_steps": "[1, inf)",
    "sampling.num_inference_steps": "[1, inf)", "sampling.guidance_scale": "[0, inf)", "sampling.num_samples": "[2, inf)",
    "sampling.batch_size": "[1, inf)", "sampling.seed": f"[0, {2**62}]", "sampling.grid_size": "[1, inf)",
    "sampling.devices": "[1, inf)", "sampling.shard_size": "[0, inf)", "sampling.classifier_scale": "[0, inf)",
    "classifier.norm_num_groups": "[1, inf)", "classifier.max_steps": "[1, inf)", "classifier.batch_size": "[1, inf)",
    "classifier.lr": "(0, inf)", "classifier.weight_decay": "[0, inf)", "classifier.warmup_steps": "[0, inf)",
    "classifier.grad_clip": "[0, inf)", "classifier.ema_decay": "[0, 1)", "classifier.seed": f"[0, {SEED_MAX}]",
    "classifier.checkpoint_every": "[0, inf)",
    "cost.warmup_batches": "[0, inf)", "cost.min_timed_batches": "[1, inf)", "cost.repeats": "[1, inf)",
    "cost.num_threads": "[0, inf)",
    "distill.teacher_steps": "[1, inf)", "distill.max_steps": "[1, inf)", "distill.batch_size": "[1, inf)",
    "distill.lr": "(0, inf)", "distill.warmup_steps": "[0, inf)", "distill.ema_decay": "[0, 1)",
    "prompts.num_prompts": "[0, inf)", "prompts.seed": f"[0, {SEED_MAX}]", "prompts.images_per_prompt": "[1, inf)",
    "distill.num_ddim_timesteps": "[1, inf)", "distill.guidance_scale": "[0, inf)", "distill.huber_c": "(0, inf)",
}


def parse_bound(spec: str) -> tuple[float, float, bool, bool]:
    """"[0, 1)" -> (0.0, 1.0, lo_closed=True, hi_closed=False)."""
    lo, hi = (x.strip() for x in spec[1:-1].split(","))
    return float(lo), float(hi), spec[0] == "[", spec[-1] == "]"


def numeric_fields(cls: type = None, prefix: str = ""):
    """(dotted key, type) of every int/float key of the schema (Optional ones included; lists and Any excluded)."""
    cls = cls or BenchConfig
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            yield from numeric_fields(t, f"{prefix}{f.name}.")
            continue
        args = [a for a in typing.get_args(t) if a is not type(None)] if typing.get_origin(t) is typing.Union else [t]
        if len(args) == 1 and args[0] in (int, float):
            yield f"{prefix}{f.name}", args[0]


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="bench_schema", node=BenchConfig)
    for group, node in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)


def check_declared_keys(cfg, cls: type = BenchConfig, prefix: str = "") -> None:
    """Refuse keys the schema does not declare. Hydra's ``+key=value`` adds them past the struct check, and bench
    would then ignore them silently (``+trainer.accumulate_grad_batches=2`` trained without accumulation)."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in cfg.keys():
        if key not in names:
            raise ConfigError(f"{prefix}{key}", cfg[key], f"a key of {cls.__name__}: {', '.join(names)}",
                              "an added key would be ignored")
        sub = hints[key]
        if dataclasses.is_dataclass(sub) and cfg[key] is not None:
            check_declared_keys(cfg[key], sub, f"{prefix}{key}.")
