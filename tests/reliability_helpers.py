"""Shared by test_reliability / test_bad_inputs / test_determinism: shrunk configs, a persistent model cache, the CLI.

Models, the digits evaluator and reference statistics live in the persistent test cache (``metrics_helpers.CACHE``,
``$BENCH_TEST_CACHE``): trained once per machine, read-only for these tests. A test that corrupts a cache file
copies what it needs into a private cache first (:func:`private_cache`).
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import cli_runner
from metrics_helpers import CACHE

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")

# toy2d, shrunk: an MLP trained 60 steps, 64 samples per cell, exact SWD/MMD against 500 true points.
TOY = ["experiment=toy2d", "tracker=none", "device=cpu", "train.max_steps=60", "train.batch_size=256",
       "train.warmup_steps=5", "data.num_train=2000", "sampling.num_samples=64", "sampling.batch_size=32",
       "sampling.grid_size=64", "metric.toy_num_reference=500", "metric.swd_projections=32",
       "trainer.enable_progress_bar=false"]
TOY_SWEEP = ["sampler=ddim,euler,heun", "sampling.num_inference_steps=2,3"]  # 6 cells
# digits, shrunk further than experiment=smoke: a 2-step UNet (its numbers are noise, but deterministic noise).
DIGITS = ["experiment=smoke", "tracker=none", "device=cpu", "train.max_steps=2", "train.batch_size=16",
          "train.warmup_steps=1", "sampling.num_samples=24", "sampling.batch_size=8", "sampling.num_inference_steps=2",
          "metric.kid_subset_size=8", "metric.kid_subsets=4", "metric.is_splits=2"]
METRICS = ("swd", "mmd", "fid", "kid", "is", "nfe")


def compose(*overrides: str, cache=CACHE):
    from hydra import compose as _compose, initialize_config_dir

    from bench.schema import register

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return _compose("bench", overrides=[f"cache_dir={cache}", *overrides])


def trained(base: list[str]):
    """Train (once per machine) the model that `base` describes into CACHE; the evaluator/refstats too (digits).
    Locked: parallel test workers asking for the same `base` wait for one of them instead of computing it twice."""
    import torch
    from filelock import FileLock

    from bench.cell import prepare
    from bench.training import load_or_train

    CACHE.mkdir(parents=True, exist_ok=True)
    lock = CACHE / f".trained-{hashlib.sha256(json.dumps(base).encode()).hexdigest()[:16]}.lock"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with FileLock(str(lock)):
            cfg = compose(*base, "hydra.mode=RUN")
            info = prepare(cfg)
            load_or_train(cfg)
            if info.kind == "images":
                from bench.evaluators import load_feature_net
                from bench.metrics.refstats import get_reference

                get_reference(cfg, info, load_feature_net(cfg, info))
    finally:
        torch.set_num_threads(n)
    return CACHE


def private_cache(dst: Path, what=("models", "evaluators", "refstats")) -> Path:
    """A copy of the persistent cache (the parts in `what`) that a test may corrupt."""
    dst.mkdir(parents=True, exist_ok=True)
    for sub in what:
        if (CACHE / sub).exists():
            shutil.copytree(CACHE / sub, dst / sub, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.lock", ".*.partial", ".tiny_clip*"))
    return dst


def bench(out_dir, *args, cache=CACHE, env=None, timeout=600):
    """The real CLI in a subprocess: `python -m bench.run out_dir=<out_dir> args...`."""
    e = {**os.environ, "BENCH_CACHE": str(cache), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
         "OMP_NUM_THREADS": "1", **(env or {})}
    e.pop("HYDRA_FULL_ERROR", None)
    return cli_runner.run([*args, f"out_dir={out_dir}"], cwd=ROOT, env=e, timeout=timeout)


def rows(path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
