"""Shared by the metrics / evaluator tests: a persistent evaluator cache and the real config, composed."""
import os
from pathlib import Path
from types import SimpleNamespace

import torch

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
# Evaluators (digits CNN, offline CLIP) and reference stats are trained / computed once and reused across runs
# (CI starts empty: first run trains them, ~1 min each on CPU).
CACHE = Path(os.environ.get("BENCH_TEST_CACHE", Path(__file__).resolve().parent.parent / ".cache" / "bench-test"))


def compose(*overrides: str, cache=CACHE):
    from hydra import compose as _compose, initialize_config_dir

    from bench.schema import register

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return _compose("bench", overrides=["experiment=smoke", "tracker=none", f"cache_dir={cache}", *overrides])


def batches(x, labels=None, batch_size=100):
    """Feed images to a Scorer like bench.sampling.sample does (Batch(x, labels, index))."""
    for s in range(0, len(x), batch_size):
        idx = torch.arange(s, min(s + batch_size, len(x)))
        yield SimpleNamespace(x=x[idx], labels=None if labels is None else labels[idx], index=idx)
