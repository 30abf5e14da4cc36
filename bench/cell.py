"""The path of one cell, each arrow one call:

    prepare (validate) -> load_subject (what the cell samples, by its model family) -> batches (streamed) ->
    Scorer.update per batch -> Row -> results + artifacts + tracker

Whatever the cell samples (the harness's own model, a distilled student, a loaded diffusers pipeline) answers the
calls of :class:`bench.sampling.subject.Subject`; nothing here asks which kind it got.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bench import distributed, sampling
from bench.adapt import scored
from bench.artifacts import samples_digest, save_npz, write_grid, write_prompt_scores, write_scatter
from bench.data import DataInfo, get_data_info, sample_true
from bench.env import hardware, resolve_device, set_determinism, versions
from bench.evaluators import load_feature_net
from bench.images import to_uint8_nhwc
from bench.keys import cell_config, cell_key, key_settings, normalise, results_root, samples_key
from bench.metrics.cost import CostMeter
from bench.metrics.scorer import Scorer
from bench.results import ResultsError, Row, append_row, is_finished, read_rows
from bench.sampling.subject import Provenance, SamplingCall, Subject, sampling_call
from bench.subjects import load_subject
from bench.tasks import TASKS, task_call
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


def _sample_and_score(cfg, info: DataInfo, subject: Subject, call: SamplingCall, cell_dir: Path) -> tuple[dict, dict]:
    """Sample and score the cell (here, or in resumable shards on sampling.devices processes), then write its grid,
    saved samples and per-prompt scores: (scores, cost)."""
    s = cfg.sampling
    scorer = Scorer(cfg, info, cell_dir)
    progress = bool(cfg.trainer.enable_progress_bar)
    labels = None  # each kept image's class label (what CLIP score scores against), where this path keeps them
    if distributed.enabled(s):
        metrics, cost, samples = distributed.sample_and_score(subject, call, scorer, cfg, info, cell_dir, s, progress)
    else:
        metrics, cost, samples, labels = _sample_and_score_here(subject, call, scorer, s, cfg.cost, progress)
    grid_x = samples[: s.grid_size]
    prompts = subject.prompts_of(call)
    if info.kind == "images":
        write_grid(cell_dir / "grid.png", to_uint8_nhwc(grid_x))
        kept = {"images": to_uint8_nhwc(samples)}
    else:
        ref = sample_true(cfg.data, len(grid_x), seed=10_000 + s.seed)
        title = f"{cfg.sampler.name} {s.num_inference_steps} steps"
        write_scatter(cell_dir / "grid.png", grid_x.numpy(), ref, title)
        kept = {"points": samples.numpy().astype(np.float32)}
    if s.save_samples:  # what bench.rescore scores again: the images as scored, with their labels or prompts
        kept.update({"labels": labels} if labels is not None else {})
        kept.update({"prompts": np.asarray(prompts, dtype=str)} if prompts else {})
        save_npz(cell_dir / "samples.npz", **kept)
        metrics.update(samples_key=samples_key(cfg), samples_sha256=samples_digest(kept),
                       samples_n=len(samples))
    if prompts:
        write_prompt_scores(cell_dir / "prompts.csv", prompts, scorer.clip_scores)
    return metrics, cost


def _sample_and_score_here(subject: Subject, call: SamplingCall, scorer: Scorer, sampling_cfg, cost_cfg,
                           progress: bool) -> tuple[dict, dict, torch.Tensor, np.ndarray | None]:
    """One process, streamed: (scores, cost, the samples kept: all with sampling.save_samples, else the grid's, and
    their class labels where the batches have them).
    Cost follows the protocol of bench.metrics.cost (untimed warm-up, median over timed batches, cost.repeats
    re-timings)."""
    c = cost_cfg
    meter = CostMeter(call.device, c.warmup_batches, c.min_timed_batches)
    kept, kept_n, labels = [], 0, []
    score_s = 0.0
    for batch in subject.batches(call, meter, progress=progress):
        t0 = time.perf_counter()
        scorer.update(batch)
        score_s += time.perf_counter() - t0
        need = len(batch.x) if sampling_cfg.save_samples else sampling_cfg.grid_size - kept_n
        if need > 0:
            kept.append(batch.x[:need].cpu())
            kept_n += len(kept[-1])
            if batch.labels is not None:
                labels.append(batch.labels[:need].cpu().numpy())
    t0 = time.perf_counter()
    metrics = scorer.compute()
    score_s += time.perf_counter() - t0
    for _ in range(c.repeats - 1):  # re-time the sampling only; the samples are the ones already scored
        again = CostMeter(call.device, c.warmup_batches)
        for _ in subject.batches(call, again):
            pass
        meter.add_timing(again)
    cost = {**meter.summary(), "score_s": score_s, "inference_mode": bool(c.inference_mode),
            "channels_last": call.channels_last}
    return metrics, cost, torch.cat(kept), np.concatenate(labels) if len(labels) == len(kept) else None


def base_row(cfg: DictConfig, info: DataInfo, key: str, train_info: dict, sampled: Provenance, root: Path,
             cell_dir: Path, device: str) -> Row:
    """The row's identity, model and provenance columns (status, cost, the sampled model's column groups and scores
    are filled in by run_cell). ``sampled``: the objective, schedule and spacing it was sampled on."""
    s = cfg.sampling
    return Row(
        cell_key=key,
        key_settings=key_settings(cfg),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        name=cfg.name,
        data=info.id,
        model=cfg.model.name,
        objective=sampled.objective,
        schedule=sampled.schedule,
        sampler=cfg.sampler.name,
        eta=float(cfg.sampler.eta),
        timestep_spacing=sampled.timestep_spacing,
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


def run_cell(cfg: DictConfig) -> dict | None:
    """Sample and score the cell of ``cfg``, append its row to ``<out_dir>/<name>/results.jsonl`` (skipped when the
    cell is already finished there: resume); its row, or None when skipped. Raises ConfigError before any work."""
    cfg = normalise(cfg)  # settings without effect at their defaults: what the keys hash, the run uses, the row records
    info = prepare(cfg)
    root, key = results_root(cfg), cell_key(cfg)
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
    subject, train_info = load_subject(cfg, info, device)
    scoring = scored(cfg)  # the data of the classes the cell samples: its labels, reference statistics, data id
    info = get_data_info(scoring.data) if scoring is not cfg else info
    cell_dir = root / "cells" / key
    work = work_dir(cell_dir)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(work / "scheduler.json", dict(subject.scheduler.config))
    sampled = subject.columns()
    row = base_row(cfg, info, key, train_info, sampled, root, cell_dir, device)
    call = sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model, info, device)
    task = TASKS[cfg.task.name]
    if task.real_images:  # its N is task.num_images of the held-out split
        call, row.num_samples = task_call(call, cfg), int(cfg.task.num_images)
    t0 = time.perf_counter()
    while True:
        try:
            if task.build is None:
                row.scores, row.cost = _sample_and_score(scoring, info, subject, call, work)
                row.sampled = sampled.groups
            else:
                done = task.build(cfg, info, subject, call, work)
                row.scores, row.cost, row.sampled = done.scores, done.cost, sampled.groups + done.columns
            row.status, row.batch_size = "ok", call.batch_size
            break
        except sampling.NonFiniteError as e:
            row.status, row.error, row.failed_step = "failed", str(e), e.step
            break
        except torch.cuda.OutOfMemoryError:
            if call.batch_size == 1:
                row.status, row.error = "failed", "CUDA out of memory at sampling.batch_size=1"
                break
            # per-image seeds: the samples do not depend on the batch size
            call = dataclasses.replace(call, batch_size=call.batch_size // 2)
            torch.cuda.empty_cache()
            log.warning("CUDA out of memory: retrying the cell with sampling.batch_size=%d", call.batch_size)
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
    Tracker(cfg.tracker, root).log_cell(cell_config(cfg), record, str(grid) if grid.exists() else None)
    log.info("cell %s: %s", key, {k: record.get(k) for k in ("sampler", "num_inference_steps", "guidance_scale",
                                                             "nfe", "fid", "kid", "is", "swd", "mmd", "status")
                                  if record.get(k) is not None})
    return record
