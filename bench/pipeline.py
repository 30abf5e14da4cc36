"""The path of one cell, each arrow one call:

    prepare (validate) -> load_or_train -> sample (streamed) -> Scorer.update per batch -> row -> results + tracker
"""
from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from bench.results import append_row, done_keys, read_rows
from bench.schema import ConfigError
from bench.tracking import Tracker
from bench.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, resolve_device, versions

log = logging.getLogger("bench")


class CellFailed(RuntimeError):
    """A cell that cannot produce numbers (NaN during sampling, out of memory at batch size 1): recorded, not fatal."""

    def __init__(self, msg: str, step: int | None = None):
        super().__init__(msg)
        self.step = step


def prepare(cfg: DictConfig):
    """Validate the composed config; return the data info. Raises ConfigError."""
    from bench.data import get_data_info
    from bench.validate import validate

    try:
        info = get_data_info(cfg.data)
        validate(cfg, info)
    except MissingMandatoryValue as e:
        raise ConfigError(str(e.full_key), "???", "a value (it has no default)") from None
    return info


def set_determinism(on: bool) -> None:
    """CPU runs are deterministic as they are; on GPU, `sampling.deterministic=true` also pins cuDNN and turns
    TF32 off (slower), so samples and scores repeat bit for bit on the same GPU and software."""
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def hardware(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} x{os.cpu_count()} threads={torch.get_num_threads()}"


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats -> uint8 NHWC, quantised exactly as the scorer sees them."""
    from bench.metrics.stats import quantize_uint8

    return quantize_uint8(x).permute(0, 2, 3, 1).cpu().numpy()


def write_grid(path: Path, images: np.ndarray) -> None:
    """A square-ish grid of uint8 NHWC images as PNG (nearest-neighbour upscaled so 8x8 digits are visible)."""
    from PIL import Image

    n, h, w, c = images.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    pad = 1
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    scale = max(1, 256 // max(canvas.shape[:2]))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_scatter(path: Path, points: np.ndarray, reference: np.ndarray | None, title: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.75", label="true")
    ax.scatter(points[:, 0], points[:, 1], s=1, c="C0", label="generated")
    ax.set_title(title, fontsize=8)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=6, markerscale=4)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def uses_channels_last(cfg) -> bool:
    """cost.channels_last applies to the (convolutional) UNet only."""
    return bool(cfg.cost.channels_last and cfg.model.name == "unet")


def _sample_and_score(cfg, info, model, scheduler, cell_dir: Path, device: str, batch_size: int):
    from bench import distributed

    s = cfg.sampling
    if distributed.enabled(cfg):  # resumable shards, on sampling.devices processes
        metrics, cost, grid, keep = distributed.sample_and_score(cfg, info, model, scheduler, cell_dir, device,
                                                                 batch_size)
    else:
        metrics, cost, grid, keep = _sample_and_score_here(cfg, info, model, scheduler, cell_dir, device, batch_size)
    grid_x = torch.cat(grid)
    if info.kind == "images":
        write_grid(cell_dir / "grid.png", to_uint8(grid_x))
        if keep:
            _save_npz(cell_dir / "samples.npz", images=to_uint8(torch.cat(keep)))
    else:
        from bench.data import sample_true

        ref = sample_true(cfg.data, len(grid_x), seed=10_000 + s.seed)
        title = f"{cfg.sampler.name} {s.num_inference_steps} steps"
        write_scatter(cell_dir / "grid.png", grid_x.numpy(), ref, title)
        if keep:
            _save_npz(cell_dir / "samples.npz", points=torch.cat(keep).numpy().astype(np.float32))
    return metrics, cost


def _sample_and_score_here(cfg, info, model, scheduler, cell_dir: Path, device: str, batch_size: int):
    """One process, streamed: (metrics, cost, grid tensors, kept sample tensors)."""
    from bench.metrics.cost import CostMeter
    from bench.metrics.scorer import Scorer
    from bench.sampling import sample

    s, c = cfg.sampling, cfg.cost
    meter = CostMeter(device, c.warmup_batches, c.min_timed_batches)
    scorer = Scorer(cfg, info, cell_dir)
    keep, grid = [], []
    total = s.num_samples * cfg.metric.repeats  # repeat r = images [r*N, (r+1)*N): disjoint per-image seeds
    kwargs = dict(shape=tuple(info.shape), num_samples=total, batch_size=batch_size, seed=s.seed,
                  num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                  num_classes=info.num_classes, device=device, eta=cfg.sampler.eta,
                  inference_mode=c.inference_mode, channels_last=uses_channels_last(cfg))
    score_s = 0.0
    for batch in sample(model, scheduler, cost=meter, progress=cfg.trainer.enable_progress_bar, **kwargs):
        t0 = time.perf_counter()
        scorer.update(batch)
        score_s += time.perf_counter() - t0
        need = s.grid_size - sum(len(g) for g in grid)
        if need > 0:
            grid.append(batch.x[:need].cpu())
        if s.save_samples:
            keep.append(batch.x.cpu())
    t0 = time.perf_counter()
    metrics = scorer.compute()
    score_s += time.perf_counter() - t0
    for _ in range(c.repeats - 1):  # re-time the sampling only; the samples are the ones already scored
        again = CostMeter(device, c.warmup_batches)
        for _ in sample(model, scheduler, cost=again, progress=False, **kwargs):
            pass
        meter.add_timing(again)
    cost = {**meter.summary(), "score_s": score_s, "inference_mode": bool(c.inference_mode),
            "channels_last": uses_channels_last(cfg)}
    return metrics, cost, grid, keep


def _save_npz(path: Path, **arrays) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def base_row(cfg: DictConfig, info, key: str, train_info: dict, root: Path, cell_dir: Path, device: str) -> dict:
    s = cfg.sampling
    return {
        "cell_key": key,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": cfg.name,
        "data": info.id,
        "model": cfg.model.name,
        "objective": cfg.objective.name,
        "schedule": cfg.schedule.name,
        "sampler": cfg.sampler.name,
        "eta": float(cfg.sampler.eta),
        "timestep_spacing": cfg.sampler.timestep_spacing,
        "num_inference_steps": int(s.num_inference_steps),
        "guidance_scale": float(s.guidance_scale),
        "num_samples": int(s.num_samples),
        "repeats": int(cfg.metric.repeats),
        "batch_size": int(s.batch_size),
        "seed": int(s.seed),
        "model_key": train_info.get("model_key"),
        "train_steps": train_info.get("train_steps"),
        "train_seconds": train_info.get("train_seconds"),
        "num_params": train_info.get("num_params"),
        "distill_method": cfg.distill.method,
        "distill_steps": train_info.get("distill_steps"),
        "distill_train_steps": train_info.get("distill_train_steps"),
        "distill_seconds": train_info.get("distill_seconds"),
        **versions(),
        "device": device,
        "hardware": hardware(device),
        "config_path": str((cell_dir / "config.yaml").relative_to(root)),
        "cell_dir": str(cell_dir.relative_to(root)),
    }


def run_cell(cfg: DictConfig, info, root: Path, key: str, cell_cfg: dict) -> dict | None:
    from bench.sampling import NonFiniteError, build_scheduler
    from bench.training import load_or_train

    results = root / "results.jsonl"
    if key in done_keys(results):
        log.info("cell %s already in %s: skipped (resume)", key, results)
        return None
    set_determinism(cfg.sampling.deterministic)
    if cfg.cost.num_threads:
        torch.set_num_threads(int(cfg.cost.num_threads))  # pinned for the cell; the row records num_threads
    device = resolve_device(cfg.device)
    model, train_info = load_or_train(cfg)
    if uses_channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    cell_dir = root / "cells" / key
    cell_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    scheduler = build_scheduler(cfg)
    atomic_write_json(cell_dir / "scheduler.json", dict(scheduler.config))
    row = base_row(cfg, info, key, train_info, root, cell_dir, device)
    t0 = time.perf_counter()
    batch_size = cfg.sampling.batch_size
    while True:
        try:
            metrics, cost = _sample_and_score(cfg, info, model, scheduler, cell_dir, device, batch_size)
            row.update(status="ok", batch_size=batch_size, **cost, **metrics)
            break
        except NonFiniteError as e:
            row.update(status="failed", error=str(e), failed_step=e.step)
            break
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                row.update(status="failed", error="CUDA out of memory at sampling.batch_size=1")
                break
            batch_size //= 2  # per-image seeds: the samples do not depend on the batch size
            torch.cuda.empty_cache()
            log.warning("CUDA out of memory: retrying the cell with sampling.batch_size=%d", batch_size)
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    if row["status"] != "ok":
        log.error("cell %s failed: %s", key, row["error"])
        if cfg.fail_fast:
            raise CellFailed(row["error"], row.get("failed_step"))
    atomic_write_json(cell_dir / "metrics.json", row)
    append_row(results, row)
    grid = cell_dir / "grid.png"
    Tracker(cfg.tracker, root).log_cell(cell_cfg, row, str(grid) if grid.exists() else None)
    log.info("cell %s: %s", key, {k: row.get(k) for k in ("sampler", "num_inference_steps", "guidance_scale",
                                                          "nfe", "fid", "kid", "is", "swd", "mmd", "status")
                                  if row.get(k) is not None})
    return row


SUMMARY_COLUMNS = ["distill_method", "sampler", "eta", "num_inference_steps", "guidance_scale", "nfe", "fid", "kid",
                   "is", "clip_score", "swd", "mmd", "latency_p50", "images_per_s", "status"]


def summarise(cfg: DictConfig) -> None:
    """Print the results table and where things are; log the sweep's ablation table to the tracker."""
    import pandas as pd

    root = Path(cfg.out_dir) / cfg.name
    rows = read_rows(root / "results.jsonl")
    if not rows:
        return
    df = pd.DataFrame(rows)
    cols = [c for c in SUMMARY_COLUMNS if c in df.columns and df[c].notna().any()
            and not (c == "distill_method" and (df[c] == "none").all())]  # shown in distillation studies only
    with pd.option_context("display.width", 200, "display.max_rows", 500, "display.float_format", "{:.4g}".format):
        keys = ("distill_method", "sampler", "eta", "num_inference_steps", "guidance_scale")
        print(df[cols].sort_values([c for c in keys if c in cols]).to_string(index=False))
    print(f"\nresults: {root / 'results.jsonl'} ({len(rows)} rows)\ncells:   {root / 'cells'}/<cell_key>/"
          f"{{grid.png,metrics.json,config.yaml}}\nreport:  bench-report {root}")
    Tracker(cfg.tracker, root).log_table(cfg.name, rows)
