"""`bench-evaluator`: the shipped frozen evaluators, and the reproducible way they were made.

    bench-evaluator list                  shipped evaluators / reference statistics with their sha256, the
                                          evaluators trained on first use and those in the cache
    bench-evaluator train digits|clip     retrain one from scratch (in a temp cache) and compare with the shipped file
    bench-evaluator train digits --install   maintainer: replace the shipped files (then update PINNED_SHA256)
    bench-evaluator refstats [--install]  reference statistics of the built-in data sets from the shipped networks

Training is seeded and runs on one thread; on one machine type it reproduces the shipped weights bit for bit, on
another the last bits may differ (BLAS/SIMD paths) — which is why the weights are shipped rather than retrained.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from bench.data import get_data_info
from bench.evaluators import PINNED_SHA256, SHIPPED, EvaluatorError, one_thread
from bench.evaluators.clip import load_offline_clip
from bench.evaluators.digits_cnn import CNN_SPECS, cnn_name, load_digits_cnn
from bench.metrics.refstats import compute_reference, load_reference, ref_id, ref_key
from bench.schema import DataConfig
from bench.utils import file_sha256

WEIGHTS = {"digits": "model.safetensors", "clip": "open_clip_model.safetensors"}
# The built-in data sets whose reference statistics ship (the default image study data).
BUILTIN_REFERENCES = ({"name": "digits", "image_size": 8, "channels": 1},)


def _cfg(cache_dir: str, data: dict):
    return OmegaConf.create({"cache_dir": cache_dir, "data": OmegaConf.structured(DataConfig(**data))})


def _load(which: str, cache_dir: str, use_shipped: bool):
    if which == "digits":
        return load_digits_cnn(_cfg(cache_dir, {"name": "digits"}), use_shipped=use_shipped)
    return load_offline_clip(_cfg(cache_dir, {"name": "shapes", "image_size": 16, "channels": 3}),
                             use_shipped=use_shipped)


def cmd_list(args) -> int:
    for d in sorted(SHIPPED.glob("*/meta.json")):
        meta = json.loads(d.read_text())
        pinned = PINNED_SHA256.get(d.parent.name)
        ok = "ok" if pinned == meta.get("weights_sha256") else "NOT PINNED"
        extra = {k: meta[k] for k in ("test_accuracy", "test_retrieval_top1") if k in meta}
        print(f"{d.parent.name}: sha256 {meta['weights_sha256'][:16]}… ({ok}) {extra}")
    for f in sorted((SHIPPED / "refstats").glob("*.npz")):
        print(f"refstats/{f.name}: sha256 {file_sha256(f)[:16]}…")
    for data, spec in CNN_SPECS.items():
        if data != "digits":
            print(f"{cnn_name(data)}: trained on first use on data={data}'s train split (held-out accuracy >= "
                  f"{spec.min_accuracy}), cached as evaluators/{cnn_name(data)}-<key>")
    cache = Path(args.cache_dir) / "evaluators"
    for d in sorted(cache.glob("*/meta.json")):
        meta = json.loads(d.read_text())
        extra = {k: meta[k] for k in ("test_accuracy", "test_retrieval_top1", "data_id") if k in meta}
        print(f"cached {d.parent.name}: sha256 {meta['weights_sha256'][:16]}… {extra}")
    return 0


def cmd_train(args) -> int:
    tmp = tempfile.mkdtemp(prefix="bench-evaluator-")
    try:
        new = _load(args.which, tmp, use_shipped=False)
        new_dir = Path(new.meta["path"])
        weights = WEIGHTS[args.which]
        digest, want = file_sha256(new_dir / weights), PINNED_SHA256.get(new_dir.name)
        if not (SHIPPED / new_dir.name / weights).is_file():
            raise EvaluatorError(f"no shipped {args.which} evaluator {new_dir.name} to compare with "
                                 f"(bench-evaluator train {args.which} --install ships this one)")
        a, b = load_file(str(new_dir / weights)), load_file(str(SHIPPED / new_dir.name / weights))
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        same = digest == want
        print(f"{args.which}: retrained sha256 {digest[:16]}…, shipped {str(want)[:16]}… -> "
              f"{'identical' if same else f'differs (max |dw| = {diff:.3g})'}; meta {new.meta}")
        if args.install:
            dest = SHIPPED / new_dir.name
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(new_dir, dest, ignore=shutil.ignore_patterns("*.ckpt"))
            print(f"installed {dest}; set PINNED_SHA256[{new_dir.name!r}] = {digest!r} in bench/evaluators/__init__.py")
            return 0
        return 0 if same else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_refstats(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-refstats-"))
    try:
        for data in BUILTIN_REFERENCES:
            cfg = _cfg(str(tmp), data)
            info = get_data_info(cfg.data)
            net = load_digits_cnn(cfg, info)
            key = ref_key(info, "train", net, 0)
            path = tmp / f"{ref_id(key)}.npz"
            with one_thread():
                compute_reference(cfg.data, key, net, path)
            ref, shipped = load_reference(path, key), SHIPPED / "refstats" / path.name
            line = f"{path.name}: n={ref.n} sha256 {file_sha256(path)[:16]}…"
            if shipped.exists():
                old = load_reference(shipped, key)
                line += (f"; shipped sha256 {file_sha256(shipped)[:16]}…, max |dmu| "
                         f"{float(np.abs(old.mu - ref.mu).max()):.3g}")
            print(line)
            if args.install:
                shipped.parent.mkdir(parents=True, exist_ok=True)
                for f in (path, path.with_suffix(".json")):
                    shutil.copy2(f, shipped.parent / f.name)
                print(f"installed {shipped}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="bench-evaluator", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="shipped evaluators and reference statistics, and the cached evaluators")
    ls.add_argument("--cache-dir", default=os.environ.get("BENCH_CACHE", ".cache/bench"),
                    help="the cache to list (default: $BENCH_CACHE or .cache/bench, as cache_dir)")
    t = sub.add_parser("train", help="retrain an evaluator and compare it with the shipped one")
    t.add_argument("which", choices=sorted(WEIGHTS))
    t.add_argument("--install", action="store_true", help="maintainer: replace the shipped files")
    r = sub.add_parser("refstats", help="reference statistics of the built-in data sets")
    r.add_argument("--install", action="store_true", help="maintainer: replace the shipped files")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        sys.exit({"list": cmd_list, "train": cmd_train, "refstats": cmd_refstats}[args.cmd](args))
    except EvaluatorError as e:
        print(f"bench-evaluator: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
