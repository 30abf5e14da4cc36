"""Re-scoring without re-sampling: ``bench-rescore ROOT metric.KEY=VALUE ...`` scores the finished cells of a results
root again from the images they kept (``sampling.save_samples=true``: ``cells/<key>/samples.npz``), with the metric
settings changed, and appends one row per cell. The model is never loaded.

Keys stay honest:

- the images are named by the sampling part of the cell key (:func:`bench.keys.samples_key`: every setting but the
  ones that only score), which an override may not change (``metric.repeats`` samples more images: refused);
- the re-scored cell's config is the sampled cell's config with the overrides, so its row gets that config's own cell
  key, the key a fresh run of it would have, with the same numbers (the Scorer sees the same uint8 images);
- before anything is written, the kept images are scored with the sampled cell's own settings and must give its
  row's scores: a samples file that is not the images the row scored is refused;
- the row records what it scored: ``samples_from`` (the sampled cell's key), ``samples_key``, ``samples_sha256``
  (:func:`bench.artifacts.samples_digest` of the file's arrays) and ``samples_n``. Its cost columns are those of the
  sampling that made the images; ``rescore_s`` is the re-scoring time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from bench.adapt import scored
from bench.artifacts import samples_digest
from bench.cell import check_same_evaluator, prepare, work_dir
from bench.data import get_data_info
from bench.env import versions
from bench.keys import cell_key, key_settings, normalise, samples_key
from bench.metrics.refstats import RefStatsError
from bench.metrics.scorer import Scorer
from bench.results import ResultsError, append_row, is_finished, read_rows, results_path
from bench.schema import GROUPS, MODEL_SCHEMAS, BenchConfig, ConfigError
from bench.utils import atomic_write_json, atomic_write_text, replace_dir

log = logging.getLogger("bench")

SAMPLES = "samples.npz"
COPIED = ("grid.png", "scheduler.json")  # the sampled cell's files that describe the re-scored cell as well
# A latent family's first-stage FIDs, scored in the cell's network: kept only while that network and reference stay
FIRST_STAGE = ("vae_rfid", "real_fid", "vae_rfid_n")
REL_TOL = 1e-9  # a score recomputed from the kept images against its row (the same images, the same code: bitwise)


def recorded_config(path: Path) -> DictConfig:
    """A cell's ``config.yaml`` over today's schema (a key added since it was written takes its default, as a fresh
    compose of the command would; a family's schema holds only its own model keys)."""
    recorded = OmegaConf.load(path)
    base = OmegaConf.structured(BenchConfig)
    for group, node in GROUPS.items():
        base[group] = OmegaConf.structured(node)
    family = MODEL_SCHEMAS[recorded.model.name]
    base.model = OmegaConf.structured(family)
    recorded.model = {k: v for k, v in recorded.model.items() if k in family.__dataclass_fields__}
    return OmegaConf.merge(base, recorded)


def with_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``cfg`` with ``metric.KEY=VALUE`` overrides (YAML values); any other key is refused: it changes the samples."""
    out = OmegaConf.merge(cfg, {})
    for o in overrides:
        key, sep, text = o.partition("=")
        value = yaml.safe_load(text) if text else None
        if not sep or not key.startswith("metric.") or key.count(".") != 1:
            raise ConfigError(key or o, value, "metric.KEY=VALUE (re-scoring changes how images are scored, not "
                              "which images)")
        name = key.split(".", 1)[1]
        if name not in cfg.metric:
            raise ConfigError(key, value, f"a metric setting ({', '.join(sorted(cfg.metric))})")
        try:
            OmegaConf.update(out, key, value, merge=False)
        except ValidationError:  # a value of the wrong type for the schema
            raise ConfigError(key, value, f"a value of the type of {key} "
                              f"({type(OmegaConf.select(cfg, key)).__name__})") from None
    return normalise(out)


def load_samples(cell_dir: Path, row: dict) -> dict[str, np.ndarray]:
    """The kept arrays of a finished cell, checked against its row (count; digest where the row records one)."""
    path = cell_dir / SAMPLES
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    x = arrays.get("images", arrays.get("points"))
    want = int(row["num_samples"]) * int(row.get("repeats") or 1)
    if x is None or len(x) != want:
        raise ResultsError(f"{path}: holds {0 if x is None else len(x)} samples, its row {row['cell_key']} scored "
                           f"{want} (num_samples x repeats)")
    if row.get("samples_sha256") and samples_digest(arrays) != row["samples_sha256"]:
        raise ResultsError(f"{path}: sha256 {samples_digest(arrays)[:12]} is not the {row['samples_sha256'][:12]} its "
                           f"row {row['cell_key']} recorded: not the images that row scored")
    return arrays


def batches(arrays: dict, batch_size: int):
    """The kept images as the sampler streamed them: [-1, 1] float batches (quantising gives back the uint8 values
    exactly), image i at index i, with its label or prompt."""
    images = arrays.get("images")
    n = len(images if images is not None else arrays["points"])
    for i0 in range(0, n, batch_size):
        index = torch.arange(i0, min(i0 + batch_size, n))
        if images is not None:
            x = torch.from_numpy(images[i0:i0 + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        else:
            x = torch.from_numpy(arrays["points"][i0:i0 + batch_size])
        labels = torch.from_numpy(arrays["labels"][i0:i0 + batch_size]).long() if "labels" in arrays else None
        prompts = list(arrays["prompts"][i0:i0 + batch_size]) if "prompts" in arrays else None
        yield SimpleNamespace(x=x, labels=labels, prompts=prompts, index=index)


def score(cfg: DictConfig, info, arrays: dict, cell_dir: Path | None = None) -> dict:
    """The Scorer's row fields for the kept images under ``cfg`` (``cell_dir``: where it writes gen_stats.npz),
    against the data of the classes the cell samples, as bench.cell scores them (:func:`bench.adapt.scored`)."""
    scoring = scored(cfg)
    info = get_data_info(scoring.data) if scoring is not cfg else info
    scorer = Scorer(scoring, info, cell_dir)
    if scorer.mode == "images" and scorer.clip is not None and "labels" not in arrays and "prompts" not in arrays:
        raise ConfigError("metric.clip_score", True, "a cell whose samples.npz keeps labels or prompts",
                          "these kept images have neither, and CLIP score scores them against their captions")
    for b in batches(arrays, int(cfg.sampling.batch_size)):
        scorer.update(b)
    return scorer.compute()


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12) or (math.isnan(a) and math.isnan(float(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_reproduces(row: dict, scores: dict, path: Path) -> None:
    """The kept images, scored with the sampled cell's own settings, give every score its row holds."""
    for k, v in scores.items():
        if k in row and k != "metric_versions" and not _same(v, row[k]):
            raise ResultsError(f"{path}: scored with its cell's own settings these images give {k}={v!r}, the row "
                               f"{row['cell_key']} holds {row[k]!r}: not the images that row scored (or another "
                               f"scorer): re-run the cell instead")


@dataclass
class Job:
    """One cell to re-score, checked: the sampled row, both configs, the data info and the new cell key."""

    row: dict
    old_cfg: DictConfig
    cfg: DictConfig
    info: object
    key: str


def plan(root: Path, row: dict, overrides: list[str]) -> Job | None:
    """Check one finished cell of ``root`` for re-scoring with ``overrides`` (None: nothing to do, the new key is
    the sampled cell's own or already finished there). Raises ConfigError / ResultsError; reads no images."""
    old_cfg = recorded_config(root / row["config_path"])
    if cell_key(old_cfg) != row["cell_key"]:
        raise ResultsError(f"{root / row['config_path']}: its config gives cell key {cell_key(old_cfg)}, the row says "
                           f"{row['cell_key']}: its files are not this config's (a checkpoint or data path moved?)")
    cfg = with_overrides(old_cfg, overrides)
    info = prepare(cfg)
    if samples_key(cfg) != samples_key(old_cfg):
        raise ConfigError("metric.repeats", cfg.metric.repeats, f"{old_cfg.metric.repeats} (the sampled cell's)",
                          "other seed blocks are other images: sample them")
    key = cell_key(cfg)
    results = results_path(root)
    done = next((r for r in read_rows(results) if r["cell_key"] == key and is_finished(r)), None)
    if done is not None:
        check_same_evaluator(cfg, info, done, results)
    if key == row["cell_key"] or done is not None:
        return None
    if not (root / row["cell_dir"] / SAMPLES).is_file():
        raise ResultsError(f"{root / row['cell_dir'] / SAMPLES}: no kept samples (cell {row['cell_key']} ran without "
                           f"sampling.save_samples=true): re-run it with sampling.save_samples=true to re-score it")
    return Job(row, old_cfg, cfg, info, key)


def rescore_cell(root: Path, job: Job) -> dict:
    """Score the kept images of ``job`` again; write the new cell and append its row (returned)."""
    row, old_dir = job.row, root / job.row["cell_dir"]
    arrays = load_samples(old_dir, row)
    t0 = time.perf_counter()
    old_scores = score(job.old_cfg, job.info, arrays)  # the sampled row's own scores, from these images
    check_reproduces(row, old_scores, old_dir / SAMPLES)
    new_dir = root / "cells" / job.key
    work = work_dir(new_dir)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    scores = score(job.cfg, job.info, arrays, work)
    out = {k: v for k, v in row.items() if k not in old_scores and k != "schema_version"}
    if any(out.get(k) != scores.get(k) for k in ("feature_net_hash", "ref_hash")):
        out = {k: v for k, v in out.items() if k not in FIRST_STAGE}
    out.update(scores)
    out.update(cell_key=job.key, key_settings=key_settings(job.cfg), config_path=f"cells/{job.key}/config.yaml",
               cell_dir=f"cells/{job.key}",
               created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               samples_from=row["cell_key"], samples_key=samples_key(job.cfg), samples_sha256=samples_digest(arrays),
               samples_n=len(arrays.get("images", arrays.get("points"))),
               rescore_s=round(time.perf_counter() - t0, 3), rescore_versions=versions())
    atomic_write_text(work / "config.yaml", OmegaConf.to_yaml(job.cfg, resolve=True))
    for name in COPIED:
        if (old_dir / name).is_file():
            shutil.copy2(old_dir / name, work / name)
    atomic_write_json(work / "metrics.json", out)
    replace_dir(work, new_dir)
    append_row(results_path(root), out)
    return out


def rescore(root: str | Path, overrides: list[str]) -> list[dict]:
    """Every finished cell of ``root`` scored again with ``overrides`` from its kept samples: the new rows. Every
    cell is checked before any is scored; a cell already scored so is skipped (resume)."""
    root = Path(root)
    rows = [r for r in read_rows(results_path(root)) if is_finished(r) and not r.get("samples_from")]
    if not rows:
        raise ResultsError(f"{results_path(root)}: no finished sampled cell to re-score")
    jobs = [job for r in sorted(rows, key=lambda r: r["cell_key"]) if (job := plan(root, r, overrides))]
    out = []
    for job in jobs:
        out.append(rescore_cell(root, job))
        log.info("cell %s re-scored as %s", job.row["cell_key"], job.key)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench-rescore", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="a results root (out_dir/name) whose cells kept samples.npz")
    p.add_argument("overrides", nargs="+", help="metric.KEY=VALUE, e.g. metric.prdc=true metric.fd_inf=true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = rescore(a.root, a.overrides)
    except (ConfigError, ResultsError, RefStatsError) as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    print(f"re-scored {len(rows)} cells into {results_path(a.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
