"""Peak memory and time of P/R/D/C (bench.metrics.prdc) and CMMD (bench.metrics.cmmd) at N real = N generated.

Each (score, N) runs in a fresh child process, so its peak RSS (ru_maxrss) is its own; the features are random
Gaussians of dimension --dim (64: the digits CNN's; CLIP ViT-L/14's is 768). The features alone take
2 · N · dim · 8 bytes (float64); the rest of the peak is the tiles, independent of N.

    OMP_NUM_THREADS=1 python scripts/prdc_cmmd_cost.py --n 10000 50000 --dim 64
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(score: str, n: int, dim: int) -> dict:
    import numpy as np
    import torch

    from bench.metrics.cmmd import cmmd
    from bench.metrics.prdc import prdc

    rng = np.random.default_rng(0)
    real, gen = rng.normal(size=(n, dim)), rng.normal(0.1, 1.0, size=(n, dim))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0, c0 = time.perf_counter(), time.process_time()
    out = prdc(real, gen) if score == "prdc" else {"cmmd": cmmd(real, gen)}
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0  # wall, and CPU time (robust to a busy machine)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"score": score, "n": n, "dim": dim, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "peak_rss_mib": round(peak), "rss_before_mib": round(base), "features_mib": round(2 * n * dim * 8 / 2**20),
            "threads": torch.get_num_threads(),
            **{k: round(v, 4) for k, v in out.items() if k in ("precision", "recall", "density", "coverage", "cmmd")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--scores", nargs="+", default=["prdc", "cmmd"], choices=["prdc", "cmmd"])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.dim)))
        return
    for score in a.scores:
        for n in a.n:
            res = subprocess.run([sys.executable, __file__, "--child", score, str(n), "--dim", str(a.dim)],
                                 capture_output=True, text=True, check=True)
            print(res.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
