"""Structured config schema, registered in Hydra's ConfigStore so a misspelt key fails at start-up.

Values live in YAML under ``conf/``; this file only fixes the *shape* (keys and types). Combinations that are
individually valid but impossible together (a flow scheduler with an eps model, ...) are checked by
:func:`bench.validate.validate` (which walks one registry per group) before any work is done.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class ConfigError(ValueError):
    """A bad config value. ``str(err)`` is the one line shown to the user."""

    def __init__(self, key: str, value: Any, allowed: str, why: str = ""):
        self.key, self.value, self.allowed = key, value, allowed
        msg = f"{key}={value!r} is not allowed: {allowed}"
        if why:
            msg += f" ({why})"
        super().__init__(msg)


SEED_MAX = 2**32 - 1  # Lightning's seed_everything and NumPy's legacy seeding refuse larger seeds (Lightning: silently
# picks a random one); sampling seeds are per image (seed + i) on torch generators and may go to 2**62
SEED = f"[0, {SEED_MAX}]"


def bounded(default: Any, bounds: str):
    """A numeric field with its range, checked for every cell before any work (bench.validate.check_bounds); floats
    must also be finite (NaN passes every comparison; inf breaks every mean), Optional ones when set. Notation:
    "[lo, hi]" closed, "(lo, hi)" open, mixed allowed; "inf" for no upper bound. A numeric field without one fails
    tests/test_validators.py, so a new key must declare its range."""
    return field(default=default, metadata={"bounds": bounds})


@dataclass
class DataConfig:
    name: str = MISSING  # a conf/data/ name (registry bench.data.DATA)
    toy: str = "moons"  # toy2d only: moons | gmm
    num_train: int = bounded(0, "[0, inf)")  # toy2d: points to draw; images: cap on the train split (0 = all)
    image_size: int = bounded(8, "[1, inf)")  # images are resized to image_size x image_size
    channels: int = bounded(1, "[1, 4]")
    path: str | None = None  # folder: root of an image folder (optionally class sub-folders)
    center_crop: bool = True  # folder: centre-crop to square before resize
    hflip: bool = False  # random horizontal flip in training
    class_conditional: bool = True  # use labels when the data set has them
    test_fraction: float = bounded(0.2, "(0, 1)")  # held-out split for reference statistics / evaluators
    split_seed: int = bounded(0, SEED)
    num_workers: int = bounded(0, "[0, inf)")
    root: str | None = None  # mnist / fashion_mnist / cifar10: torchvision's root (MNIST/raw, cifar-10-batches-py)
    download: bool = False  # mnist / fashion_mnist / cifar10: fetch missing files with torchvision's downloader
    # only the items of these classes (labels), in both splits; null = all. A model trained on part of the classes
    # keeps the data set's label space (an adapter can then teach it the rest: conf/adapter/)
    classes: list[int] | None = None


@dataclass
class ModelConfig:
    """What every model family has. Each family's keys are its own schema below (``model/<name>_schema``, the
    defaults of conf/model/<name>.yaml): a key of another family fails at composition."""

    name: str = MISSING  # a conf/model/ name (registry bench.models.MODELS)


@dataclass
class MLPConfig(ModelConfig):
    """mlp: a time-conditioned MLP for toy2d points."""

    hidden: int = bounded(128, "[1, inf)")
    layers: int = bounded(3, "[1, inf)")
    time_embed_dim: int = bounded(64, "[1, inf)")


@dataclass
class UNetArchConfig(ModelConfig):
    """A diffusers UNet's architecture (UNet2DModel; UNet2DConditionModel for text_unet)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    layers_per_block: int = bounded(1, "[1, inf)")
    down_block_types: list[str] = field(default_factory=lambda: ["DownBlock2D", "AttnDownBlock2D"])
    up_block_types: list[str] = field(default_factory=lambda: ["AttnUpBlock2D", "UpBlock2D"])
    norm_num_groups: int = bounded(8, "[1, inf)")
    attention_head_dim: int = bounded(8, "[1, inf)")  # per attention block


@dataclass
class UNetConfig(UNetArchConfig):
    """unet: diffusers UNet2DModel, trained by the harness, or loaded (``pretrained``) and sampled by its loop."""

    pretrained: str | None = None  # a local diffusers UNet2DModel directory (or a pipeline's unet/)


@dataclass
class TextUNetConfig(UNetArchConfig):
    """text_unet: diffusers UNet2DConditionModel, cross-attention on a frozen text tower's caption tokens."""

    # null = the shipped offline CLIP, else a local open_clip model directory, a transformers CLIPTextModel directory
    # with its tokenizer, or a diffusers pipeline directory (text_encoder/)
    text_encoder: str | None = None


@dataclass
class DiTConfig(ModelConfig):
    """dit: diffusers DiTTransformer2DModel (Peebles & Xie 2023)."""

    patch_size: int = bounded(2, "[1, inf)")  # must divide data.image_size
    num_layers: int = bounded(4, "[1, inf)")  # depth: transformer blocks
    num_attention_heads: int = bounded(4, "[1, inf)")
    attention_head_dim: int = bounded(16, "[1, inf)")  # width = attention_head_dim x num_attention_heads


@dataclass
class LatentConfig(ModelConfig):
    """The AutoencoderKL of a latent family (Rombach et al. 2022): the denoiser diffuses in its latent space."""

    vae: str | None = None  # a local diffusers AutoencoderKL directory (loaded); else trained by the harness:
    latent_channels: int = bounded(4, "[1, inf)")
    vae_block_out_channels: list[int] = field(default_factory=lambda: [32, 64])  # one 2x downsampling per level but one
    norm_num_groups: int = bounded(8, "[1, inf)")  # the VAE's GroupNorm groups (a latent UNet's too)
    vae_max_steps: int = bounded(1000, "[1, inf)")  # its training steps (the other train.* settings are the denoiser's)
    # loss = MSE(x, D(z)) + vae_kl_weight * KL(q(z|x) || N(0, I)) / pixels
    vae_kl_weight: float = bounded(1e-4, "[0, inf)")


@dataclass
class LatentUNetConfig(LatentConfig, UNetArchConfig):
    """latent_unet: the UNet2DModel in an AutoencoderKL's latent space."""


@dataclass
class LatentDiTConfig(LatentConfig, DiTConfig):
    """latent_dit: the DiT in an AutoencoderKL's latent space."""


@dataclass
class PipelineConfig(ModelConfig):
    """pipeline: a local diffusers pipeline directory or a hub id in the local HF cache, sampled through its own
    __call__ with its own scheduler config (bench/sampling/pipelines.py); GPU options are recorded."""

    path: str | None = None
    dtype: str = "fp32"  # fp32 | fp16 | bf16 (torch_dtype of from_pretrained)
    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False  # enable_model_cpu_offload (CUDA)
    compile: bool = False  # torch.compile the denoiser; compile time is reported apart (compile_s)


@dataclass
class TorchModelConfig(ModelConfig):
    """torch: the user's own ``nn.Module`` (bench/models/torch_module.py), built by a factory or loaded as TorchScript,
    never trained here; what it expects is declared below and adapted to the harness's conventions (docs/own_model.md).
    Its prediction type is ``objective``; the noise levels the samplers visit are ``schedule``'s."""

    target: str | None = None  # package.module:factory | path/to/file.py:factory | a TorchScript file
    kwargs: dict[str, Any] | None = None  # the factory's keyword arguments
    weights: str | None = None  # a safetensors file, or a torch.load(weights_only=True) one; null: the factory's own
    weights_key: str | None = None  # the entry of a checkpoint dict that holds the state dict (ema, state_dict, ...)
    strip_prefix: str = ""  # removed from the front of every weight name (e.g. "module.")
    # the model's own training schedule, when it is not `schedule`: a 1-D table of any length (.npy, .pt, .txt) or a
    # buffer of the module; schedule_values says what the table holds
    schedule_file: str | None = None
    schedule_buffer: str | None = None
    schedule_values: str = "alphas_cumprod"  # alphas_cumprod | betas
    time_input: str = "index"  # index | fraction (index / time_scale) | sigma | log_sigma | c_noise (log(sigma) / 4)
    time_offset: float = bounded(0.0, "[-1e6, 1e6]")  # added to the index (index, fraction)
    # fraction's T; null: the table's last index when its first entry is the clean image (alphas_cumprod 1), else
    # its length (num_train_timesteps without a table)
    time_scale: float | None = bounded(None, "(0, inf)")
    time_dtype: str = "float"  # float | long (the index rounded: an embedding table of integer steps)
    data_range: list[float] = field(default_factory=lambda: [-1.0, 1.0])  # the pixel range it was trained on
    input_scaling: str = "vp"  # vp: it sees alpha x0 + sigma eps (DDPM); ve: x0 + sigma eps (EDM, k-diffusion)
    channels: int | None = bounded(None, "[1, inf)")  # null: the data's (a set value must match it)
    image_size: int | None = bounded(None, "[1, inf)")
    # the label of classifier-free guidance's null class; null: the number of classes (the harness's convention)
    null_label: int | None = bounded(None, "[-1, inf)")
    # forward's arguments: an int is a position, a string a keyword; label_arg null: the model takes no labels
    x_arg: Any = 0
    t_arg: Any = 1
    label_arg: Any = "class_labels"
    probe: bool = True  # check the declarations on real training images before sampling (false: bypassed, recorded)


# one schema per model family (conf/model/<name>.yaml ↔ bench.models.MODELS[name]), stored as model/<name>_schema
MODEL_SCHEMAS = {"mlp": MLPConfig, "unet": UNetConfig, "dit": DiTConfig, "latent_unet": LatentUNetConfig,
                 "latent_dit": LatentDiTConfig, "text_unet": TextUNetConfig, "pipeline": PipelineConfig,
                 "torch": TorchModelConfig}


@dataclass
class ObjectiveConfig:
    name: str = MISSING  # a conf/objective/ name (registry bench.training.objectives.OBJECTIVES)
    loss_weighting: str = "uniform"  # uniform | min_snr
    min_snr_gamma: float = bounded(5.0, "[0, inf)")


@dataclass
class ScheduleConfig:
    name: str = MISSING  # a conf/schedule/ name (registry bench.schedule.SCHEDULES)
    num_train_timesteps: int = bounded(1000, "[2, inf)")
    beta_start: float = bounded(0.0001, "(0, 1)")
    beta_end: float = bounded(0.02, "(0, 1)")
    flow_shift: float = bounded(1.0, "(0, inf)")  # flow objective: sigma shift (1.0 = plain rectified flow)


@dataclass
class SamplerConfig:
    name: str = MISSING  # a conf/sampler/ name (registry bench.sampling.SAMPLERS)
    eta: float = bounded(0.0, "[0, 1]")  # ddim: 0 deterministic, 1 DDPM-like
    timestep_spacing: str = "trailing"  # leading | linspace | trailing
    solver_order: int = bounded(2, "[1, 3]")  # dpmpp / unipc
    use_karras_sigmas: bool = False  # euler / heun / dpmpp
    # sigma_max policy for sigma-space samplers (euler/heun) when alphas_cumprod[T-1] ~ 0 (cosine):
    # "clip" caps sigma_max at max_sigma, "error" refuses, "allow" keeps the huge value (logged).
    sigma_max_policy: str = "clip"
    max_sigma: float = bounded(200.0, "(0, inf)")  # above the linear schedule's 157, below cosine's 2e4


@dataclass
class SamplingConfig:
    num_inference_steps: int = bounded(20, "[1, inf)")
    # diffusers convention: 0 = unconditional, 1 = conditional, >1 = CFG
    guidance_scale: float = bounded(1.0, "[0, inf)")
    # classifier guidance (Dhariwal & Nichol 2021): + scale * grad log p(y|x_t); 0 = off
    classifier_scale: float = bounded(0.0, "[0, inf)")
    num_samples: int = bounded(1000, "[2, inf)")
    batch_size: int = bounded(250, "[1, inf)")
    seed: int = bounded(0, f"[0, {2**62}]")  # image i of a cell uses seed + i
    save_samples: bool = False  # samples.npz (uint8 NHWC) per cell
    grid_size: int = bounded(100, "[1, inf)")  # images in grid.png
    deterministic: bool = False  # torch.use_deterministic_algorithms + no TF32 (GPU)
    # the classes a cell samples (image i: classes[i % len]) and is scored on (reference statistics of the data's items
    # of these classes); null = the classes its model was trained on (adapter.classes, else data.classes, else all)
    classes: list[int] | None = None
    # scale-out (bench/distributed.py); neither is part of the cell key: per-image seeds make the numbers independent
    # processes (GPUs, or CPU processes with gloo) that share a cell's images: Lightning Fabric DDP
    devices: int = bounded(1, "[1, inf)")
    # images per resumable shard file under cells/<key>/shards/ (0: no shards unless devices > 1)
    shard_size: int = bounded(0, "[0, inf)")


@dataclass
class OptimConfig:
    """How the harness optimises a network: AdamW at ``lr`` after a linear warm-up of ``warmup_steps``, for
    ``max_steps`` steps of ``batch_size``, keeping an EMA of the weights (``ema_decay``; the EMA weights are the ones
    used). Shared by ``train`` (the denoiser, and a latent family's VAE with ``model.vae_max_steps``), ``classifier``
    and ``distill``; each sets its own defaults."""

    max_steps: int = bounded(2000, "[1, inf)")
    batch_size: int = bounded(128, "[1, inf)")
    lr: float = bounded(2e-3, "(0, inf)")
    warmup_steps: int = bounded(100, "[0, inf)")
    ema_decay: float = bounded(0.999, "[0, 1)")


@dataclass
class FitConfig(OptimConfig):
    """A network trained from random weights (bench.training.fit): also its weight decay, gradient clipping, seed and
    resumable checkpoints. A distilled student takes these from ``train``."""

    weight_decay: float = bounded(0.0, "[0, inf)")
    grad_clip: float = bounded(1.0, "[0, inf)")
    seed: int = bounded(0, SEED)
    checkpoint_every: int = bounded(500, "[0, inf)")  # steps between resumable Lightning checkpoints


@dataclass
class TrainConfig(FitConfig):
    """Training-relevant knobs besides data/model/objective/schedule. Part of the model cache key."""

    cond_drop_prob: float = bounded(0.1, "[0, 1)")  # CFG label dropout
    # Lightning's: one optimizer step per N batches (effective batch N*batch_size)
    accumulate_grad_batches: int = bounded(1, "[1, inf)")


@dataclass
class ClassifierConfig(FitConfig):
    """The noise-aware classifier of classifier guidance (bench/models/classifier.py), trained by the harness on noised
    training images when ``sampling.classifier_scale`` > 0 and cached like a model (its own key)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64])
    norm_num_groups: int = bounded(8, "[1, inf)")
    max_steps: int = bounded(1000, "[1, inf)")
    lr: float = bounded(1e-3, "(0, inf)")
    warmup_steps: int = bounded(20, "[0, inf)")
    ema_decay: float = bounded(0.99, "[0, 1)")


@dataclass
class TrainerConfig:
    """Lightning Trainer arguments. They only say where and how fast a training runs (no key), except ``precision``,
    which changes the trained weights and so the model key (bench.keys)."""

    accelerator: str = "auto"
    devices: Any = 1
    precision: str = "32-true"  # in the model key (left out at 32-true, so older keys hold)
    strategy: str = "auto"
    log_every_n_steps: int = bounded(50, "[1, inf)")
    enable_progress_bar: bool = True
    # Lightning's max_time ("DD:HH:MM:SS"): stop training when it runs out (a SLURM time limit). A model stopped short
    # of train.max_steps is never published to the cache: the run exits 3 naming the step, and the next run resumes.
    max_time: str | None = None


@dataclass
class CostConfig:
    """How cost is measured (not what is computed: excluded from the cell key, like ``trainer``). Latency = median
    (and IQR) over the timed batches: the first ``warmup_batches`` of a cell are produced and scored but not timed."""

    warmup_batches: int = bounded(1, "[0, inf)")  # batches excluded from latency (first calls allocate, fill caches)
    # K: fewer timed batches -> a warning and latency_batches < K in the row
    min_timed_batches: int = bounded(5, "[1, inf)")
    # > 1: re-time the cell's sampling (samples discarded) and pool the timed batches
    repeats: int = bounded(1, "[1, inf)")
    # torch.set_num_threads for the cell (0 = as started, e.g. OMP_NUM_THREADS); recorded
    num_threads: int = bounded(0, "[0, inf)")
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
    feature_net: str = "auto"  # auto | inception | clip | <set>_cnn (digits, mnist, fashion_mnist, cifar10)
    inception_weights: str | None = None  # local file; or env BENCH_INCEPTION_WEIGHTS
    clip_model: str = "offline"  # offline | an open_clip model name
    clip_pretrained: str | None = None  # open_clip pretrained tag or local checkpoint path
    reference_split: str = "train"  # train | test
    reference_stats: str | None = None  # imported npz (clean-fid / pytorch-fid mu/sigma, ADM batch)
    kid_subsets: int = bounded(50, "[1, inf)")
    kid_subset_size: int = bounded(100, "[2, inf)")
    repeats: int = bounded(1, "[1, inf)")  # independent seed blocks -> mean and std
    bootstrap: int = bounded(0, "[0, inf)")  # bootstrap resamples over features (0 = off)
    toy_num_reference: int = bounded(10000, "[2, inf)")  # toy2d: fresh samples of the true distribution
    swd_projections: int = bounded(256, "[1, inf)")
    # reference images from metric.reference_split (0 = the whole split); part of the ref key
    num_reference: int = bounded(0, "[0, inf)")
    # Inception Score: at most this many splits of >= 5000 images (fewer images: whole set)
    is_splits: int = bounded(10, "[1, inf)")
    # KID subsets, IS split permutation, bootstrap, SWD projections, toy2d reference points
    seed: int = bounded(0, SEED)
    # toy2d RBF-MMD bandwidth; None = median heuristic (recorded in the row)
    mmd_bandwidth: float | None = bounded(None, "(0, inf)")
    inception_sha256: str | None = None  # expected sha256 of metric.inception_weights (default: the official file)
    # scores beyond FID/KID/IS (bench/metrics/scorer.py): off by default (keys.py: key version 4)
    prdc: bool = False  # precision/recall (k=pr_k, <=) and density/coverage (k=dc_k, <) vs the reference features
    pr_k: int = bounded(3, "[1, inf)")
    dc_k: int = bounded(5, "[1, inf)")
    cmmd: bool = False  # CMMD (RBF on unit CLIP embeddings): data=shapes the offline CLIP, else cmmd_clip_model
    cmmd_sigma: float = bounded(10.0, "(0, inf)")
    cmmd_clip_model: str = "ViT-L-14-336"  # an open_clip model name, weights from the local cmmd_clip_weights
    cmmd_clip_weights: str | None = None
    fd_inf: bool = False  # FD extrapolated to N=inf (fit of FD against 1/N at fd_inf_points sizes in [N/5, N])
    fd_inf_points: int = bounded(15, "[2, inf)")
    sfid: bool = False  # FD on Inception-v3 Mixed_6d.branch1x1[:7] (17x17x7, ADM's sFID); metric.inception_weights
    fd_dinov2: bool = False  # FD on DINOv2 CLS features (dgm-eval preprocessing), from a local checkpoint:
    dinov2_model: str = "vitl14"  # vitl14 | vitb14 (the cheap one)
    dinov2_weights: str | None = None  # Meta's dinov2_<model>_pretrain.pth
    dinov2_sha256: str | None = None  # its sha256, checked before use
    dinov2_small_images: bool = False  # score images under 56 px anyway (DINOv2 sees them upsampled to 224)


@dataclass
class TrackerConfig:
    name: str = "none"  # a conf/tracker/ name (registry bench.tracking.TRACKERS)
    project: str = "bench"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; None = WANDB_MODE, else offline without API key
    dir: str | None = None  # where offline runs go (default: <results root>)


@dataclass
class DistillConfig(OptimConfig):
    """Distillation of the trained (teacher) model into a few-step student (bench/distill). The student is sampled
    with ``sampling.num_inference_steps``: progressive → DDIM at that count (rounds teacher_steps → … → it);
    consistency → LCMScheduler at that count (≤ num_ddim_timesteps). Part of the student's cache key; its weight decay,
    gradient clipping and seed are ``train``'s."""

    method: str = "none"  # a conf/distill/ name (registry bench.distill.METHODS)
    teacher_steps: int = bounded(64, "[1, inf)")  # progressive: DDIM steps of the first teacher; each round halves them
    max_steps: int = bounded(400, "[1, inf)")  # training steps per round (progressive) / in all (consistency)
    lr: float = bounded(5e-4, "(0, inf)")
    warmup_steps: int = bounded(20, "[0, inf)")
    ema_decay: float = bounded(0.95, "[0, 1)")  # student EMA (consistency: also the target network θ⁻)
    # consistency: skip-step grid size (skip k = T // num_ddim_timesteps)
    num_ddim_timesteps: int = bounded(50, "[1, inf)")
    # teacher guidance baked into the student (diffusers convention); 1.0 = none
    guidance_scale: float = bounded(1.0, "[0, inf)")
    loss: str = "l2"  # consistency: l2 | huber (pseudo-Huber, Song & Dhariwal 2023)
    huber_c: float = bounded(0.001, "(0, inf)")


@dataclass
class AdapterConfig(OptimConfig):
    """An adapter trained on top of the model a config names (the base; bench/adapt): its kind (a conf/adapter/ name,
    registry bench.adapt.KINDS), what it changes (``target_modules``, ``rank``), the data it is trained on
    (``classes``) and its optimisation (``max_steps`` ... ``seed``; weight decay, gradient clipping and label dropout
    are ``train``'s). Cached like a model under a key = the base model's key + these settings + its data."""

    # none | lora | full (every weight of the base, the baseline) | controlnet | t2i_adapter | dreambooth
    kind: str = "none"
    rank: int = bounded(4, "[1, inf)")  # lora: r
    alpha: float | None = bounded(None, "(0, inf)")  # lora: lora_alpha (null = rank: scaling alpha / r = 1)
    # lora: the modules (name suffixes) that get a low-rank update; diffusers' attention projections by default
    target_modules: list[str] = field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])
    conv: bool = False  # lora: also the ResNet blocks' 3x3 convolutions (conv1, conv2)
    classes: list[int] | None = None  # the classes it is trained on (null = data.classes)
    max_steps: int = bounded(300, "[1, inf)")
    batch_size: int = bounded(64, "[1, inf)")
    lr: float = bounded(1e-3, "(0, inf)")
    warmup_steps: int = bounded(20, "[0, inf)")
    ema_decay: float = bounded(0.99, "[0, 1)")
    seed: int = bounded(0, SEED)
    # model=pipeline: a given LoRA file or directory (diffusers' load_lora_weights), not trained here
    path: str | None = None
    lora_scale: float = bounded(1.0, "[0, inf)")  # the low-rank update's weight when sampling (0 = the base model)
    # controlnet, t2i_adapter (the shape's mask as the control): the residuals' weight when sampling (0 = the base)
    conditioning_scale: float = bounded(1.0, "[0, inf)")
    embedding_channels: int = bounded(16, "[1, inf)")  # controlnet: its conditioning embedding's width
    num_res_blocks: int = bounded(2, "[1, inf)")  # t2i_adapter: ResNet blocks per scale
    # dreambooth (bench/adapt/dreambooth.py): what is trained (every weight, or a LoRA of adapter.rank), the subject
    # (a shapes colour + shape the base never saw), its images, the rare token it is bound to, the prior-preservation
    # weight and class images (drawn by the base model), and the images per prompt its scores are measured on
    method: str = "full"  # full | lora
    instance: str | None = None  # "<colour> <shape>" of data=shapes, e.g. "yellow circle"
    num_instance: int = bounded(4, "[1, inf)")
    token: str = "sks"
    prior_weight: float = bounded(1.0, "[0, inf)")  # lambda: 0 = no prior preservation (no class images)
    num_class_images: int = bounded(100, "[1, inf)")
    class_steps: int = bounded(20, "[1, inf)")  # DDIM steps of the class images
    class_guidance: float = bounded(2.0, "[0, inf)")  # their classifier-free guidance scale
    num_eval: int = bounded(32, "[2, inf)")  # a cell setting: images per evaluation prompt


@dataclass
class PromptsConfig:
    """Prompts of a text-to-image pipeline (bench/data/prompts.py): image i gets prompt (i // images_per_prompt)
    mod the set's size."""

    name: str = "none"  # a conf/prompts/ name (registry bench.data.prompts.PROMPTS): none | shapes | file
    path: str | None = None  # file: .txt (one prompt per line), .csv or .tsv
    column: str | None = None  # csv/tsv column (default: caption, prompt, Prompt, Prompts or text)
    num_prompts: int = bounded(0, "[0, inf)")  # a seeded subset of this many prompts (0 = all)
    seed: int = bounded(0, SEED)  # the subset's seed
    images_per_prompt: int = bounded(1, "[1, inf)")
    negative_prompt: str = ""  # used with CFG (guidance_scale > 1)


@dataclass
class TaskConfig:
    """What a cell does with the model (bench/tasks): ``generate`` samples from noise (the default); ``invert`` and
    ``edit`` start from ``num_images`` held-out real images of the data set (its ``split``). invert: DDIM inversion
    for ``sampling.num_inference_steps`` steps and back, plain or null-text (Mokady et al. 2023: the null condition
    optimised per step by ``null_inner_steps`` Adam steps at lr ``null_lr`` (1 - i/100), stopping early once the
    step's loss is below ``null_early_stop``); edit: SDEdit (Meng et al. 2022) at ``strength`` towards ``target``."""

    name: str = "generate"  # a conf/task/ name (registry bench.tasks.TASKS): generate | invert | edit
    num_images: int = bounded(64, "[1, inf)")  # held-out real images a task starts from (the first of the split)
    split: str = "test"  # the split they come from: test (held out from training) | train
    method: str = "plain"  # invert: plain | null_text
    null_inner_steps: int = bounded(10, "[1, inf)")
    null_lr: float = bounded(1e-2, "(0, inf)")
    null_early_stop: float = bounded(1e-5, "[0, inf)")  # stop a step's optimisation once its loss is below this
    strength: float = bounded(0.5, "(0, 1]")  # edit: the noise level the image is taken to (1 = pure noise)
    target: str = "same"  # edit: same (the image's own condition) | a class index | a caption


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
    adapter: AdapterConfig = MISSING
    task: TaskConfig = MISSING
    name: str = "default"  # results go to ${out_dir}/${name}
    out_dir: str = "runs"
    cache_dir: str = "${oc.env:BENCH_CACHE,.cache/bench}"
    device: str = "auto"  # auto | cpu | cuda
    fail_fast: bool = False  # stop the sweep on a failed cell (default: record it as failed and go on)


GROUPS = {
    "data": DataConfig,
    "objective": ObjectiveConfig,
    "schedule": ScheduleConfig,
    "sampler": SamplerConfig,
    "metric": MetricConfig,
    "tracker": TrackerConfig,
    "distill": DistillConfig,
    "prompts": PromptsConfig,
    "adapter": AdapterConfig,
    "task": TaskConfig,
}  # the model group has one schema per family: MODEL_SCHEMAS


def parse_bound(spec: str) -> tuple[float, float, bool, bool]:
    """"[0, 1)" -> (0.0, 1.0, lo_closed=True, hi_closed=False)."""
    lo, hi = (x.strip() for x in spec[1:-1].split(","))
    return float(lo), float(hi), spec[0] == "[", spec[-1] == "]"


def numeric_fields(cls: type = None, prefix: str = "", model: str | None = None):
    """(dotted key, type, bounds) of every int/float key of ``cls`` (default: the whole schema, whose model keys are
    the family ``model``'s; Optional keys included, lists and Any excluded); bounds is None where a field declares
    none (:func:`bounded`)."""
    cls = cls or BenchConfig
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if t is ModelConfig:
            t = MODEL_SCHEMAS.get(model, ModelConfig)
        if dataclasses.is_dataclass(t):
            yield from numeric_fields(t, f"{prefix}{f.name}.", model)
            continue
        union = typing.get_origin(t) in (typing.Union, types.UnionType)  # Optional[X] and X | None
        args = [a for a in typing.get_args(t) if a is not type(None)] if union else [t]
        if len(args) == 1 and args[0] in (int, float):
            yield f"{prefix}{f.name}", args[0], f.metadata.get("bounds")


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (once per process: storing converts every dataclass again, a sixth
    of a compose's time, and every preflight composes each cell)."""
    cs = ConfigStore.instance()
    if "bench_schema.yaml" in cs.repo:
        return
    cs.store(name="bench_schema", node=BenchConfig)
    for group, node in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)
    for name, node in MODEL_SCHEMAS.items():
        cs.store(group="model", name=f"{name}_schema", node=node)


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
            composed = OmegaConf.get_type(cfg[key])  # the model group: its family's schema, a subclass of the field's
            if isinstance(composed, type) and issubclass(composed, sub):
                sub = composed
            check_declared_keys(cfg[key], sub, f"{prefix}{key}.")
