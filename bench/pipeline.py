"""The path of one cell, each arrow one call:

    prepare (validate) -> load_model (teacher or distilled student) -> sample (streamed) -> Scorer.update per batch
    -> Row -> results + artifacts + tracker
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bench import distill, distributed, sampling, training
from bench.sampling import pipelines
from bench.artifacts import save_npz, write_grid, write_scatter
from bench.data import DataInfo, sample_true
from bench.env import hardware, resolve_device, set_determinism, versions
from bench.images import to_uint8_nhwc
from bench.metrics.cost import CostMeter
from bench.metrics.scorer import Scorer, images_fid
from bench.models import MODELS
from bench.evaluators import load_feature_net
from bench.results import ResultsError, Row, append_row, is_finished, read_rows
from bench.tracking import Tracker
from bench.utils import atomic_write_json, atomic_write_text, replace_dir
from bench.validate import validate

log = logging.getLogger("bench")


class CellFailed(RuntimeError):
    """A cell that cannot produce numbers (NaN during sampling, out of memory at batch size 1): recorded, not fatal."""

    def __init__(self, msg: str, step: int | None = None):
        super().__init__(msg)
        self.step = step


def prepare(cfg: DictConfig) -> DataInfo:
    """Validate the composed config; return the data info. Raises ConfigError."""
    return validate(cfg)


def load_model(cfg: DictConfig, info: DataInfo) -> tuple[torch.nn.Module, dict]:
    """The model a cell samples: the trained model, its distilled student when ``distill.method`` is set, or a
    local diffusers pipeline (``model=pipeline``, a :class:`bench.sampling.pipelines.LoadedPipeline`)."""
    if cfg.model.name == "pipeline":
        return pipelines.load(cfg, info, resolve_device(cfg.device))
    if cfg.distill.method != "none":
        return distill.load_or_distill(cfg)
    return training.load_or_train(cfg)


def uses_channels_last(cfg) -> bool:
    """cost.channels_last applies to the (convolutional) UNet only."""
    return bool(cfg.cost.channels_last and cfg.model.name == "unet")


def classifier_guidance(cfg, device: str) -> tuple[sampling.ClassifierGuidance | None, dict]:
    """``sampling.classifier_scale`` > 0: the loop's guidance by the harness's noise-aware classifier (cached like a
    model, trained on a miss) and the row's columns for it (scale, classifier key, steps and size); else (None, scale 0,
    no classifier calls and no classifier parameters: every row has these columns, so a study can tabulate them)."""
    scale = float(cfg.sampling.classifier_scale)
    if not scale:
        return None, {"classifier_scale": 0.0, "nfe_classifier": 0.0, "classifier_num_params": 0}
    classifier, info = training.load_or_train_classifier(cfg)
    return (sampling.ClassifierGuidance.from_config(classifier.to(device), cfg, scale),
            {"classifier_scale": scale, "classifier_key": info["classifier_key"],
             "classifier_train_steps": info["train_steps"], "classifier_num_params": info["num_params"]})


def _sample_and_score(cfg, info: DataInfo, model, scheduler, cell_dir: Path, device: str, batch_size: int):
    """Sample and score the cell (here, or in resumable shards on sampling.devices processes), then write its grid
    and saved samples: (scores, cost)."""
    s = cfg.sampling
    guide, guide_columns = classifier_guidance(cfg, device)
    if distributed.enabled(cfg):
        metrics, cost, grid, keep = distributed.sample_and_score(cfg, info, model, scheduler, cell_dir, device,
                                                                 batch_size, guide)
    else:
        metrics, cost, grid, keep = _sample_and_score_here(cfg, info, model, scheduler, cell_dir, device, batch_size,
                                                           guide)
    cost = {**cost, **guide_columns, **model_columns(cfg, info, model)}
    grid_x = torch.cat(grid)
    if info.kind == "images":
        write_grid(cell_dir / "grid.png", to_uint8_nhwc(grid_x))
        if keep:
            save_npz(cell_dir / "samples.npz", images=to_uint8_nhwc(torch.cat(keep)))
    else:
        ref = sample_true(cfg.data, len(grid_x), seed=10_000 + s.seed)
        title = f"{cfg.sampler.name} {s.num_inference_steps} steps"
        write_scatter(cell_dir / "grid.png", grid_x.numpy(), ref, title)
        if keep:
            save_npz(cell_dir / "samples.npz", points=torch.cat(keep).numpy().astype(np.float32))
    return metrics, cost


def model_columns(cfg, info: DataInfo, model) -> dict:
    """The family's own columns. A text family: its text tower (``text_encoder``: label#hash). A latent family: its
    VAE's (:func:`training.latent_columns`) and, with FID on, what its first stage alone costs, on the held-out
    split, against the cell's reference statistics in its feature network: ``vae_rfid`` (FID of the VAE's
    reconstructions D(mode q(z | x))) beside ``real_fid`` (FID of those held-out images themselves: the floor at
    that N), ``vae_rfid_n`` = N."""
    out = {}
    if getattr(model, "text_encoder_id", ""):
        out["text_encoder"] = model.text_encoder_id
    if not MODELS[cfg.model.name].latent:
        return out
    vae, vae_info = training.load_or_train_vae(cfg)
    out.update(training.latent_columns(cfg, vae_info))
    if cfg.metric.name == "none" or not cfg.metric.fid:
        return out
    pairs = list(training.held_out_reconstructions(vae, cfg.data))
    fids = images_fid(cfg, info, {"vae_rfid": [r.clamp(-1, 1) for _, r in pairs], "real_fid": [x for x, _ in pairs]})
    return {**out, **fids, "vae_rfid_n": sum(len(x) for x, _ in pairs)}


def _sample_and_score_here(cfg, info: DataInfo, model, scheduler, cell_dir: Path, device: str, batch_size: int,
                           guide: sampling.ClassifierGuidance | None = None):
    """One process, streamed: (scores, cost, grid tensors, kept sample tensors). Cost follows the protocol of
    bench.metrics.cost (untimed warm-up, median over timed batches, cost.repeats re-timings). ``guide``: classifier
    guidance in the loop."""
    s, c = cfg.sampling, cfg.cost
    meter = CostMeter(device, c.warmup_batches, c.min_timed_batches)
    scorer = Scorer(cfg, info, cell_dir)
    keep, grid = [], []
    total = s.num_samples * cfg.metric.repeats  # repeat r = images [r*N, (r+1)*N): disjoint per-image seeds
    kwargs = dict(shape=tuple(info.shape), num_samples=total, batch_size=batch_size, seed=s.seed,
                  num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                  num_classes=getattr(model, "num_classes", info.num_classes),  # the model's conditioning
                  device=device, eta=cfg.sampler.eta,
                  inference_mode=c.inference_mode, channels_last=uses_channels_last(cfg), classifier_guidance=guide)
    if isinstance(model, pipelines.LoadedPipeline):  # a diffusers pipeline: through its own __call__
        def generate(cost, progress):
            return pipelines.sample(model, scheduler, num_samples=total, batch_size=batch_size, seed=s.seed,
                                    num_inference_steps=s.num_inference_steps, guidance_scale=s.guidance_scale,
                                    size=info.shape[-1], cost=cost, eta=cfg.sampler.eta, progress=progress)
    else:
        def generate(cost, progress):
            return sampling.sample(model, scheduler, cost=cost, progress=progress, **kwargs)
    score_s = 0.0
    prompt_log = []  # (image index, prompt) of a text-to-image cell, for its per-prompt CLIP scores
    for batch in generate(meter, cfg.trainer.enable_progress_bar):
        if isinstance(model, pipelines.LoadedPipeline):
            prompt_log += pipelines.batch_prompts(model, batch)
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
        for _ in generate(again, False):
            pass
        meter.add_timing(again)
    cost = {**meter.summary(), "score_s": score_s, "inference_mode": bool(c.inference_mode),
            "channels_last": uses_channels_last(cfg)}
    if prompt_log:
        pipelines.write_prompt_scores(cell_dir / "prompts.csv", prompt_log, scorer.clip_scores)
    return metrics, cost, grid, keep


def base_row(cfg: DictConfig, info: DataInfo, key: str, train_info: dict, root: Path, cell_dir: Path,
             device: str) -> Row:
    """The row's identity, model and provenance columns (status, cost and scores are filled in by run_cell)."""
    s = cfg.sampling
    return Row(
        cell_key=key,
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        name=cfg.name,
        data=info.id,
        model=cfg.model.name,
        objective=cfg.objective.name,
        schedule=cfg.schedule.name,
        sampler=cfg.sampler.name,
        eta=float(cfg.sampler.eta),
        timestep_spacing=cfg.sampler.timestep_spacing,
        num_inference_steps=int(s.num_inference_steps),
        guidance_scale=float(s.guidance_scale),
        num_samples=int(s.num_samples),
        repeats=int(cfg.metric.repeats),
        batch_size=int(s.batch_size),
        seed=int(s.seed),
        model_key=train_info.get("model_key"),
        train_steps=train_info.get("train_steps"),
        train_seconds=train_info.get("train_seconds"),
        num_params=train_info.get("num_params"),
        distill_method=cfg.distill.method,
        distill_steps=train_info.get("distill_steps"),
        distill_train_steps=train_info.get("distill_train_steps"),
        distill_seconds=train_info.get("distill_seconds"),
        **versions(),
        device=device,
        hardware=hardware(device),
        config_path=str((cell_dir / "config.yaml").relative_to(root)),
        cell_dir=str(cell_dir.relative_to(root)),
    )


PARTIAL_SUFFIX = ".partial"


def work_dir(cell_dir: Path) -> Path:
    """Where a cell is produced: ``cells/<key>.partial``, renamed to ``cells/<key>`` once its metrics.json is
    written, so a cell stopped half way (killed, crashed, disk full) never looks like output; its shards stay there
    for the next run to resume from."""
    return cell_dir.with_name(cell_dir.name + PARTIAL_SUFFIX)


def check_same_evaluator(cfg: DictConfig, info: DataInfo, row: dict, results: Path) -> None:
    """A finished cell is skipped only when its scores came from this run's feature network. The cell key holds the
    config, not the evaluator's weights: a new shipped evaluator (or another cached one) would otherwise leave the old
    numbers standing under the new evaluator's name. Mismatch: ResultsError (one line, exit 2)."""
    old = row.get("feature_net_hash")
    if info.kind != "images" or not old:
        return
    net = load_feature_net(cfg, info)
    if net.weights_hash != old:
        raise ResultsError(f"{results}: cell {row['cell_key']} was scored with feature net {row.get('feature_net')} "
                           f"#{old}, this run's is #{net.weights_hash}; its numbers would stand for another evaluator: "
                           f"use another out_dir, or delete that row to score the cell again")


def run_cell(cfg: DictConfig, info: DataInfo, root: Path, key: str, cell_cfg: dict) -> dict | None:
    """Sample and score one cell, append its row (skipped when the cell is already finished: resume)."""
    results = root / "results.jsonl"
    finished = next((r for r in read_rows(results) if r["cell_key"] == key and is_finished(r)), None)
    if finished is not None:
        check_same_evaluator(cfg, info, finished, results)
        log.info("cell %s already in %s: skipped (resume)", key, results)
        return None
    set_determinism(cfg.sampling.deterministic)
    if cfg.cost.num_threads:
        torch.set_num_threads(int(cfg.cost.num_threads))  # pinned for the cell; the row records num_threads
    device = resolve_device(cfg.device)
    model, train_info = load_model(cfg, info)
    if uses_channels_last(cfg):
        model = model.to(memory_format=torch.channels_last)
    cell_dir = root / "cells" / key
    work = work_dir(cell_dir)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if isinstance(model, pipelines.LoadedPipeline):  # the sampler on the checkpoint's own scheduler config
        scheduler = pipelines.build_scheduler(cfg, model.checkpoint)
        if cfg.model.compile:
            model.compile_s = pipelines.warm_up(model, scheduler, cfg, info.shape[-1])
    else:
        scheduler = sampling.build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name,
                                           lcm_grid=cfg.distill.num_ddim_timesteps)
    atomic_write_json(work / "scheduler.json", dict(scheduler.config))
    row = base_row(cfg, info, key, train_info, root, cell_dir, device)
    if isinstance(model, pipelines.LoadedPipeline):  # what the checkpoint decided, recorded in the row
        row.objective, row.schedule = model.checkpoint.objective, scheduler.config.get("beta_schedule", "flow")
        row.timestep_spacing = scheduler.config.get("timestep_spacing", "")
    t0 = time.perf_counter()
    batch_size = cfg.sampling.batch_size
    while True:
        try:
            row.scores, row.cost = _sample_and_score(cfg, info, model, scheduler, work, device, batch_size)
            if isinstance(model, pipelines.LoadedPipeline):
                row.scores.update(model.provenance(), scheduler_class=type(scheduler).__name__)
            row.status, row.batch_size = "ok", batch_size
            break
        except sampling.NonFiniteError as e:
            row.status, row.error, row.failed_step = "failed", str(e), e.step
            break
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                row.status, row.error = "failed", "CUDA out of memory at sampling.batch_size=1"
                break
            batch_size //= 2  # per-image seeds: the samples do not depend on the batch size
            torch.cuda.empty_cache()
            log.warning("CUDA out of memory: retrying the cell with sampling.batch_size=%d", batch_size)
    row.wall_s = round(time.perf_counter() - t0, 3)
    if row.status != "ok":
        log.error("cell %s failed: %s", key, row.error)
        if cfg.fail_fast:
            raise CellFailed(row.error, row.failed_step)
    record = row.to_dict()
    atomic_write_json(work / "metrics.json", record)
    replace_dir(work, cell_dir)  # complete (metrics.json inside) before the row that points to it is written
    append_row(results, record)
    grid = cell_dir / "grid.png"
    Tracker(cfg.tracker, root).log_cell(cell_cfg, record, str(grid) if grid.exists() else None)
    log.info("cell %s: %s", key, {k: record.get(k) for k in ("sampler", "num_inference_steps", "guidance_scale",
                                                             "nfe", "fid", "kid", "is", "swd", "mmd", "status")
                                  if record.get(k) is not None})
    return record
