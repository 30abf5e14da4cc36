"""One cell's sampling and scoring in resumable shards, on 1 or N processes (Lightning Fabric DDP; gloo on CPU).

The cell's images 0..N·repeats-1 are cut into fixed index ranges of ``sampling.shard_size`` (default: one batch).
Each shard is sampled by whatever the cell samples (a :class:`bench.sampling.subject.Subject`: the harness's own
model or a loaded diffusers pipeline; image i seeded ``seed + i``, as in one process), measured by the scorer
(feature-net features and logits, CLIP scores, or the points themselves) and written atomically to
``cells/<key>/shards/<start>-<stop>.npz`` with its cost counters and the samples the cell keeps. Ranks take the
missing shards round-robin, so a killed cell restarts where it stopped, with any ``sampling.devices``; a shard on
disk that lacks samples this run keeps (written without ``sampling.save_samples``) is sampled again. The calling
process (rank 0's side) then folds every shard into one Scorer *in index order*, exactly as a 1-process run folds
its batches, and alone writes the scores, artifacts and row: FID/KID/IS do not depend on the world size (the
features are gathered, not averaged; float64 statistics are computed once from them), and neither do the samples.

Processes are started by Fabric on the local machine (DDP; forkserver on CPU, spawn on CUDA): one cell per node;
SLURM fans cells out with the submitit launcher and a cell spreads over its node's GPUs. ``LightningEnvironment`` is
pinned so a SLURM allocation with one task is not mistaken for a multi-task job.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.fabric.strategies import DDPStrategy

from bench import ranks
from bench.metrics.cost import CostMeter
from bench.metrics.scorer import Scorer
from bench.metrics.stats import save_npz_atomic
from bench.sampling import NonFiniteError
from bench.sampling.subject import SamplingCall, Subject

log = logging.getLogger("bench")
SHARDS = "shards"
FAULT_ENV = "BENCH_FAULT_AFTER_SHARDS"  # tests only: a rank raises after writing this many shards (a killed run)


def enabled(sampling_cfg) -> bool:
    return int(sampling_cfg.devices) > 1 or int(sampling_cfg.shard_size) > 0


def plan(sampling_cfg, total: int) -> list[tuple[int, int]]:
    """The cell's shards: fixed [start, stop) ranges of its ``total`` images, independent of the world size."""
    size = int(sampling_cfg.shard_size) or int(sampling_cfg.batch_size)
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def shard_path(cell_dir: Path, a: int, b: int) -> Path:
    return Path(cell_dir) / SHARDS / f"{a:09d}-{b:09d}.npz"


def samples_needed(a: int, b: int, sampling_cfg) -> int:
    """How many of shard [a, b)'s samples the cell keeps: all of them with ``sampling.save_samples`` (samples.npz),
    else those that fall in the grid (the first ``sampling.grid_size`` images of the cell)."""
    return b - a if sampling_cfg.save_samples else max(0, min(b, int(sampling_cfg.grid_size)) - a)


def _load_shard(path: Path, cell: str, need: int) -> dict | None:
    """A finished shard of this cell holding the ``need`` samples this run keeps of it, or None (missing, not
    readable, or written by a run that kept fewer samples: it is sampled again)."""
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
    have = len(d["x"]) if "x" in d else 0
    if have < need:
        log.info("shard %s holds %d of the %d samples this run keeps (sampling.save_samples / grid_size changed): "
                 "sampling it again", path.name, have, need)
        return None
    return d


def _sample_shards(subject: Subject, call: SamplingCall, scorer: Scorer, sampling_cfg, cell_dir: Path, shards,
                   rank: int, world: int, progress: bool) -> dict:
    """Sample, measure and write ``shards`` (this rank's share); return this rank's cost counters."""

    fault = int(os.environ.get(FAULT_ENV, "0"))
    meter = CostMeter(call.device)
    for n, (a, b) in enumerate(shards, 1):
        rows0, images0, k0, cls0 = meter.rows, meter.images, len(meter.batch_seconds), meter.classifier_rows
        parts: dict[str, list] = {}
        xs = []
        need = samples_needed(a, b, sampling_cfg)
        for batch in subject.batches(call, meter, start=a, stop=b, progress=progress):
            for k, v in scorer.measure(batch).items():
                parts.setdefault(k, []).append(v)
            if need:
                xs.append(batch.x.cpu().numpy())
        arrays = {k: np.concatenate(v) for k, v in parts.items()}
        if xs:
            arrays["x"] = np.concatenate(xs)[:need]
        save_npz_atomic(shard_path(cell_dir, a, b), cell=np.str_(Path(cell_dir).name), index=np.arange(a, b),
                        rank=np.int64(rank), world_size=np.int64(world), rows=np.int64(meter.rows - rows0),
                        images=np.int64(meter.images - images0),
                        classifier_rows=np.int64(meter.classifier_rows - cls0),
                        batch_seconds=np.asarray(meter.batch_seconds[k0:], np.float64),
                        batch_sizes=np.asarray(meter.batch_sizes[k0:], np.int64), **arrays)
        if fault and n >= fault:
            raise RuntimeError(f"{FAULT_ENV}={fault}: rank {rank} stops after {n} shards (fault injection)")
    summary = meter.summary()
    return {"rank": rank, "device": str(call.device), "shards": len(shards), "images": meter.images,
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


class _Job:
    """What every rank needs, in one plain object (sent to the ranks by value: :class:`bench.ranks.ByValue`)."""

    def __init__(self, subject: Subject, call: SamplingCall, scorer_cfg, info, sampling_cfg, cell_dir: Path, pending,
                 progress: bool):
        self.subject, self.call, self.scorer_cfg, self.info = subject, call, scorer_cfg, info
        self.sampling_cfg, self.cell_dir, self.pending, self.progress = sampling_cfg, cell_dir, pending, progress


def _fabric_worker(fabric, job: _Job):
    """One rank of ``Fabric.launch``: its round-robin share of the pending shards; rank 0 returns every rank's
    counters (gathered)."""

    rank, world, device = fabric.global_rank, fabric.world_size, fabric.device
    if device.type == "cuda":
        torch.cuda.set_device(device)  # "cuda" in the feature nets' .to() means this rank's GPU
    subject = job.subject.to(device)
    call = dataclasses.replace(job.call, device=str(device))
    scorer = Scorer(job.scorer_cfg, job.info, None)
    out = _errors(_sample_shards, subject, call, scorer, job.sampling_cfg, job.cell_dir, job.pending[rank::world],
                  rank, world, job.progress and rank == 0)
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, out)
    return gathered if rank == 0 else None


def _launch(subject: Subject, call: SamplingCall, scorer_cfg, info, sampling_cfg, cell_dir: Path, pending,
            progress: bool) -> list[dict]:

    world = int(sampling_cfg.devices)
    accelerator = "cuda" if str(call.device).startswith("cuda") else "cpu"
    fabric = L.Fabric(accelerator=accelerator, devices=world, strategy=_rank_strategy(accelerator),
                      plugins=[LightningEnvironment()])
    try:  # ranks get a CPU copy, by value, and move it to their own device
        job = _Job(subject.to("cpu"), call, scorer_cfg, info, sampling_cfg, cell_dir, pending, progress)
        return fabric.launch(_fabric_worker_forked, ranks.ByValue(job), ranks.SpawnLike())
    finally:
        subject.to(call.device)


def _rank_strategy(accelerator: str):
    """Forkserver ranks on CPU, spawned ones on CUDA (:mod:`bench.ranks`)."""
    return DDPStrategy(start_method="forkserver") if ranks.forkserver(accelerator) else "ddp_spawn"


def _fabric_worker_forked(fabric, job: ranks.ByValue, spawn_like: ranks.SpawnLike):
    spawn_like.restore()
    return _fabric_worker(fabric, job.get())


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


def sample_and_score(subject: Subject, call: SamplingCall, scorer: Scorer, scorer_cfg, info, cell_dir: Path,
                     sampling_cfg, progress: bool) -> tuple[dict, dict, torch.Tensor]:
    """The sharded path of ``bench.cell``: (metrics, cost, the samples kept: all with sampling.save_samples, else the
    grid's). ``scorer`` folds every shard in index order; ``scorer_cfg`` and ``info`` build each rank's own scorer.
    A shard on disk is reused only when it holds every sample this run keeps of it (else it is sampled again), so a
    resumed cell's samples.npz is always complete."""

    cell_dir = Path(cell_dir)
    cell = cell_dir.name
    shards = plan(sampling_cfg, call.num_samples)
    pending = [(a, b) for a, b in shards
               if _load_shard(shard_path(cell_dir, a, b), cell, samples_needed(a, b, sampling_cfg)) is None]
    world = int(sampling_cfg.devices)
    resumed = len(shards) - len(pending)
    if resumed:
        log.info("cell %s: %d of %d shards already on disk (resume)", cell, resumed, len(shards))
    t0 = time.perf_counter()
    per_rank: list[dict] = []
    if pending and world > 1:
        per_rank = _launch(subject, call, scorer_cfg, info, sampling_cfg, cell_dir, pending, progress)
    elif pending:
        per_rank = [_errors(_sample_shards, subject, call, scorer, sampling_cfg, cell_dir, pending, 0, 1, progress)]
    _raise_rank_errors(per_rank)
    log.info("cell %s: %d shards on %d process(es) in %.1fs", cell, len(pending), world, time.perf_counter() - t0)
    loaded, kept = [], []
    for a, b in shards:  # index order: the same folds as one process makes
        need = samples_needed(a, b, sampling_cfg)
        d = _load_shard(shard_path(cell_dir, a, b), cell, need)
        if d is None:
            raise RuntimeError(f"shard {shard_path(cell_dir, a, b)} missing after sampling")
        scorer.add(d["index"], **{k: d[k] for k in scorer.measured if k in d})
        if need:
            kept.append(torch.from_numpy(d["x"][:need]))
        loaded.append(d)
    metrics = scorer.compute()
    cost = _total_cost(loaded, per_rank, call.device)
    cost.update(world_size=world, shard_size=shards[0][1] - shards[0][0], shards=len(shards), shards_resumed=resumed,
                cost_per_rank=per_rank)
    shutil.rmtree(cell_dir / SHARDS, ignore_errors=True)  # scores and gen_stats.npz hold what the cell needs now
    return metrics, cost, torch.cat(kept)
