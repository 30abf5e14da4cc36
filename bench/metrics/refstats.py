"""Reference statistics: a registry of cached npz files, keyed by everything that moves a score.

Key = (data set id + split, feature network name + weights hash, resize, quantisation, N). A file is computed once
from the real split, saved as ``<cache_dir>/refstats/<ref_id>.npz`` (``mu``, ``sigma``, ``n``, ``features``) with a
json beside it holding the key and the npz's sha256, and verified on every load: a file whose key or checksum does
not match is an error, never a silent recompute with other settings.

Published statistics can be imported (``metric.reference_stats``): clean-fid / pytorch-fid npz (``mu``, ``sigma``)
or an ADM reference batch (``arr_0`` uint8 NHWC images, plus ``mu``/``sigma``). Published ``mu``/``sigma`` are
Inception-v3 pool3 statistics by convention, so they are only used with ``feature_net=inception``; with another
network the batch's images (``arr_0``) are pushed through it instead. A json beside the file (``<file>.json``) may
declare ``feature_net`` / ``resize``; a declared value that differs from the run's is an error.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.data import build_dataset
from bench.evaluators import SHIPPED
from bench.images import QUANTIZE, quantize_uint8
from bench.metrics.stats import FeatureStats
from bench.schema import ConfigError
from bench.utils import atomic_write_json, config_hash, file_sha256

REFERENCE_SPLITS = ("train", "test")
SUBSET_SEED = 0  # which items a capped reference (metric.num_reference) uses


class RefStatsError(RuntimeError):
    """Reference statistics missing, corrupt or made with other settings. ``str(err)`` is one line."""


@dataclass
class RefStats:
    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray | None  # None for imported mu/sigma-only files (no KID then)
    meta: dict = field(default_factory=dict)  # ref_id, ref_hash, feature_net, feature_net_hash, resize, source...


def ref_key(info, split: str, net, n: int) -> dict:
    return {"data_id": info.id, "split": split, "feature_net": net.name, "feature_net_hash": net.weights_hash,
            "resize": net.resize, "quantize": QUANTIZE, "n": int(n)}


def ref_id(key: dict) -> str:
    n = "all" if key["n"] == 0 else key["n"]
    return f"{key['data_id']}-{key['split']}-{key['feature_net']}-n{n}-{config_hash(key, 12)}"


def get_reference(cfg, info, net) -> RefStats:
    """Reference statistics for this run: imported (``metric.reference_stats``) or from the cache, computing them
    from ``metric.reference_split`` of the data set on first use."""
    if cfg.metric.reference_stats:
        return import_reference(cfg.metric.reference_stats, net)
    split = cfg.metric.reference_split
    if split not in REFERENCE_SPLITS:
        raise ConfigError("metric.reference_split", split, " | ".join(REFERENCE_SPLITS))
    key = ref_key(info, split, net, int(cfg.metric.num_reference))
    shipped = SHIPPED / "refstats" / f"{ref_id(key)}.npz"
    if shipped.is_file():  # built-in data set with the shipped network: the same bits on every machine
        return load_reference(shipped, key)
    path = Path(cfg.cache_dir) / "refstats" / f"{ref_id(key)}.npz"
    if not path.exists():
        logging.getLogger("bench").info("computing reference statistics %s (once; cached at %s)", path.stem, path)
        compute_reference(cfg.data, key, net, path)
    return load_reference(path, key)


def compute_reference(data_cfg, key: dict, net, path: Path, batch_size: int = 500) -> None:
    ds = build_dataset(data_cfg, key["split"])
    idx = torch.arange(len(ds))
    if key["n"]:
        if key["n"] > len(ds):
            raise ConfigError("metric.num_reference", key["n"], f"0 (all) or <= {len(ds)}",
                              f"{key['data_id']} {key['split']} split has {len(ds)} items")
        idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(SUBSET_SEED))[:key["n"]].sort().values
    stats, t0 = FeatureStats(), time.time()
    for s in range(0, len(idx), batch_size):
        x = torch.stack([ds[int(i)][0] for i in idx[s:s + batch_size]])
        stats.update(net(quantize_uint8(x))[0])
    stats.save_npz(path, with_features=True)
    meta = dict(key, ref_id=path.stem, sha256=file_sha256(path), n_items=stats.n, dim=stats.dim,
                seconds=round(time.time() - t0, 2), created_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(path.with_suffix(".json"), meta)


def load_reference(path: Path, key: dict) -> RefStats:
    """Load and verify a cached reference: checksum of the npz and every key field must match."""
    meta_path = path.with_suffix(".json")
    if not meta_path.exists():
        raise RefStatsError(f"{path} has no {meta_path.name} beside it (checksum unknown): delete {path} to recompute")
    meta = json.loads(meta_path.read_text())
    digest = file_sha256(path)
    if digest != meta.get("sha256"):
        raise RefStatsError(f"{path}: sha256 {digest[:16]}… does not match {str(meta.get('sha256'))[:16]}… recorded "
                            f"in {meta_path.name} (corrupt or edited): delete both to recompute")
    for k, v in key.items():
        if meta.get(k) != v:
            raise RefStatsError(f"{path}: reference was made with {k}={meta.get(k)!r} but this run uses {k}={v!r}")
    with np.load(path) as z:
        return RefStats(z["mu"], z["sigma"], int(z["n"]), z["features"],
                        dict(meta, ref_hash=digest[:16], path=str(path),
                             source="shipped" if path.parent == SHIPPED / "refstats" else "computed"))


def import_reference(file: str, net) -> RefStats:
    """Published statistics from a local npz (clean-fid / pytorch-fid ``mu``/``sigma``, ADM ``arr_0`` batch)."""
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError("metric.reference_stats", file, "a local .npz with mu/sigma or an ADM arr_0 batch",
                          "file not found")
    digest = file_sha256(path)
    declared = {}
    side = path.with_suffix(path.suffix + ".json")
    if side.exists():
        declared = json.loads(side.read_text())
    for k in ("feature_net", "resize"):
        if k in declared and declared[k] != getattr(net, k if k == "resize" else "name"):
            raise RefStatsError(f"metric.reference_stats={file}: declared {k}={declared[k]!r} but this run uses "
                                f"{getattr(net, k if k == 'resize' else 'name')!r}")
    meta = {"ref_id": f"import:{path.name}", "ref_hash": digest[:16], "sha256": digest, "source": str(path),
            "feature_net": net.name, "feature_net_hash": net.weights_hash, "quantize": QUANTIZE}
    with np.load(path) as z:
        keys = set(z.files)
        if {"mu", "sigma"} <= keys and (net.name == "inception" or "arr_0" not in keys):
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            if net.name != "inception" and declared.get("feature_net") != net.name:
                raise RefStatsError(f"metric.reference_stats={file} holds published mu/sigma (Inception-v3 pool3 by "
                                    f"convention) but metric.feature_net={net.name}: use metric.feature_net=inception, "
                                    f"a file with images (arr_0), or declare feature_net in {side.name}")
            if mu.shape != (net.dim,) or sigma.shape != (net.dim, net.dim):
                raise RefStatsError(f"metric.reference_stats={file} has {mu.shape[0]}-d statistics but feature net "
                                    f"{net.name} gives {net.dim}-d features")
            n = int(z["n"]) if "n" in keys else (len(z["arr_0"]) if "arr_0" in keys else -1)
            meta.update(resize=declared.get("resize", "as published (not known to the harness)"), n=n)
            return RefStats(mu, sigma, n, None, meta)
        if "arr_0" not in keys:
            raise RefStatsError(f"metric.reference_stats={file} has arrays {sorted(keys)}; expected mu+sigma "
                                f"(clean-fid / pytorch-fid) or arr_0 (ADM reference batch, uint8 NHWC)")
        images = z["arr_0"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise RefStatsError(f"metric.reference_stats={file}: arr_0 is {images.dtype} {images.shape}, "
                            "expected uint8 NHWC")
    stats = FeatureStats()
    for s in range(0, len(images), 500):
        stats.update(net(torch.from_numpy(images[s:s + 500]).permute(0, 3, 1, 2).contiguous())[0])
    meta.update(resize=net.resize, n=stats.n, computed_from="arr_0 images")
    return RefStats(stats.mu, stats.sigma, stats.n, stats.features(), meta)
