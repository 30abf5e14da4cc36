"""Local diffusers pipelines (``model=pipeline``): found offline, read without loading weights, loaded with the GPU
options the row records. Sampling them (their own ``__call__``, the configured sampler swapped in) is
``bench.sampling.diffusers_pipeline``.

``model.path`` is a directory written by ``save_pretrained`` or a hub id resolved from the local Hugging Face cache
only (``local_files_only``: this harness never downloads).
"""
from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.schema import ConfigError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# diffusers' prediction_type -> bench objective name (FlowMatch* schedulers: "flow", whatever their prediction_type)
OBJECTIVE_OF = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}
DENOISERS = ("unet", "transformer", "prior")  # the component whose forward is the model call (NFE)


def resolve(path: str) -> Path:
    """The pipeline directory of ``model.path``: a local directory, or a hub id's snapshot in the local cache."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise ConfigError("model.path", path, "a diffusers pipeline directory (with model_index.json, written by "
                              "save_pretrained)", "use model=unet model.pretrained=DIR for a bare UNet2DModel")
        return p
    if p.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        raise ConfigError("model.path", path, "a pipeline directory or a hub id (owner/name)",
                          "no such directory" if not p.exists() else "not a directory")
    try:
        from huggingface_hub import snapshot_download  # lazy: only for hub ids

        return Path(snapshot_download(str(path), local_files_only=True))
    except Exception:
        raise ConfigError("model.path", path, "a local pipeline directory, or a hub id already in the local Hugging "
                          "Face cache", f"{path} is not in the cache and this harness never downloads: on a machine "
                          f"with internet run `huggingface-cli download {path}` and copy the cache (HF_HOME), or "
                          f"save_pretrained to a directory and pass that") from None


def read_index(root: Path) -> dict:
    return json.loads((root / "model_index.json").read_text())


def scheduler_config(root: Path) -> dict:
    """The checkpoint's own scheduler config (scheduler/scheduler_config.json), ``_class_name`` included."""
    f = root / "scheduler" / "scheduler_config.json"
    if not f.is_file():
        raise ConfigError("model.path", str(root), "a pipeline with a scheduler/scheduler_config.json")
    return json.loads(f.read_text())


def checkpoint_objective(sched: dict) -> str:
    """The objective a checkpoint was trained on, from its scheduler config."""
    if sched.get("_class_name", "").startswith("FlowMatch"):
        return "flow"
    pt = sched.get("prediction_type", "epsilon")
    if pt not in OBJECTIVE_OF:
        raise ConfigError("model.path", sched.get("_class_name"), f"a prediction_type in {', '.join(OBJECTIVE_OF)}",
                          f"the checkpoint's scheduler has prediction_type={pt!r}")
    return OBJECTIVE_OF[pt]


def denoiser_name(index: dict) -> str:
    for name in DENOISERS:
        if isinstance(index.get(name), list) and index[name][0]:
            return name
    raise ConfigError("model.path", index.get("_class_name"), f"a pipeline with one of {', '.join(DENOISERS)}")


@dataclass
class Checkpoint:
    """What a pipeline directory says about itself, read from its JSON files (no weights loaded)."""

    root: str
    pipeline_class: str
    scheduler: dict  # its scheduler_config.json
    objective: str  # eps | v | x0 | flow
    denoiser: str  # unet | transformer | prior
    call_params: tuple  # the parameters of the pipeline class's __call__
    sample_size: int | None  # unconditional pipelines: the denoiser's sample_size (image size)

    @property
    def takes_prompt(self) -> bool:
        return "prompt" in self.call_params


def read_checkpoint(model_cfg) -> Checkpoint:
    """What ``model.path``'s pipeline directory says about itself (no weights loaded)."""
    import diffusers  # lazy: the pipeline class by name

    root = resolve(model_cfg.path)
    index = read_index(root)
    name = index.get("_class_name", "")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ConfigError("model.path", model_cfg.path, "a pipeline class of this diffusers "
                          f"({diffusers.__version__})", f"model_index.json names {name!r}")
    sched = scheduler_config(root)
    den = denoiser_name(index)
    params = tuple(inspect.signature(cls.__call__).parameters)
    size = None
    if "prompt" not in params:
        conf = root / den / "config.json"
        size = json.loads(conf.read_text()).get("sample_size") if conf.is_file() else None
    return Checkpoint(str(root), name, sched, checkpoint_objective(sched), den, params, size)


def load(model_cfg, device: str):
    """The pipeline of ``model_cfg.path`` with model.dtype / attention_slicing / vae_tiling / cpu_offload applied,
    on ``device`` (with cpu_offload: diffusers moves each component to the GPU when it runs)."""
    from diffusers import DiffusionPipeline  # lazy: diffusers' pipeline machinery imports transformers

    root = resolve(model_cfg.path)
    absent = {k: None for k, v in read_index(root).items() if v == [None, None]}  # saved as absent (SD3's T5)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(root), local_files_only=True, torch_dtype=DTYPES[model_cfg.dtype],
                                                 **absent)
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConfigError("model.path", model_cfg.path, "a diffusers pipeline loadable offline", why) from None
    pipe.set_progress_bar_config(disable=True)
    if model_cfg.attention_slicing:
        pipe.enable_attention_slicing()
    if model_cfg.vae_tiling and getattr(pipe, "vae", None) is not None:
        pipe.vae.enable_tiling()
    if model_cfg.cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    return pipe


def num_params(pipe) -> int:
    """Parameters of every torch component (denoiser, text encoders, VAE)."""
    return sum(sum(p.numel() for p in c.parameters()) for c in pipe.components.values()
               if isinstance(c, torch.nn.Module))
