"""One cell's sampling and scoring in resumable shards, on 1 or N processes (Lightning Fabric DDP; gloo on CPU).

The cell's images 0..N·repeats-1 are cut into fixed index ranges of ``sampling.shard_size`` (default: one batch).
Each shard is sampled (image i seeded ``seed + i``, as in one process), measured by the scorer (feature-net
features and logits, CLIP scores, or the points themselves) and written atomically to
``cells/<key>/shards/<start>-<stop>.npz`` with its cost counters. Ranks take the missing shards round-robin, so a
killed cell restarts where it stopped, with any ``sampling.devices``. The calling process (rank 0's side) then folds
every shard into one Scorer *in index order*, exactly as a 1-process run folds its batches, and alone writes the
scores, artifacts and row: FID/KID/IS do not depend on the world size (the features are gathered, not averaged;
float64 statistics are computed once from them), and neither do the samples.

Processes are started by Fabric on the local machine (``ddp_fork`` on CPU, ``ddp_spawn`` on GPUs): one cell per
node; SLURM fans cells out with the submitit launcher and a cell spreads over its node's GPUs. ``LightningEnvironment``
is pinned so a SLURM allocation with one task is not mistaken for a multi-task job.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment

from bench.metrics.cost import CostMeter
from bench.metrics.scorer import Scorer
from bench.metrics.stats import save_npz_atomic
from bench.sampling import ClassifierGuidance, NonFiniteError, build_sampler, sample
from bench.schema import ConfigError

log = logging.getLogger("bench")
SHARDS = "shards"
FAULT_ENV = "BENCH_FAULT_AFTER_SHARDS"  # tests only: a rank raises after writing this many shards (a killed run)


def enabled(cfg) -> bool:
    return int(cfg.sampling.devices) > 1 or int(cfg.sampling.shard_size) > 0


def plan(cfg) -> list[tuple[int, int]]:
    """The cell's shards: fixed [start, stop) image ranges, independent of the world size."""
    total = int(cfg.sampling.num_samples) * int(cfg.metric.repeats)
    size = int(cfg.sampling.shard_size) or int(cfg.sampling.batch_size)
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def shard_path(cell_dir: Path, a: int, b: int) -> Path:
    return Path(cell_dir) / SHARDS / f"{a:09d}-{b:09d}.npz"


def _load_shard(path: Path, cell: str) -> dict | None:
    """A finished shard of this cell, or None (missing, or not readable: it is sampled again)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except Exception as e:  # written atomically, so only a foreign or damaged file lands here
        log.warning("shard %s unreadable (%s): sampling it again", path, e)
        return None
    if str(d.get("cell")) != cell:
        log.warning("shard %s belongs to cell %s, not %s: sampling it again", path, d.get("cell"), cell)
        return None
    return d


def _sample_shards(cfg, info, model, scheduler, scorer, cell_dir: Path, shards, device, batch_size: int,
                   rank: int, world: int, progress: bool, guide=None) -> dict:
    """Sample, measure and write ``shards`` (this rank's share); return this rank's cost counters. ``guide``: the
    cell's classifier guidance (bench.sampling.ClassifierGuidance), whose calls each shard counts."""

    s = cfg.sampling
    fault = int(os.environ.get(FAULT_ENV, "0"))
    meter = CostMeter(device)
    for n, (a, b) in enumerate(shards, 1):
        rows0, images0, k0, cls0 = meter.rows, meter.images, len(meter.batch_seconds), meter.classifier_rows
        parts: dict[str, list] = {}
        xs = []
        for batch in sample(model, scheduler, shape=tuple(info.shape), num_samples=b - a, batch_size=batch_size,
                            seed=s.seed, num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                            num_classes=getattr(model, "num_classes", info.num_classes),  # the model's conditioning
                            device=device, cost=meter, eta=cfg.sampler.eta, progress=progress, start=a,
                            classifier_guidance=guide):
            for k, v in scorer.measure(batch).items():
                parts.setdefault(k, []).append(v)
            if s.save_samples or a < s.grid_size:
                xs.append(batch.x.cpu().numpy())
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        if xs:
            x = np.concatenate(xs)
            arrays["x"] = x if s.save_samples else x[: max(0, s.grid_size - a)]
        save_npz_atomic(shard_path(cell_dir, a, b), cell=np.str_(Path(cell_dir).name), index=np.arange(a, b),
                        rank=np.int64(rank), world_size=np.int64(world), rows=np.int64(meter.rows - rows0),
                        images=np.int64(meter.images - images0),
                        classifier_rows=np.int64(meter.classifier_rows - cls0),
                        batch_seconds=np.asarray(meter.batch_seconds[k0:], np.float64),
                        batch_sizes=np.asarray(meter.batch_sizes[k0:], np.int64), **arrays)
        if fault and n >= fault:
            raise RuntimeError(f"{FAULT_ENV}={fault}: rank {rank} stops after {n} shards (fault injection)")
    summary = meter.summary()
    return {"rank": rank, "device": str(device), "shards": len(shards), "images": meter.images,
            "sample_s": round(summary["wall_s"], 4), "images_per_s": summary["images_per_s"],
            "peak_mem_mb": summary["peak_mem_mb"], "mem_kind": summary["mem_kind"]}


def _errors(fn, *args) -> dict:
    """Run fn; NaN/Inf and CUDA OOM come back as data (every rank must reach the gather), not as a dead rank."""

    try:
        return fn(*args)
    except NonFiniteError as e:
        return {"error": "nonfinite", "step": e.step, "timestep": e.timestep, "message": str(e)}
    except torch.cuda.OutOfMemoryError as e:
        return {"error": "oom", "message": str(e)}


def _fabric_worker(fabric, cfg, info, model, cell_dir, pending, batch_size, classifier=None):
    """One rank of ``Fabric.launch``: its round-robin share of the pending shards; rank 0 returns every rank's
    counters (gathered)."""

    rank, world, device = fabric.global_rank, fabric.world_size, fabric.device
    if device.type == "cuda":
        torch.cuda.set_device(device)  # "cuda" in the feature nets' .to() means this rank's GPU
    model = model.to(device)
    guide = (ClassifierGuidance.from_config(classifier.to(device), cfg, float(cfg.sampling.classifier_scale))
             if classifier is not None else None)
    scorer = Scorer(cfg, info, None)
    mine = pending[rank::world]
    out = _errors(_sample_shards, cfg, info, model, build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name,
                                                             lcm_grid=cfg.distill.num_ddim_timesteps), scorer, cell_dir, mine, device, batch_size,
                  rank, world, bool(cfg.trainer.enable_progress_bar) and rank == 0, guide)
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, out)
    return gathered if rank == 0 else None


def _launch(cfg, info, model, cell_dir: Path, pending, device: str, batch_size: int, guide=None) -> list[dict]:

    world = int(cfg.sampling.devices)
    accelerator = "cuda" if str(device).startswith("cuda") else "cpu"
    # spawn, on CPU too: a forked rank deadlocks in its first parallel op when the parent has used an OpenMP thread
    # pool (OMP_NUM_THREADS > 1; seen here as ranks idle in load_state_dict); CUDA is initialised here anyway
    fabric = L.Fabric(accelerator=accelerator, devices=world, strategy="ddp_spawn", plugins=[LightningEnvironment()])
    model_cpu = model.to("cpu")  # spawned ranks get a CPU copy and move it to their own device
    classifier = guide.classifier.to("cpu") if guide is not None else None  # the same, for the guiding classifier
    try:
        return fabric.launch(_fabric_worker, cfg, info, model_cpu, cell_dir, pending, batch_size, classifier)
    finally:
        model.to(device)
        if classifier is not None:
            classifier.to(device)


def _raise_rank_errors(per_rank: list[dict]) -> None:

    for r in per_rank:
        if r.get("error") == "nonfinite":
            raise NonFiniteError(int(r["step"]), r.get("timestep"))
    for r in per_rank:
        if r.get("error") == "oom":
            raise torch.cuda.OutOfMemoryError(r["message"])


def _total_cost(shards: list[dict], per_rank: list[dict], device: str) -> dict:
    """Cell cost from every shard (nfe, latency percentiles: resumed shards included) and this run's ranks
    (images_per_s = their summed throughput, peak memory = the largest rank's)."""
    rows = sum(int(d["rows"]) for d in shards)
    images = sum(int(d["images"]) for d in shards)
    classifier_rows = sum(int(d.get("classifier_rows", 0)) for d in shards)
    per_image = np.concatenate([d["batch_seconds"] / np.maximum(d["batch_sizes"], 1) for d in shards])
    ran = [r for r in per_rank if r["images"]]
    seconds = sum(float(d["batch_seconds"].sum()) for d in shards)
    return {
        "nfe": rows / images if images else 0.0,
        "latency_p50": float(np.percentile(per_image, 50)) if len(per_image) else float("nan"),
        "latency_p95": float(np.percentile(per_image, 95)) if len(per_image) else float("nan"),
        "images_per_s": (float(sum(r["images_per_s"] for r in ran)) if ran
                         else images / seconds if seconds > 0 else float("nan")),
        "peak_mem_mb": float(max((r["peak_mem_mb"] for r in per_rank), default=float("nan"))),
        "mem_kind": per_rank[0]["mem_kind"] if per_rank else ("cuda" if str(device).startswith("cuda") else "rss"),
        "wall_s": max((r["sample_s"] for r in per_rank), default=0.0),
        **({"nfe_classifier": classifier_rows / images if images else 0.0} if classifier_rows else {}),
    }


def sample_and_score(cfg, info, model, scheduler, cell_dir: Path, device: str, batch_size: int, guide=None):
    """The sharded path of ``pipeline._sample_and_score``: (metrics, cost, grid tensors, kept sample tensors).
    ``guide``: classifier guidance, carried to every shard and rank."""

    cell_dir = Path(cell_dir)
    cell = cell_dir.name
    shards = plan(cfg)
    scorer = Scorer(cfg, info, cell_dir)  # also caches the reference statistics before any rank needs them
    pending = [(a, b) for a, b in shards if _load_shard(shard_path(cell_dir, a, b), cell) is None]
    world = int(cfg.sampling.devices)
    resumed = len(shards) - len(pending)
    if resumed:
        log.info("cell %s: %d of %d shards already on disk (resume)", cell, resumed, len(shards))
    t0 = time.perf_counter()
    per_rank: list[dict] = []
    if pending and world > 1:
        per_rank = _launch(cfg, info, model, cell_dir, pending, device, batch_size, guide)
    elif pending:
        per_rank = [_errors(_sample_shards, cfg, info, model, scheduler, scorer, cell_dir, pending, device,
                            batch_size, 0, 1, bool(cfg.trainer.enable_progress_bar), guide)]
    _raise_rank_errors(per_rank)
    log.info("cell %s: %d shards on %d process(es) in %.1fs", cell, len(pending), world, time.perf_counter() - t0)
    loaded, grid, keep = [], [], []
    for a, b in shards:  # index order: the same folds as one process makes
        d = _load_shard(shard_path(cell_dir, a, b), cell)
        if d is None:
            raise RuntimeError(f"shard {shard_path(cell_dir, a, b)} missing after sampling")
        scorer.add(d["index"], **{k: d[k] for k in ("feats", "logits", "clip", "points") if k in d})
        if "x" in d:
            x = torch.from_numpy(d["x"])
            (keep if cfg.sampling.save_samples else grid).append(x)
        loaded.append(d)
    if cfg.sampling.save_samples:
        grid = [torch.cat(keep)[: cfg.sampling.grid_size]] if keep else []
    metrics = scorer.compute()
    cost = _total_cost(loaded, per_rank, device)
    cost.update(world_size=world, shard_size=shards[0][1] - shards[0][0], shards=len(shards), shards_resumed=resumed,
                cost_per_rank=per_rank)
    shutil.rmtree(cell_dir / SHARDS, ignore_errors=True)  # scores and gen_stats.npz hold what the cell needs now
    return metrics, cost, grid, keep
