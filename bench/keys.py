"""Identity: which settings change a model or a cell's numbers, and the hashes of them (model keys, the cell key).

Every config key is declared once, in :data:`SETTINGS`, with its role:

- ``MODEL``: changes trained or loaded weights (a model key, and so the cell key too);
- ``CELL``: changes the samples or scores (the cell key);
- ``RUN``: only says where or how fast a run goes (devices, output, tracker, cost measurement, progress bars).

``tests/test_keys.py`` walks every leaf key of every composed config option and fails for one not declared here.

**Key versions.** A key hashes a fixed frame, not "whatever the config holds today". Version 1 is the frame of the
first keys: the settings declared ``since=1`` with the defaults below, hashed always (a setting a config no longer
carries, e.g. a unet key dropped from another family's schema, is hashed at its frame default, so the key holds). A
setting added later is declared with the version it was added in (``since`` > 1) and is left out of every hash at
its default, so adding it changed no existing key; at any other value it is hashed like the rest. A new setting:
one entry here with ``since=KEY_VERSION + 1`` (and bump :data:`KEY_VERSION`).

**Content.** A path-valued setting that changes numbers is declared with a :class:`Content` fingerprint: the key holds
the fingerprint of its files beside the path, so new files under the same path make new keys.

**No effect.** A setting with no effect in a configuration (a negative prompt without classifier-free guidance,
beta_start/beta_end of the cosine schedule) is normalised to its default before anything is hashed or recorded
(:func:`normalise`, :func:`no_effect`): one rule for every key, the row and the config checks.
"""
from __future__ import annotations

import contextvars
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.data import data_key, get_data_info
from bench.data.standard import SETS as STANDARD_SETS
from bench.models import MODELS, diffusers_checkpoint as checkpoints, text_encoder, text_encoder_fingerprint
from bench.models.torch_module import target_fingerprint
from bench.schema import ConfigError
from bench.utils import config_hash, path_fingerprint, to_plain

MODEL, CELL, RUN = "model", "cell", "run"
ROLES = (MODEL, CELL, RUN)
KEY_VERSION = 5  # 1: the first frame; 2: families, guidance, pipelines and prompts; 3: trainer.precision;
# 4: the scores beyond FID (metric.prdc, cmmd, fd_inf, sfid, fd_dinov2 and their settings);
# 5: tasks (invert, edit), adapters, models of the user's own code and the standard data sets
REQUIRED = object()  # a frame setting every config sets (a group's name)


def results_root(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) / cfg.name


# ------------------------------------------------------------------------------------------------- declarations

@dataclass(frozen=True)
class Content:
    """A path whose files change numbers: ``fingerprint(path, group_cfg)`` enters the key as ``<group>.<entry>``
    (None: nothing to add, e.g. a name that is not a local path). ``strict``: a path that cannot be read is the
    fingerprint's ConfigError; otherwise it is keyed as unreadable and validation reports it."""

    fingerprint: Callable[[str, Any], str | None]
    entry: str


@dataclass(frozen=True)
class Setting:
    """One config key: its role, the version it joined the keys in, its default (the frame value for version 1, the
    value at which a later one is left out), a content fingerprint for a path, and when it has no effect."""

    role: str
    default: Any = None
    since: int = 1
    content: Content | None = None
    no_effect: Callable[[Any], str | None] | None = None  # cfg -> why it has no effect there, or None
    frozen: bool = False  # a RUN setting the version-1 cell key held: hashed at ``default`` whatever its value


def _files(path, _group) -> str:
    return path_fingerprint(path)


def _pipeline_files(path, _group) -> str | None:
    try:
        return path_fingerprint(checkpoints.resolve(path))  # every file of the checkpoint, its scheduler's too
    except ConfigError:
        return None  # a path that does not resolve never runs: validation refuses it with this same error


def _text_tower_files(path, _group) -> str:
    try:
        return text_encoder_fingerprint(str(path))  # every file the tower loads: weights, config, tokenizer
    except ConfigError:
        return path_fingerprint(path)  # not a tower: validation refuses it


def _local_files(path, _group) -> str | None:
    return path_fingerprint(path) if Path(str(path)).expanduser().exists() else None  # else a name (a tag)


def _data_files(_path, data_cfg) -> str | None:
    return data_key(data_cfg).get("content_id")  # DataInfo.id, which fingerprints a folder's or a standard set's files


def _published_split(cfg) -> str | None:
    if cfg.data.name in STANDARD_SETS:
        return f"data={cfg.data.name} has its published train/test split"
    return None


def _cosine(cfg) -> str | None:
    if cfg.schedule.name == "cosine":
        return "the cosine schedule (squaredcos_cap_v2) has no beta_start/beta_end"
    return None


def _no_cfg_pass(cfg) -> str | None:
    g = float(cfg.sampling.guidance_scale)
    if g <= 1:
        return (f"sampling.guidance_scale={g:g} makes no classifier-free guidance pass, the only one a negative "
                f"prompt enters")
    return None


def _no_adapter(cfg) -> str | None:
    if cfg.get("adapter") is not None and cfg.adapter.kind == "none":
        return "adapter.kind=none: the base model is sampled as it is"
    return None


def _only_for(*kinds: str):
    """An adapter setting with no effect unless ``adapter.kind`` is one of ``kinds``."""
    def why(cfg) -> str | None:
        kind = cfg.adapter.kind if cfg.get("adapter") is not None else "none"
        return None if kind in kinds else f"adapter.kind={kind}: only {' | '.join(kinds)} take it"
    return why


def _task_is(*names: str, why: str = ""):
    """No effect unless ``task.name`` is one of ``names`` (a task's own settings, e.g. edit's strength)."""

    def check(cfg) -> str | None:
        task = cfg.get("task")
        name = task.name if task is not None else "generate"
        if name not in names:
            return why or f"task={name} does not use it (task={' or task='.join(names)} does)"
        return None

    return check


def _null_text_unused(cfg) -> str | None:
    task = cfg.get("task")
    if task is None or task.name != "invert" or task.method != "null_text":
        return "only null-text inversion (task=invert task.method=null_text) optimises the null condition"
    return None


def _unconditional(cfg) -> bool:
    """The model of ``cfg`` takes no condition (a pipeline without prompts; a data set without classes)."""
    try:
        if cfg.model.name == "pipeline":
            return not checkpoints.read_checkpoint(cfg.model).takes_prompt
        return not get_data_info(cfg.data).num_classes
    except ConfigError:
        return False  # validation reports the bad value itself


def _method_unused(cfg) -> str | None:
    if why := _task_is("invert")(cfg):
        return why
    # an unconditional model keeps it, so that validation refuses it (there is no null condition at all)
    if cfg.task.method == "null_text" and float(cfg.sampling.guidance_scale) == 1 and not _unconditional(cfg):
        return ("sampling.guidance_scale=1 never evaluates the null condition that null-text inversion optimises: "
                "it is plain inversion")
    return None


def _no_lora_layers(cfg) -> str | None:
    a = cfg.get("adapter")
    if a is not None and a.kind == "dreambooth" and a.get("method") == "lora":
        return None  # DreamBooth's LoRA: the same layers
    return _only_for("lora")(cfg)


def _m(default=None, since: int = 1, **kw) -> Setting:
    return Setting(MODEL, default, since, **kw)


def _c(default=None, since: int = 1, **kw) -> Setting:
    return Setting(CELL, default, since, **kw)


def _r(default=None, **kw) -> Setting:
    return Setting(RUN, default, 1, **kw)


# The defaults of version-1 settings are the frame: the values those keys were first hashed with. Never edit them.
SETTINGS: dict[str, dict[str, Setting]] = {
    "data": {
        "name": _m(REQUIRED), "toy": _m("moons"), "num_train": _m(0), "image_size": _m(8), "channels": _m(1),
        "path": _m(None, content=Content(_data_files, "content_id")), "center_crop": _m(True), "hflip": _m(False),
        "class_conditional": _m(True), "test_fraction": _m(0.2, no_effect=_published_split),
        "split_seed": _m(0, no_effect=_published_split),
        "num_workers": _r(0, frozen=True),  # loader speed only: the batch order is fixed by (train.seed, step)
        "root": _m(None, 5, content=Content(_data_files, "content_id")),  # the standard sets' files, by content
        "download": Setting(RUN, False, 5),  # torchvision's downloader checks its md5s; the files are keyed as read
        "classes": _m(None, 5),
    },
    "model": {
        "name": _m(REQUIRED), "hidden": _m(128), "layers": _m(3), "time_embed_dim": _m(64),
        "block_out_channels": _m([32, 64]), "layers_per_block": _m(1),
        "down_block_types": _m(["DownBlock2D", "AttnDownBlock2D"]),
        "up_block_types": _m(["AttnUpBlock2D", "UpBlock2D"]),
        "norm_num_groups": _m(8), "attention_head_dim": _m(8),
        "pretrained": _m(None, content=Content(_files, "pretrained_content")),
        "patch_size": _m(2, 2), "num_layers": _m(4, 2), "num_attention_heads": _m(4, 2),
        "vae": _m(None, 2, content=Content(_files, "vae_content")), "latent_channels": _m(4, 2),
        "vae_block_out_channels": _m([32, 64], 2), "vae_max_steps": _m(1000, 2), "vae_kl_weight": _m(1e-4, 2),
        "text_encoder": _m(None, 2, content=Content(_text_tower_files, "text_encoder_content")),
        "path": _m(None, 2, content=Content(_pipeline_files, "path_content")),
        "dtype": _m("fp32", 2), "attention_slicing": _m(False, 2), "vae_tiling": _m(False, 2), "compile": _m(False, 2),
        "cpu_offload": _r(False),  # moves whole components to the GPU in turn: the same kernels on the same values
        # model=torch: the user's module (its factory's source file, its weights, its schedule table by content) and
        # every declaration of how it is called
        "target": _m(None, 5, content=Content(target_fingerprint, "target_content")), "kwargs": _m(None, 5),
        "weights": _m(None, 5, content=Content(_files, "weights_content")), "weights_key": _m(None, 5),
        "strip_prefix": _m("", 5), "schedule_file": _m(None, 5, content=Content(_files, "schedule_file_content")),
        "schedule_buffer": _m(None, 5), "schedule_values": _m("alphas_cumprod", 5), "time_input": _m("index", 5),
        "time_offset": _m(0.0, 5), "time_scale": _m(None, 5), "time_dtype": _m("float", 5),
        "data_range": _m([-1.0, 1.0], 5), "input_scaling": _m("vp", 5), "channels": _m(None, 5),
        "image_size": _m(None, 5), "null_label": _m(None, 5), "x_arg": _m(0, 5), "t_arg": _m(1, 5),
        "label_arg": _m("class_labels", 5),
        "probe": Setting(RUN, True, 5),  # refuses or not; measured and recorded either way (probe_bypassed)
    },
    "objective": {"name": _m(REQUIRED), "loss_weighting": _m("uniform"), "min_snr_gamma": _m(5.0)},
    "schedule": {
        "name": _m(REQUIRED), "num_train_timesteps": _m(1000),
        "beta_start": _m(0.0001, no_effect=_cosine), "beta_end": _m(0.02, no_effect=_cosine), "flow_shift": _m(1.0),
    },
    "sampler": {
        "name": _c(REQUIRED), "eta": _c(0.0), "timestep_spacing": _c("trailing"), "solver_order": _c(2),
        "use_karras_sigmas": _c(False), "sigma_max_policy": _c("clip"), "max_sigma": _c(200.0),
    },
    "metric": {
        "name": _c(REQUIRED), "fid": _c(True), "kid": _c(True), "inception_score": _c(True), "clip_score": _c(False),
        "feature_net": _c("auto"), "inception_weights": _c(None, content=Content(_files, "inception_weights_content")),
        "clip_model": _c("offline"),
        "clip_pretrained": _c(None, content=Content(_local_files, "clip_pretrained_content")),
        "reference_split": _c("train"), "reference_stats": _c(None, content=Content(_files, "reference_stats_content")),
        "kid_subsets": _c(50), "kid_subset_size": _c(100), "repeats": _c(1), "bootstrap": _c(0),
        "toy_num_reference": _c(10000), "swd_projections": _c(256), "num_reference": _c(0), "is_splits": _c(10),
        "seed": _c(0), "mmd_bandwidth": _c(None), "inception_sha256": _c(None),
        **{k: _c(v, 4) for k, v in (("prdc", False), ("pr_k", 3), ("dc_k", 5), ("cmmd", False), ("cmmd_sigma", 10.0),
                                    ("cmmd_clip_model", "ViT-L-14-336"), ("fd_inf", False), ("fd_inf_points", 15),
                                    ("sfid", False), ("fd_dinov2", False), ("dinov2_model", "vitl14"),
                                    ("dinov2_sha256", None), ("dinov2_small_images", False))},
        "cmmd_clip_weights": _c(None, 4, content=Content(_files, "cmmd_clip_weights_content")),
        "dinov2_weights": _c(None, 4, content=Content(_files, "dinov2_weights_content")),
    },
    "train": {
        "max_steps": _m(2000), "batch_size": _m(128), "lr": _m(2e-3), "weight_decay": _m(0.0), "warmup_steps": _m(100),
        "grad_clip": _m(1.0), "ema_decay": _m(0.999), "cond_drop_prob": _m(0.1), "seed": _m(0),
        "checkpoint_every": _m(500), "accumulate_grad_batches": _m(1, 2),
    },
    "trainer": {
        "precision": _m("32-true", 3),  # other kernels and rounding: other weights
        "accelerator": _r("auto"), "devices": _r(1), "strategy": _r("auto"), "log_every_n_steps": _r(50),
        "enable_progress_bar": _r(True), "max_time": _r(None),
    },
    "sampling": {
        "num_inference_steps": _c(20), "guidance_scale": _c(1.0), "num_samples": _c(1000, no_effect=_task_is(
            "generate", why="a task on real images uses task.num_images of them")), "seed": _c(0),
        "deterministic": _c(False), "classifier_scale": _c(0.0, 2), "classes": _c(None, 5),
        # per-image seeds make samples independent of the batch size and of how the images are split
        "batch_size": _r(250), "save_samples": _r(False), "grid_size": _r(100), "devices": _r(1), "shard_size": _r(0),
    },
    "distill": {
        "method": _m("none"), "teacher_steps": _m(64), "max_steps": _m(400), "batch_size": _m(128), "lr": _m(5e-4),
        "warmup_steps": _m(20), "ema_decay": _m(0.95), "num_ddim_timesteps": _m(50), "guidance_scale": _m(1.0),
        "loss": _m("l2"), "huber_c": _m(0.001),
    },
    "classifier": {
        "block_out_channels": _m([32, 64], 2), "norm_num_groups": _m(8, 2), "max_steps": _m(1000, 2),
        "batch_size": _m(128, 2), "lr": _m(1e-3, 2), "weight_decay": _m(0.0, 2), "warmup_steps": _m(20, 2),
        "grad_clip": _m(1.0, 2), "ema_decay": _m(0.99, 2), "seed": _m(0, 2), "checkpoint_every": _m(500, 2),
    },
    "prompts": {
        "name": _c("none", 2), "path": _c(None, 2, content=Content(_files, "path_content")), "column": _c(None, 2),
        "num_prompts": _c(0, 2), "seed": _c(0, 2), "images_per_prompt": _c(1, 2),
        "negative_prompt": _c("", 2, no_effect=_no_cfg_pass),
    },
    # an adapter on the base model (bench.adapt): its settings enter the adapter's key (bench.adapt.adapter_key)
    "adapter": {**{k: _m(v, 5, no_effect=_no_adapter) for k, v in (
        ("kind", "none"), ("classes", None), ("max_steps", 300), ("batch_size", 64), ("lr", 1e-3),
        ("warmup_steps", 20), ("ema_decay", 0.99), ("seed", 0))},
        **{k: _m(v, 5, no_effect=_no_lora_layers) for k, v in (
            ("rank", 4), ("alpha", None), ("target_modules", ["to_k", "to_q", "to_v", "to_out.0"]), ("conv", False))},
        "path": _m(None, 5, content=Content(_files, "path_content"), no_effect=_no_adapter),
        "lora_scale": _c(1.0, 5, no_effect=_only_for("lora")),
        "conditioning_scale": _c(1.0, 5, no_effect=_only_for("controlnet", "t2i_adapter")),
        "embedding_channels": _m(16, 5, no_effect=_only_for("controlnet")),
        "num_res_blocks": _m(2, 5, no_effect=_only_for("t2i_adapter")),
        **{k: _m(v, 5, no_effect=_only_for("dreambooth")) for k, v in (
            ("method", "full"), ("instance", None), ("num_instance", 4), ("token", "sks"), ("prior_weight", 1.0),
            ("num_class_images", 100), ("class_steps", 20), ("class_guidance", 2.0))},
        "num_eval": _c(32, 5, no_effect=_only_for("dreambooth"))},
    "cost": {k: _r(v) for k, v in (("warmup_batches", 1), ("min_timed_batches", 5), ("repeats", 1),
                                   ("num_threads", 0), ("inference_mode", True))} | {
        # channels_last rounds differently (~1e-3 after 50 steps, as another batch size does): recorded in the row
        "channels_last": _r(True),
        # compiled kernels round differently too; each cell checks them against the eager model (within one uint8
        # level, else refused) and records the difference (compile_max_abs_diff)
        "compile": _r("none")},
    "tracker": {k: _r(v) for k, v in (("name", "none"), ("project", "bench"), ("entity", None), ("mode", None),
                                      ("dir", None))},
    "task": {
        "name": _c("generate", 5),
        "num_images": _c(64, 5, no_effect=_task_is("invert", "edit")),
        "split": _c("test", 5, no_effect=_task_is("invert", "edit")),
        "method": _c("plain", 5, no_effect=_method_unused),
        **{k: _c(v, 5, no_effect=_null_text_unused) for k, v in (("null_inner_steps", 10), ("null_lr", 1e-2),
                                                                 ("null_early_stop", 1e-5))},
        "strength": _c(0.5, 5, no_effect=_task_is("edit")),
        "target": _c("same", 5, no_effect=_task_is("edit")),
    },
    "": {k: _r(v) for k, v in (("name", "default"), ("out_dir", "runs"), ("cache_dir", None), ("device", "auto"),
                               ("fail_fast", False))},
}
CELL_GROUPS = ("data", "model", "objective", "schedule", "sampler", "metric", "train", "sampling", "distill",
               "classifier", "prompts", "trainer", "adapter", "task")  # the cell key's sections (first frame's order
# first; a group added later goes last: at its defaults its section is empty and left out, so older keys hold)


def setting(dotted: str) -> Setting:
    group, _, name = dotted.rpartition(".")
    return SETTINGS[group][name]


def declared() -> dict[str, Setting]:
    """{dotted key: Setting} of every declared config key."""
    return {f"{g}.{k}" if g else k: s for g, group in SETTINGS.items() for k, s in group.items()}


# ------------------------------------------------------------------------------------------------ normalisation

def without_effect(cfg) -> dict[str, str]:
    """{dotted key: why} of the declared settings that have no effect in ``cfg``, whatever their values."""
    out = {}
    for dotted, s in declared().items():
        why = s.no_effect(cfg) if s.no_effect is not None else None
        if why:
            out[dotted] = why
    return out


def no_effect(cfg) -> dict[str, str]:
    """{dotted key: why} of the settings that have no effect in ``cfg`` and are not at their default: what
    :func:`normalise` resets (and every key leaves out)."""
    out = {}
    for dotted, why in without_effect(cfg).items():
        group, _, name = dotted.rpartition(".")
        node = cfg.get(group) if group else cfg
        if node is not None and name in node and _plain(node[name]) != setting(dotted).default:
            out[dotted] = why
    return out


def normalise(cfg: DictConfig) -> DictConfig:
    """``cfg`` with every setting that has no effect in it (:func:`no_effect`) at its default: what the keys hash, the
    row records and the run uses. Returns ``cfg`` itself when nothing changes."""
    moot = no_effect(cfg)
    if not moot:
        return cfg
    out = copy.deepcopy(cfg)
    with _writable(out):
        for dotted in moot:
            OmegaConf.update(out, dotted, setting(dotted).default, merge=False)
    return out


class _writable:
    def __init__(self, cfg):
        self.cfg, self.flag = cfg, OmegaConf.is_readonly(cfg)

    def __enter__(self):
        OmegaConf.set_readonly(self.cfg, False)

    def __exit__(self, *exc):
        OmegaConf.set_readonly(self.cfg, self.flag)


def _plain(v):
    return to_plain(v)


# ----------------------------------------------------------------------------------------------------- sections

# {id(cfg): (cfg, no_effect(cfg))} while a key function runs: its sections share one no_effect(cfg) (every declared
# setting's predicate: the bulk of a key's cost) instead of one per section. None outside key functions.
_MOOT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("bench_keys_moot", default=None)


def _reads_cfg(fn):
    """A key function: it reads ``cfg`` and never changes it, so within its call (and those it makes) no_effect(cfg)
    is computed once per config object."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _MOOT.get() is not None:
            return fn(*args, **kwargs)
        token = _MOOT.set({})
        try:
            return fn(*args, **kwargs)
        finally:
            _MOOT.reset(token)

    return wrapper


def _moot(cfg) -> dict[str, str]:
    memo = _MOOT.get()
    if memo is None:
        return no_effect(cfg)
    if id(cfg) not in memo:
        memo[id(cfg)] = (cfg, no_effect(cfg))  # holds cfg: its id is not reused while the memo lives
    return memo[id(cfg)][1]


def _values(cfg, group: str) -> dict:
    """{name: value} of a group's declared settings, normalised, with the frame default where the config has none."""
    node = cfg.get(group)
    moot = _moot(cfg)
    out = {}
    for name, s in SETTINGS[group].items():
        if f"{group}.{name}" in moot or node is None or name not in node:
            out[name] = s.default
        else:
            out[name] = _plain(node[name])
    return out


@_reads_cfg
def section(cfg, group: str, roles=(MODEL, CELL), elide: bool = True, frozen: bool = False) -> dict:
    """What a key holds for ``group``: its settings of ``roles`` (version 1 always; later ones only away from their
    default unless ``elide`` is False), the RUN settings version 1 held (``frozen``) at their frame value, and the
    content fingerprints of its set paths."""
    values, out = _values(cfg, group), {}
    for name, s in SETTINGS[group].items():
        v = values[name]
        if s.role in roles:
            if s.since == 1 or not elide or v != s.default:
                out[name] = v
            if s.content is not None and v not in (None, ""):
                fp = s.content.fingerprint(v, cfg.get(group))
                if fp is not None:
                    out[s.content.entry] = fp
        elif frozen and s.frozen:
            out[name] = s.default
    return out


def _data(cfg) -> dict:
    return section(cfg, "data", roles=(MODEL,))


def _trainer(cfg) -> dict:
    """What the Lightning runner adds to a trained model's key (its precision, when not the default)."""
    return section(cfg, "trainer", roles=(MODEL,))


# ----------------------------------------------------------------------------------------------------- cell key

@_reads_cfg
def cell_config(cfg: DictConfig) -> dict:
    """The part of the config that determines a cell's numbers; its hash is the cell key."""
    out = {}
    for group in CELL_GROUPS:
        sec = section(cfg, group, frozen=True)
        if sec:
            out[group] = sec
    return out


@_reads_cfg
def cell_key(cfg: DictConfig) -> str:
    return config_hash(cell_config(cfg))


# The metric settings that decide which images a cell samples (how many seed blocks); every other metric.* setting
# only changes how those images are scored.
SAMPLING_METRIC_SETTINGS = ("repeats",)


@_reads_cfg
def samples_key(cfg: DictConfig) -> str:
    """The sampling part of the cell key: the cell config without the settings that only score the images. Cells
    with one samples key sample the same images (bench.rescore scores a kept set of them again)."""
    out = cell_config(cfg)
    out["metric"] = {k: v for k, v in out.get("metric", {}).items() if k in SAMPLING_METRIC_SETTINGS}
    return config_hash(out)


@_reads_cfg
def key_settings(cfg: DictConfig) -> dict:
    """{dotted key: value} of every setting the cell key holds, after normalisation (content fingerprints as
    ``<group>.<entry>``): what the row records so that rows are only ever pooled within one configuration."""
    out = {}
    for group in CELL_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        sec = section(cfg, group, elide=False)
        for name, v in sec.items():
            if name in node or name not in SETTINGS[group]:  # the config's own settings and their fingerprints
                out[f"{group}.{name}"] = v
    return out


# ---------------------------------------------------------------------------------------------------- model keys

@_reads_cfg
def model_key_config(cfg) -> dict:
    """What changes a harness model's weights (resolved): ``model_key`` hashes it and its config.yaml records it.
    ``model.pretrained``: that checkpoint's content with the forward process it is sampled by."""
    if MODELS[cfg.model.name].loaded:  # the user's own module: its files and declarations, never trained here
        return {"data": _data(cfg), "model": section(cfg, "model", roles=(MODEL,)),
                "objective": section(cfg, "objective"), "schedule": section(cfg, "schedule")}
    if cfg.model.get("pretrained"):  # model=unet loaded, not trained
        m = section(cfg, "model", roles=(MODEL,))
        return {"pretrained": str(cfg.model.pretrained), "pretrained_content": m["pretrained_content"],
                "objective": section(cfg, "objective"), "schedule": section(cfg, "schedule")}
    out = {"data": _data(cfg), "model": section(cfg, "model", roles=(MODEL,)), "objective": section(cfg, "objective"),
           "schedule": section(cfg, "schedule"), "train": section(cfg, "train")}
    if MODELS[cfg.model.name].text and not cfg.model.text_encoder:  # the shipped tower: its weights' hash
        out["model"]["text_encoder"] = text_encoder().weights_hash
    if trainer := _trainer(cfg):
        out["trainer"] = trainer
    return out


def pipeline_key_config(cfg) -> dict:
    """A loaded pipeline: every file of its checkpoint (weights, configs, tokenizer, scheduler) and its load options."""
    m = cfg.model
    return {"path_content": path_fingerprint(checkpoints.resolve(m.path)), "dtype": m.dtype,
            "attention_slicing": m.attention_slicing, "vae_tiling": m.vae_tiling, "compile": m.compile}


@_reads_cfg
def model_key(cfg) -> str:
    """The key of the model a config names (before distillation): a loaded pipeline's, else the harness model's."""
    return config_hash(pipeline_key_config(cfg) if cfg.model.get("path") else model_key_config(cfg))


@_reads_cfg
def adapter_key_config(cfg, base_key: str, fields, classes) -> dict:
    """What an adapter's weights depend on: the base model's key, its kind's ``fields`` of ``adapter.*``, the classes
    it is trained on and the ``train.*`` settings it takes from the base's (label dropout, clipping, weight decay)."""
    a, t = section(cfg, "adapter", elide=False), section(cfg, "train")
    out = {"base": base_key, "kind": a["kind"], "adapter": {k: a[k] for k in fields},
           "classes": None if classes is None else list(classes),
           "train": {k: t[k] for k in ("cond_drop_prob", "grad_clip", "weight_decay")}}
    if a.get("path_content"):
        out["adapter"]["path_content"] = a["path_content"]
    if trainer := _trainer(cfg):
        out["trainer"] = trainer
    return out


@_reads_cfg
def vae_train(cfg) -> dict:
    """A latent family's first-stage training settings: ``train.*`` with ``model.vae_max_steps`` steps."""
    return {**section(cfg, "train"), "max_steps": int(cfg.model.vae_max_steps)}


@_reads_cfg
def vae_key_config(cfg) -> dict:
    """What changes a latent family's VAE: the data (folders by content) and the VAE's keys and training settings, or
    a pretrained VAE's content (its scaling factor and PSNR are measured on the data). Not the denoiser's keys."""
    m = section(cfg, "model", roles=(MODEL,), elide=False)
    out = {"network": "autoencoder_kl", "data": _data(cfg)}
    if m["vae"]:
        return {**out, "pretrained": str(m["vae"]), "pretrained_content": m["vae_content"]}
    out.update(train=vae_train(cfg), vae={"latent_channels": int(m["latent_channels"]),
                                         "block_out_channels": list(m["vae_block_out_channels"]),
                                         "norm_num_groups": int(m["norm_num_groups"]),
                                         "kl_weight": float(m["vae_kl_weight"])})
    if trainer := _trainer(cfg):
        out["trainer"] = trainer
    return out


@_reads_cfg
def vae_key(cfg) -> str:
    return config_hash(vae_key_config(cfg))


@_reads_cfg
def classifier_key_config(cfg) -> dict:
    """What changes the guidance classifier's weights: the data (folders by content), the forward process it is noised
    with (schedule; the diffusion or the flow path) and ``classifier.*``. Not the denoiser: one classifier guides them
    all. A latent family's classifier sees its VAE's latents: that VAE's key too (pixel classifiers keep theirs)."""
    out = {"network": "noisy_classifier", "data": _data(cfg), "schedule": section(cfg, "schedule"),
           "path": "flow" if cfg.objective.name == "flow" else "diffusion",
           "classifier": section(cfg, "classifier", elide=False)}
    if MODELS[cfg.model.name].latent:
        out["first_stage"] = vae_key(cfg)
    if trainer := _trainer(cfg):
        out["trainer"] = trainer
    return out


@_reads_cfg
def classifier_key(cfg) -> str:
    return config_hash(classifier_key_config(cfg))


@_reads_cfg
def student_key_config(cfg, parent_key: str, steps: int | None, fields, timestep_spacing: bool) -> dict:
    """What a distilled student's weights depend on: its parent (teacher or previous round), the method's ``fields``
    of ``distill.*``, its step count, and (``timestep_spacing``) the DDIM grid it is trained on."""
    d, t = section(cfg, "distill"), section(cfg, "train")
    out = {"parent": parent_key, "method": d["method"], "steps": steps, "distill": {k: d[k] for k in fields},
           "train": {k: t[k] for k in ("seed", "cond_drop_prob", "grad_clip", "weight_decay")}}
    if timestep_spacing:
        out["timestep_spacing"] = section(cfg, "sampler")["timestep_spacing"]
    if trainer := _trainer(cfg):
        out["trainer"] = trainer
    return out
