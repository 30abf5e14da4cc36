"""Train once, reuse forever: models are cached by a hash of everything that changes their weights.

Layout: ``<cache_dir>/models/<model_key>/`` = model.safetensors (EMA weights), config.yaml, meta.json, last.ckpt.
A training runs in ``.<model_key>.partial/`` (resuming its last.ckpt after an interruption) and is renamed into
place when complete; a file lock makes concurrent jobs wait for one training instead of repeating it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from omegaconf import OmegaConf
from safetensors.torch import load as load_safetensors, save_file

from bench.data import BenchDataModule, build_dataset, data_key, get_data_info
from bench.models import MODELS, build_model, build_vae, num_params, text_encoder, text_encoder_fingerprint
from bench.models.latent import latent_info
from bench.env import resolve_device, versions
from bench.schema import elide_defaults
from bench.tracking import finish_logger, training_logger
from bench.utils import atomic_write_json, atomic_write_text, config_hash, file_sha256, path_fingerprint, to_plain

from .module import DiffusionModule, VAEModule

log = logging.getLogger(__name__)

KEY_GROUPS = ("data", "model", "objective", "schedule", "train")
NOT_IN_KEY = {"data": ("num_workers",)}  # loader speed only: the batch order is fixed by (train.seed, step)
WEIGHTS, CKPT = "model.safetensors", "last.ckpt"


class ModelCacheError(RuntimeError):
    """A cached model or resume checkpoint that cannot be read (corrupt, truncated, or pickling objects). Not
    silently retrained: the error names the file to delete. ``str(err)`` is one line."""


class TrainingStopped(RuntimeError):
    """Training ended before train.max_steps (trainer.max_time ran out): nothing is published to the cache, the
    resume checkpoint stays, and the next run with the same config continues from it (exit 3, not a failed row)."""


def _why(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _check_resumable(last: Path) -> None:
    """Refuse a resume checkpoint that is not a readable weights-only file before Lightning trips over it."""
    try:
        torch.load(last, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelCacheError(f"{last}: cannot resume training from this checkpoint ({type(e).__name__}: {_why(e)}); "
                              f"delete it to train from step 0") from None


def key_config(cfg) -> dict:
    """The training-relevant config (resolved); ``model_key`` hashes it and ``config.yaml`` records it."""
    if cfg.model.pretrained:
        return {"pretrained": str(cfg.model.pretrained), "pretrained_content": path_fingerprint(cfg.model.pretrained),
                "objective": to_plain(cfg.objective),
                "schedule": to_plain(cfg.schedule)}
    out = {g: to_plain(cfg[g]) for g in KEY_GROUPS}
    for g, keys in NOT_IN_KEY.items():
        for k in keys:
            out[g].pop(k, None)
    out["data"].update(data_key(cfg.data))  # folder data: its content fingerprint, not only its path
    if cfg.model.vae:  # a latent family's pretrained VAE: by content, not by path
        out["model"]["vae_content"] = path_fingerprint(cfg.model.vae)
    if MODELS[cfg.model.name].text:  # the frozen text tower's weights make the conditioning: by their hash
        if cfg.model.text_encoder:  # a local tower: by the content of what it loads (weights, config, tokenizer)
            out["model"]["text_encoder_content"] = text_encoder_fingerprint(str(cfg.model.text_encoder))
        else:
            out["model"]["text_encoder"] = text_encoder().weights_hash
    return elide_defaults(out)


def model_key(cfg) -> str:
    return config_hash(key_config(cfg))


def models_root(cfg) -> Path:
    return Path(cfg.cache_dir) / "models"


def partial_dir(cfg) -> Path:
    return models_root(cfg) / f".{model_key(cfg)}.partial"


def fit(make_module: Callable[[], DiffusionModule], data_cfg, train, trainer_cfg, workdir: str | os.PathLike,
        callbacks=(), logger=False) -> DiffusionModule:
    """Train ``make_module()`` (a DiffusionModule; distillation passes its own) on ``data_cfg``'s train split per
    ``train`` (max_steps, batch_size, seed, grad_clip, checkpoint_every, accumulate_grad_batches) and the Lightning
    ``trainer_cfg`` in ``workdir``, resuming ``workdir/last.ckpt`` when present. The module is built after seeding:
    its initial weights are part of what the model key promises. ``logger``: a Lightning logger for the training
    curves (``bench.tracking.training_logger``) or False. Raises :class:`TrainingStopped` when
    ``trainer_cfg.max_time`` ends the training before ``train.max_steps``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(int(train.seed), workers=True, verbose=False)
    module = make_module()
    every = int(train.checkpoint_every)
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=workdir, save_last=True, save_top_k=0,
                                                  every_n_train_steps=every if every > 0 else None)
    tr = trainer_cfg
    spawned = processes(tr) > 1
    if spawned:  # the ranks write the final state; this process reads it back below
        callbacks = [*callbacks, _FinalCheckpoint(workdir / CKPT)]
    trainer = L.Trainer(max_steps=int(train.max_steps), accelerator=tr.accelerator, devices=tr.devices,
                        precision=tr.precision, strategy=strategy(tr), logger=logger,
                        accumulate_grad_batches=int(getattr(train, "accumulate_grad_batches", 1)),
                        max_time=getattr(tr, "max_time", None) or None,
                        enable_progress_bar=bool(tr.enable_progress_bar), log_every_n_steps=int(tr.log_every_n_steps),
                        gradient_clip_val=float(train.grad_clip) or None, enable_model_summary=False,
                        callbacks=[ckpt_cb, *callbacks], default_root_dir=str(workdir),
                        use_distributed_sampler=False, num_sanity_val_steps=0)
    last = workdir / CKPT
    if last.exists():
        _check_resumable(last)
    datamodule = BenchDataModule(data_cfg, train.batch_size, train.seed)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None,
                weights_only=True)
    if spawned:  # ddp_spawn: the weights, EMA, loss curve and step count come from rank 0's final checkpoint
        ck = torch.load(last, map_location="cpu", weights_only=True)
        module.load_state_dict(ck["state_dict"])
        module.on_load_checkpoint(ck)
        steps = int(ck["global_step"])
    else:
        steps = int(trainer.global_step)
        if steps and not (last.exists() and every and steps % every == 0):
            trainer.save_checkpoint(last, weights_only=False)  # the final state, when the cadence did not write it
    if steps < int(train.max_steps):
        raise TrainingStopped(f"training stopped at step {steps} of train.max_steps={int(train.max_steps)} "
                              f"(trainer.max_time={tr.max_time}); its checkpoint {last} is kept: run the same command "
                              f"again to resume")
    module.trained_steps = steps
    return module


def processes(trainer_cfg) -> int:
    """Training processes: ``trainer.devices`` when it is a count (1 for ``auto`` or a device list of one)."""
    d = trainer_cfg.devices
    if isinstance(d, int):
        return d
    if isinstance(d, str) and d.isdigit():
        return int(d)
    return len(d) if hasattr(d, "__len__") and not isinstance(d, str) else 1


def strategy(trainer_cfg) -> str:
    """Lightning's strategy: ``ddp_spawn`` for N > 1 processes unless given. Not ``ddp``: it would re-launch the
    whole bench job per rank, and each rank would wait on the model-cache lock the first one holds."""
    if processes(trainer_cfg) > 1 and trainer_cfg.strategy == "auto":
        return "ddp_spawn"
    return trainer_cfg.strategy


class _FinalCheckpoint(L.Callback):
    """Under ddp_spawn: the final training state written by the ranks (rank 0 writes), read back by the parent."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


def load_model_dir(path: str | os.PathLike, model_cfg, info, device: str,
                   model: torch.nn.Module | None = None) -> torch.nn.Module:
    """``build_model(model_cfg, info)`` (or ``model``, another network such as a classifier) with the weights of
    ``path/model.safetensors``, in eval mode on ``device``."""
    model = build_model(model_cfg, info) if model is None else model
    file = Path(path) / WEIGHTS
    try:
        data = file.read_bytes()  # read once: loaded and checksummed from the same bytes
        state = load_safetensors(data)
    except Exception as e:  # truncated / not safetensors / missing
        raise ModelCacheError(f"{file}: cached model weights cannot be read ({type(e).__name__}: {_why(e)}); delete "
                              f"{Path(path)} to train it again") from None
    _verify_weights(Path(path), file, hashlib.sha256(data).hexdigest())
    model.load_state_dict(state, strict=True)
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
                              f"({type(e).__name__}: {_why(e)}); delete {path} to train it again") from None


def write_model_dir(module: DiffusionModule, cfg, info, workdir: Path, key: str | None = None,
                    config: dict | None = None, **extra) -> dict:
    """model.safetensors (EMA weights), config.yaml (``config``, default :func:`key_config`) and meta.json (``extra``
    added) of a trained module in ``workdir``; returns the meta."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.ema.state_dict().items()}
    save_file(state, str(workdir / WEIGHTS))
    extra = {"weights_sha256": file_sha256(workdir / WEIGHTS), **extra}  # verified on every load
    config = key_config(cfg) if config is None else config
    atomic_write_text(workdir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(config)))
    losses = module.losses()
    chunk = max(1, len(losses) // 200)  # at most ~200 points of the curve in meta.json
    curve = [sum(losses[i:i + chunk]) / len(losses[i:i + chunk]) for i in range(0, len(losses), chunk)]
    meta = {"model_key": key or model_key(cfg), "train_steps": module.trained_steps, "train_seconds": module.elapsed(),
            "num_params": num_params(module.model), "data_id": info.id, "final_loss": curve[-1] if curve else None,
            "loss_curve": curve, "loss_curve_chunk": chunk, "created_at": datetime.now(timezone.utc).isoformat(),
            "versions": {**versions(), "lightning": L.__version__}, **extra}
    atomic_write_json(workdir / "meta.json", meta)
    return meta


def _train_info(cfg, path: Path, meta: dict, cached: bool) -> dict:
    return {"model_key": model_key(cfg), "path": str(path), "train_steps": int(meta["train_steps"]),
            "train_seconds": float(meta["train_seconds"]), "cached": cached, "num_params": int(meta["num_params"])}


def load_or_train(cfg) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode with EMA weights on ``cfg.device``, train_info) — from the cache, or trained and cached.

    train_info (a dict; ``info`` is always the data's DataInfo): model_key, path, train_steps, train_seconds,
    cached, num_params. ``model.pretrained`` set → that model, loaded and never trained (cached=True,
    train_steps=0). ``distill.*`` is ignored: the distilled students of this
    model are :func:`bench.distill.load_or_distill`'s (``bench.pipeline`` picks which one a cell samples)."""
    info = get_data_info(cfg.data)
    device = resolve_device(cfg.device)
    key = model_key(cfg)
    if cfg.model.pretrained:
        model = build_model(cfg.model, info).eval().to(device)
        return model, {"model_key": key, "path": str(cfg.model.pretrained), "train_steps": 0, "train_seconds": 0.0,
                       "cached": True, "num_params": num_params(model)}
    latent = MODELS[cfg.model.name].latent
    vae, vae_info = load_or_train_vae(cfg) if latent else (None, {})  # the first stage, trained (and cached) first

    def make() -> DiffusionModule:
        model = None
        if latent:  # its denoiser starts random (seeded by fit); its VAE is the trained one, frozen, and scaled
            model = build_model(cfg.model, info)
            model.vae.load_state_dict(vae.state_dict())
            model.scaling_factor.fill_(vae_info["vae_scaling_factor"])
        return DiffusionModule(cfg.model, cfg.objective, cfg.schedule, cfg.train, info, model=model)

    def train(work: Path) -> dict:
        logger = training_logger(cfg.tracker, Path(cfg.out_dir) / cfg.name, f"train-{key}", group=cfg.name,
                                 config={"model_key": key, **key_config(cfg)})
        try:
            module = fit(make, cfg.data, cfg.train, cfg.trainer, work, logger=logger)
        finally:
            finish_logger(logger)
        return write_model_dir(module, cfg, info, work, **vae_info)

    final, meta, cached = cached_model_dir(models_root(cfg), key, train)
    return load_model_dir(final, cfg.model, info, device), _train_info(cfg, final, meta, cached=cached)


def vae_train(cfg) -> dict:
    """The first stage's training settings: ``train.*`` with ``model.vae_max_steps`` steps."""
    return elide_defaults({"train": {**to_plain(cfg.train), "max_steps": int(cfg.model.vae_max_steps)}})["train"]


def vae_key_config(cfg) -> dict:
    """What changes a latent family's VAE: the data (folders by content) and the VAE's keys and training settings, or
    a pretrained VAE's content (its scaling factor and PSNR are measured on the data). Not the denoiser's keys."""
    data = {k: v for k, v in to_plain(cfg.data).items() if k not in NOT_IN_KEY["data"]}
    data.update(data_key(cfg.data))
    m = cfg.model
    if m.vae:
        return {"network": "autoencoder_kl", "data": data, "pretrained": str(m.vae),
                "pretrained_content": path_fingerprint(m.vae)}
    return {"network": "autoencoder_kl", "data": data, "train": vae_train(cfg),
            "vae": {"latent_channels": int(m.latent_channels), "block_out_channels": list(m.vae_block_out_channels),
                    "norm_num_groups": int(m.norm_num_groups), "kl_weight": float(m.vae_kl_weight)}}


@torch.no_grad()
def vae_stats(vae, data_cfg, seed: int = 0, batch_size: int = 256) -> dict:
    """vae_scaling_factor = 1 / std(z), z ~ q(z | x) (seeded) over the train split, so the latents the denoiser sees
    have unit variance (how SD's 0.18215 was measured, Rombach et al. 2022 §G); vae_psnr = 10 log10(2² / MSE) of
    D(mode q(z | x)) against the held-out split (images in [-1, 1]; one MSE over every pixel), in dB."""
    vae = vae.eval()
    dev = next(vae.parameters()).device  # wherever training left it (a GPU): the data comes to it
    g = torch.Generator(device=dev).manual_seed(seed)
    z = [vae.encode(x.to(dev)).latent_dist.sample(generator=g).double()
         for x, _ in torch.utils.data.DataLoader(build_dataset(data_cfg, "train"), batch_size=batch_size)]
    sq, n = 0.0, 0
    for x, recon in held_out_reconstructions(vae, data_cfg, batch_size):
        sq += float((recon.double() - x.double()).pow(2).sum())
        n += x.numel()
    return {"vae_scaling_factor": float(1 / torch.cat(z).std()), "vae_psnr": float(10 * np.log10(4 / (sq / n)))}


@torch.no_grad()
def held_out_reconstructions(vae, data_cfg, batch_size: int = 256):
    """(x, D(mode q(z | x))) per batch of the held-out split, on the VAE's device: what its PSNR and its
    reconstruction FID (bench.pipeline.model_columns) are measured on."""
    dev = next(vae.parameters()).device
    for x, _ in torch.utils.data.DataLoader(build_dataset(data_cfg, "test"), batch_size=batch_size):
        x = x.to(dev)
        yield x, vae.decode(vae.encode(x).latent_dist.mode()).sample


def load_or_train_vae(cfg) -> tuple[torch.nn.Module, dict]:
    """(the latent family's AutoencoderKL in eval mode on ``cfg.device``, info: vae_key, vae_path, vae_scaling_factor,
    vae_psnr, vae_train_steps, vae_train_seconds, vae_num_params). ``model.vae`` set: that VAE, measured once and its
    measurements cached; else trained (:class:`VAEModule`) on the train split and cached like a model."""
    info = get_data_info(cfg.data)
    key_cfg = vae_key_config(cfg)
    key = config_hash(key_cfg)
    m = cfg.model

    def train(work: Path) -> dict:
        if m.vae:
            work.mkdir(parents=True, exist_ok=True)
            vae = build_vae(m, info)
            atomic_write_text(work / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(key_cfg)))
            meta = {"model_key": key, "train_steps": 0, "train_seconds": 0.0, "num_params": num_params(vae),
                    "data_id": info.id, "network": "autoencoder_kl", **vae_stats(vae, cfg.data)}
            atomic_write_json(work / "meta.json", meta)  # no weights here: they are model.vae's, keyed by content
            return meta
        settings = OmegaConf.create(vae_train(cfg))
        module = fit(lambda: VAEModule(cfg, info, build_vae(m, info), settings, m.vae_kl_weight), cfg.data, settings,
                     cfg.trainer, work)
        return write_model_dir(module, cfg, info, work, key=key, config=key_cfg, network="autoencoder_kl",
                               **vae_stats(module.ema, cfg.data))

    path, meta, _ = cached_model_dir(models_root(cfg), key, train)
    device = resolve_device(cfg.device)
    vae = build_vae(m, info).eval().to(device) if m.vae else load_model_dir(path, m, info, device,
                                                                           model=build_vae(m, info))
    return vae, {"vae_key": key, "vae_path": str(path), "vae_scaling_factor": float(meta["vae_scaling_factor"]),
                 "vae_psnr": float(meta["vae_psnr"]), "vae_train_steps": int(meta["train_steps"]),
                 "vae_train_seconds": float(meta["train_seconds"]), "vae_num_params": int(meta["num_params"])}


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


def latent_columns(cfg, vae_info: dict) -> dict:
    """A latent family's row columns: latent_shape and its VAE's key, reconstruction PSNR, scaling factor, size and
    training steps, from ``vae_info`` (:func:`load_or_train_vae`'s)."""
    info = get_data_info(cfg.data)
    return {"latent_shape": list(latent_info(cfg.model, info).shape),
            **{k: vae_info[k] for k in ("vae_key", "vae_psnr", "vae_scaling_factor", "vae_num_params",
                                        "vae_train_steps")}}
