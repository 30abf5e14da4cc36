"""Peak memory and time of P/R/D/C (bench.metrics.prdc) and CMMD (bench.metrics.cmmd) at N real = N generated.

Each (score, N) runs in a fresh child process, so its peak RSS (VmHWM) is its own; the features are random
Gaussians of dimension --dim (64: the digits CNN's; CLIP ViT-L/14's is 768). The features alone take
2 · N · dim · 8 bytes (float64); the rest of the peak is the tiles, independent of N.

    OMP_NUM_THREADS=1 python scripts/prdc_cmmd_cost.py --n 10000 50000 --dim 64

``--check N``: before the costs, the largest difference of P/R/D/C from the reference implementations (``prdc``
0.2's density/coverage, torch-fidelity 0.4.0's precision/recall) on three pairs of feature sets: N Gaussian points,
N integer points with many exact duplicates (zero radii), and the digits CNN's features of the held-out digits
against the reference features (quantised 8x8 images: real duplicates), and of CMMD from the formula in full.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mib(field: str) -> float:
    """This process's resident memory in MiB: ``VmHWM`` (its peak) or ``VmRSS`` from /proc (Linux). Not
    ru_maxrss: Linux carries that across exec, so a child would report its parent's peak when that was larger."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(score: str, n: int, dim: int) -> dict:
    import numpy as np
    import torch

    from bench.metrics.cmmd import cmmd
    from bench.metrics.prdc import prdc

    rng = np.random.default_rng(0)
    real, gen = rng.normal(size=(n, dim)), rng.normal(0.1, 1.0, size=(n, dim))
    base = rss_mib("VmHWM")
    t0, c0 = time.perf_counter(), time.process_time()
    out = prdc(real, gen) if score == "prdc" else {"cmmd": cmmd(real, gen)}
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0  # wall, and CPU time (robust to a busy machine)
    peak = rss_mib("VmHWM")
    return {"score": score, "n": n, "dim": dim, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "peak_rss_mib": round(peak), "rss_before_mib": round(base), "features_mib": round(2 * n * dim * 8 / 2**20),
            "threads": torch.get_num_threads(),
            **{k: round(v, 4) for k, v in out.items() if k in ("precision", "recall", "density", "coverage", "cmmd")}}


def references(real, gen, pr_k: int = 3, dc_k: int = 5) -> dict:
    """precision/recall from torch-fidelity's prc, density/coverage from prdc, on the same features."""
    import contextlib
    import io

    import torch
    from prdc import compute_prdc
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        dc = compute_prdc(real, gen, dc_k)
    p, r = calculate_precision_recall_full(torch.from_numpy(gen), torch.from_numpy(real), pr_k, 10000)
    return {"precision": float(p), "recall": float(r), "density": dc["density"], "coverage": dc["coverage"]}


def digits_features():
    """(reference features, held-out digits' features) in the shipped digits CNN, as a digits cell scores."""
    from pathlib import Path

    import numpy as np
    from hydra import compose, initialize_config_dir

    from bench.data import build_dataset, get_data_info
    from bench.evaluators import load_feature_net
    from bench.images import quantize_uint8
    from bench.metrics.refstats import get_reference
    from bench.schema import register

    register()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "conf"), version_base="1.3"):
        cfg = compose("bench", overrides=["data=digits", "tracker=none"])
    info = get_data_info(cfg.data)
    net = load_feature_net(cfg, info)
    x = build_dataset(cfg.data, "test").x
    return get_reference(cfg, info, net).features, np.concatenate(
        [net(quantize_uint8(x[i:i + 256]))[0].detach().numpy() for i in range(0, len(x), 256)])


def cross_check(n: int, dim: int) -> list[dict]:
    """Largest |ours - reference| over P/R/D/C per feature-set pair, and CMMD against the full-matrix formula."""
    import numpy as np

    from bench.metrics.cmmd import cmmd
    from bench.metrics.prdc import prdc

    rng = np.random.default_rng(0)
    sets = {"gaussian": (rng.normal(size=(n, dim)), rng.normal(0.1, 1.0, size=(n, dim))),
            "integer (duplicates)": (rng.integers(0, 3, (n, 6)).astype(np.float64),
                                     rng.integers(0, 3, (n, 6)).astype(np.float64)),
            "digits CNN features": digits_features()}
    out = []
    for name, (real, gen) in sets.items():
        ours, ref = prdc(real, gen), references(real, gen)
        out.append({"features": name, "n_ref": len(real), "n_gen": len(gen), "dim": real.shape[1],
                    "max_diff_torch_fidelity_pr": max(abs(ours[k] - ref[k]) for k in ("precision", "recall")),
                    "max_diff_prdc_dc": max(abs(ours[k] - ref[k]) for k in ("density", "coverage")),
                    "zero_radii_ref": ours["prdc_zero_radii_ref"], "zero_radii_gen": ours["prdc_zero_radii_gen"],
                    **{k: round(ours[k], 4) for k in ref}})
    x, y = sets["gaussian"][0][:2000], sets["gaussian"][1][:2000]
    xu, yu = (a / np.linalg.norm(a, axis=1, keepdims=True) for a in (x, y))
    k = lambda a, b: np.exp(-((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T) / 200.0).mean()  # noqa: E731
    out.append({"features": "gaussian (CMMD, 2000 each)", "cmmd": cmmd(x, y),
                "abs_diff_formula": abs(cmmd(x, y) - 1000 * (k(xu, xu) + k(yu, yu) - 2 * k(xu, yu)))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--scores", nargs="+", default=["prdc", "cmmd"], choices=["prdc", "cmmd"])
    ap.add_argument("--check", type=int, default=0, metavar="N", help="cross-check against prdc / torch-fidelity")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.dim)))
        return
    if a.check:
        for line in cross_check(a.check, a.dim):
            print(json.dumps(line), flush=True)
    for score in a.scores:
        for n in a.n:
            res = subprocess.run([sys.executable, __file__, "--child", score, str(n), "--dim", str(a.dim)],
                                 capture_output=True, text=True, check=True)
            print(res.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
