"""The results row and its file: one JSON row per sweep cell in ``<root>/results.jsonl``, append-only.

:class:`Row` is the row's schema (what ``bench`` writes); :func:`read_rows` is the one reader (``bench`` resumes with
it, ``bench-report`` reports from it); :func:`is_finished` is the one rule for "this cell is done".
Every append rewrites the file through a temp file + ``os.replace`` under a file lock, so a reader (or a run killed
with ``kill -9`` at any point) only ever sees whole rows, and two sweeps appending to one file never interleave.
A cell whose key is already present is not appended again: that is how re-running a sweep resumes it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from bench.utils import atomic_write_text

SCHEMA_VERSION = 1
RESULTS_NAME = "results.jsonl"
REQUIRED = ("schema_version", "cell_key", "status")  # every row bench writes has these
STATUSES = ("ok", "failed")


@dataclass(frozen=True)
class Columns:
    """A typed group of row columns that what a cell sampled reports about itself (its family's text tower or VAE,
    the classifier that guided it, a loaded checkpoint's provenance). In the row its fields are flat columns under
    their own names; a field left None is absent from the row."""

    def columns(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class TextTowerColumns(Columns):
    text_encoder: str  # a text-conditioned family's frozen text tower: label#weights hash


@dataclass(frozen=True)
class LatentColumns(Columns):
    """A latent family's first stage: its VAE (key, size, training steps, scaling factor, held-out PSNR) and, with FID
    on, the FID of its held-out reconstructions beside that of the held-out images themselves (the floor at N)."""

    latent_shape: list
    vae_key: str
    vae_psnr: float
    vae_scaling_factor: float
    vae_num_params: int
    vae_train_steps: int
    vae_rfid: float | None = None
    real_fid: float | None = None
    vae_rfid_n: int | None = None


@dataclass(frozen=True)
class ClassifierColumns(Columns):
    """Classifier guidance: every row of the harness's own models has its scale (0: unguided, no classifier calls
    and no classifier parameters); a guided row names the classifier (its calls per image are a cost column)."""

    classifier_scale: float = 0.0
    classifier_key: str | None = None
    classifier_train_steps: int | None = None
    classifier_num_params: int = 0
    nfe_classifier: float | None = None


@dataclass(frozen=True)
class AdapterColumns(Columns):
    """An adapter on the base model (bench.adapt): its kind, key and base model's key, its size (rank, trainable
    parameters, bytes stored), its training cost and data, and the weight of its update when sampled."""

    adapter: str
    adapter_key: str | None = None
    base_model_key: str | None = None
    adapter_rank: int | None = None
    adapter_trainable_params: int | None = None
    adapter_bytes: int | None = None
    adapter_train_steps: int | None = None
    adapter_train_seconds: float | None = None
    adapter_classes: list | None = None
    lora_scale: float | None = None
    conditioning_scale: float | None = None


@dataclass(frozen=True)
class DreamBoothColumns(AdapterColumns):
    """A DreamBooth adapter (bench.adapt.dreambooth): its subject, token, prior weight and class images, and its scores
    in the paper's terms (Ruiz et al. 2023): CLIP-I, CLIP-T, PRES, DIV, and drift (FID of its class-prompt samples
    against the base model's), each on ``dreambooth_num_eval`` images per prompt in ``dreambooth_net``'s space."""

    dreambooth_method: str | None = None
    instance: str | None = None
    token: str | None = None
    prior_weight: float | None = None
    num_class_images: int | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    pres: float | None = None
    div: float | None = None
    drift: float | None = None
    dreambooth_num_eval: int | None = None
    dreambooth_net: str | None = None
    dreambooth_net_hash: str | None = None


@dataclass(frozen=True)
class PipelineColumns(Columns):
    """A loaded diffusers pipeline: what its checkpoint decided, the options it was loaded with, the scheduler it
    was sampled with and its prompt set (text-to-image pipelines)."""

    pipeline_class: str
    checkpoint_objective: str
    checkpoint_scheduler: str | None
    checkpoint_path: str
    model_dtype: str
    compile_s: float
    attention_slicing: bool
    vae_tiling: bool
    cpu_offload: bool
    compile: bool
    scheduler_class: str
    prompts_id: str | None = None
    prompts_sha256: str | None = None
    num_prompts: int | None = None
    images_per_prompt: int | None = None
    negative_prompt: str | None = None


@dataclass(frozen=True)
class TaskColumns(Columns):
    """A task on real images (bench.tasks): which one, the split its images came from and how many the scores are
    over (generated cells have none of these columns)."""

    task: str
    real_split: str
    num_real_images: int


@dataclass
class Row:
    """One sweep cell. Metric columns (``scores``) are absent when not computed; see docs/design.md."""

    cell_key: str  # hash of the cell's resolved config (minus keys that do not change its numbers)
    created_at: str = ""  # UTC, ISO 8601, seconds
    name: str = ""  # the sweep/experiment name (results root = out_dir/name)
    data: str = ""  # DataInfo.id, e.g. "digits-8px-c1"
    model: str = ""
    objective: str = ""
    schedule: str = ""
    sampler: str = ""
    eta: float = 0.0
    timestep_spacing: str = ""
    num_inference_steps: int = 0
    guidance_scale: float = 1.0
    num_samples: int = 0  # N per repeat
    repeats: int = 1  # metric.repeats: disjoint seed blocks
    batch_size: int = 0  # the batch size actually used (halved on CUDA out-of-memory)
    seed: int = 0  # image i of the cell uses seed + i
    model_key: str | None = None  # the sampled model's cache key (the student's, when distilled)
    train_steps: int | None = None
    train_seconds: float | None = None
    num_params: int | None = None
    distill_method: str = "none"  # none | progressive | consistency
    distill_steps: int | None = None
    distill_train_steps: int | None = None  # cumulative over progressive rounds
    distill_seconds: float | None = None
    torch: str = ""  # library versions and the code's git sha
    diffusers: str = ""
    bench: str = ""
    git_sha: str = ""
    device: str = ""  # cpu | cuda
    hardware: str = ""  # CPU model x threads, or the GPU's name
    config_path: str = ""  # cells/<cell_key>/config.yaml, relative to the results root
    cell_dir: str = ""  # cells/<cell_key>, relative to the results root
    status: str = "ok"  # ok | failed
    error: str | None = None  # failed rows: why (one line)
    failed_step: int | None = None  # failed rows: the sampling step where NaN/Inf appeared
    wall_s: float | None = None  # sampling + scoring wall time of the cell
    # {dotted key: value} of every setting the cell key holds, after normalisation (bench.keys.key_settings): two rows
    # that differ in any of them are two configurations, never seed blocks of one
    key_settings: dict = field(default_factory=dict)
    # cost (bench.metrics.cost: nfe, latency_p50/p95 in s per image, images_per_s, peak_mem_mb, mem_kind)
    cost: dict = field(default_factory=dict)
    # what the sampled model reports about itself (typed column groups: :class:`Columns`)
    sampled: tuple[Columns, ...] = ()
    # scores and their provenance (bench.metrics.scorer: fid, fid_std, kid, kid_std, is, is_std, clip_score, swd,
    # mmd, feature_net, feature_net_hash, resize, quantize, ref_id, ref_hash, n_ref, ...)
    scores: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON object of the row: fixed columns, then cost, sampled-model and score columns (which win on a shared
        name, except the cell's wall_s); error/failed_step only when set."""
        out = {"schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            if f.name in ("cost", "sampled", "scores"):
                continue
            v = getattr(self, f.name)
            if v is None and f.name in ("error", "failed_step"):
                continue
            out[f.name] = v
        out = {**out, **self.cost}
        for group in self.sampled:
            out.update(group.columns())
        out.update(self.scores)
        if self.wall_s is not None:
            out["wall_s"] = self.wall_s  # the cell's wall time wins over the sampling loop's own (cost's wall_s)
        return out


class ResultsError(RuntimeError):
    """A results file bench cannot read. ``str(err)`` is the one line shown to the user."""


def results_path(root: str | os.PathLike) -> Path:
    root = Path(root)
    return root if root.suffix == ".jsonl" else root / RESULTS_NAME


def is_finished(row: dict) -> bool:
    """The one rule: a cell is done when its row says ok (failed cells are retried on re-run)."""
    return row.get("status", "ok") == "ok"


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=600)


def parse_rows(path: Path, data: bytes) -> list[dict]:
    """The rows of a results file's bytes; a foreign or newer-schema file is a ResultsError naming the line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a text file; expected results.jsonl (one JSON results row per line)") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{path}:{n}: not JSON Lines ({e.msg}); expected one bench results row per "
                               f"line") from None
        if not isinstance(row, dict):
            raise ResultsError(f"{path}:{n}: not a bench results row (a JSON {type(row).__name__}, expected an "
                               f"object)")
        version = row.get("schema_version", 0)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise ResultsError(f"{path}:{n}: schema_version={version} is newer than this bench reads "
                               f"(<= {SCHEMA_VERSION}); upgrade bench to read it")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ResultsError(f"{path}:{n}: not a bench results row (missing {', '.join(missing)})")
        if row["status"] not in STATUSES:
            raise ResultsError(f"{path}:{n}: status={row['status']!r} is not allowed: one of {', '.join(STATUSES)}")
        rows.append(row)
    return rows


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of a results file ([] when it does not exist). A foreign file or a newer schema is an error."""
    path = results_path(path)
    if not path.exists():
        return []
    return parse_rows(path, path.read_bytes())


def done_keys(path: str | os.PathLike) -> set[str]:
    """Keys of the finished cells (:func:`is_finished`; failed cells are retried on re-run)."""
    return {r["cell_key"] for r in read_rows(path) if is_finished(r)}


def append_row(path: str | os.PathLike, row: Row | dict[str, Any]) -> bool:
    """Atomically append `row` unless a finished row with its cell_key exists. Returns True if written.

    A failed row for the same key is replaced by a later row for it (the retry), so the file holds at most one row per
    cell key.
    """
    path = results_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = row.to_dict() if isinstance(row, Row) else {"schema_version": SCHEMA_VERSION, **row}
    with _lock(path):
        rows = read_rows(path)
        if any(r["cell_key"] == row["cell_key"] and is_finished(r) for r in rows):
            return False
        rows = [r for r in rows if r["cell_key"] != row["cell_key"]] + [row]
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))
    return True
