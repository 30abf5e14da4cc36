"""The model store: trained models cached by a hash of everything that changes their weights (bench.keys).

Layout: ``<cache_dir>/models/<key>/`` = model.safetensors (EMA weights), config.yaml (what the key hashes), meta.json,
last.ckpt. A training runs in ``.<key>.partial/`` (resuming its last.ckpt after an interruption) and is renamed into
place when complete; a file lock makes concurrent jobs wait for one training instead of repeating it. Weights are
checked against the sha256 recorded when they were stored.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from safetensors.torch import load as load_safetensors, save_file

from bench import keys
from bench.env import versions
from bench.models import build_model, num_params
from bench.utils import atomic_write_json, atomic_write_text, file_sha256

log = logging.getLogger(__name__)

WEIGHTS, CKPT = "model.safetensors", "last.ckpt"


class ModelCacheError(RuntimeError):
    """A cached model or resume checkpoint that cannot be read (corrupt, truncated, or pickling objects). Not
    silently retrained: the error names the file to delete. ``str(err)`` is one line."""


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def models_root(cfg) -> Path:
    return Path(cfg.cache_dir) / "models"


def partial_dir(cfg) -> Path:
    """Where the model a config names is trained until it is complete."""
    return models_root(cfg) / f".{keys.model_key(cfg)}.partial"


def cached_model_dir(root: Path, key: str, train: Callable[[Path], dict]) -> tuple[Path, dict, bool]:
    """(``root/key``, its meta, cached). On a miss, ``train(workdir)`` fills ``root/.key.partial`` (resuming what an
    interrupted run left there) and returns the meta; the directory is then renamed into place. A file lock makes
    concurrent jobs wait for one training instead of repeating it."""
    final = root / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{key}.lock")):
        if (final / "meta.json").exists():
            return final, read_meta(final), True
        work = root / f".{key}.partial"
        meta = train(work)
        try:
            os.replace(work, final)
        except OSError:
            if not (final / "meta.json").exists():
                raise
            shutil.rmtree(work, ignore_errors=True)  # another process (without the lock) finished first: use theirs
            meta = json.loads((final / "meta.json").read_text())
    return final, meta, False


def load_model_dir(path: str | os.PathLike, model_cfg, info, device: str,
                   model: torch.nn.Module | None = None, strict: bool = True) -> torch.nn.Module:
    """``build_model(model_cfg, info)`` (or ``model``, another network such as a classifier) with the weights of
    ``path/model.safetensors``, in eval mode on ``device``. ``strict=False``: the file holds part of the model's
    weights (an adapter's), each of which the model must have."""
    model = build_model(model_cfg, info) if model is None else model
    file = Path(path) / WEIGHTS
    try:
        data = file.read_bytes()  # read once: loaded and checksummed from the same bytes
        state = load_safetensors(data)
    except Exception as e:  # truncated / not safetensors / missing
        raise ModelCacheError(f"{file}: cached model weights cannot be read "
                              f"({type(e).__name__}: {first_line(e)}); delete "
                              f"{Path(path)} to train it again") from None
    _verify_weights(Path(path), file, hashlib.sha256(data).hexdigest())
    unexpected = model.load_state_dict(state, strict=strict).unexpected_keys
    if unexpected:
        raise ModelCacheError(f"{file}: holds weights the model does not have ({', '.join(unexpected[:3])}, ...); "
                              f"delete {Path(path)} to train it again")
    return model.eval().to(device)


def _verify_weights(path: Path, file: Path, got: str) -> None:
    """The weights file (sha256 ``got``) must have the sha256 its meta.json recorded when it was cached: a file
    changed in place (a partial copy, a disk error, another tool) would load and give other numbers under the same
    model key."""
    meta = read_meta(path)
    want = meta.get("weights_sha256")
    if not want:  # cached by a bench that recorded no checksum: trusted once, recorded, verified from now on
        log.warning("%s: no recorded weights checksum (cached by an older bench); recording sha256 %s… now", path,
                    got[:16])
        atomic_write_json(path / "meta.json", {**meta, "weights_sha256": got})
        return
    if got != want:
        raise ModelCacheError(f"{file}: sha256 {got[:16]}… does not match the {want[:16]}… recorded when it was "
                              f"cached: the file changed after training; delete {path} to train it again")


def read_meta(path: Path) -> dict:
    """``path/meta.json`` of a cached model; unreadable → ModelCacheError naming it (one line)."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        return meta
    except (OSError, ValueError) as e:
        raise ModelCacheError(f"{Path(path) / 'meta.json'}: cached model metadata cannot be read "
                              f"({type(e).__name__}: {first_line(e)}); delete {path} to train it again") from None


def write_model_dir(module: L.LightningModule, cfg, info, workdir: Path, key: str | None = None,
                    config: dict | None = None, names=None, **extra) -> dict:
    """model.safetensors (EMA weights; ``names``: only those, an adapter's), config.yaml (``config``, default
    :func:`bench.keys.model_key_config`) and meta.json (``extra`` added) of a trained module in ``workdir``; returns
    the meta."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.ema.state_dict().items()
             if names is None or k in names}
    save_file(state, str(workdir / WEIGHTS))
    extra = {"weights_sha256": file_sha256(workdir / WEIGHTS), **extra}  # verified on every load
    config = keys.model_key_config(cfg) if config is None else config
    atomic_write_text(workdir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    losses = module.losses()
    chunk = max(1, len(losses) // 200)  # at most ~200 points of the curve in meta.json
    curve = [sum(losses[i:i + chunk]) / len(losses[i:i + chunk]) for i in range(0, len(losses), chunk)]
    meta = {"model_key": key or keys.model_key(cfg), "train_steps": module.trained_steps,
            "train_seconds": module.elapsed(),
            "num_params": num_params(module.model), "data_id": info.id, "final_loss": curve[-1] if curve else None,
            "loss_curve": curve, "loss_curve_chunk": chunk, "created_at": datetime.now(timezone.utc).isoformat(),
            "versions": {**versions(), "lightning": L.__version__}, **extra}
    atomic_write_json(workdir / "meta.json", meta)
    return meta
