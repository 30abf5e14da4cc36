"""`bench-perf`: the harness measured against its floors and peers -> ``reports/perf.md``.

Every goal is a ratio of two timings taken side by side in one run: the two sides alternate round by round and
each side's median is used, so background load on a shared machine hits both alike. Sizes are fixed per mode
(``SIZES``); ``--quick`` shrinks everything to seconds (for the test), the default run fits in minutes on 2 cores.
:mod:`bench.perf.experiments` measures (data only), :mod:`bench.perf.render` writes the report from that data.

    bench-perf                      # full: writes reports/perf.md
    bench-perf --quick --out /tmp/perf.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from bench.utils import atomic_write_text, check_output_dir

if TYPE_CHECKING:
    from bench.perf.experiments import Measurements
    from bench.perf.render import Run


def lib_versions() -> str:

    libs = ["torch", "diffusers", "lightning", "clean-fid", "numpy"]
    return ", ".join([f"python {platform.python_version()}", *(f"{n} {version(n)}" for n in libs)])


def run(mode: str, argv: list) -> tuple[Run, Measurements]:
    """Measure everything at ``mode``'s sizes: (the run's header facts, the measurements)."""
    import torch  # lazy: main() refuses bad arguments before torch and the harness are imported

    from bench.env import hardware  # lazy: as torch
    from bench.metrics.cost import load_average  # lazy: as torch
    from bench.perf.experiments import SIZES, _cfg, measure  # lazy: as torch
    from bench.perf.render import Run  # lazy: as torch

    P = SIZES[mode]
    load0, t0 = load_average(), time.perf_counter()
    m = measure(P, Path(_cfg().cache_dir),
                log=lambda name, s: print(f"bench-perf: {name} done in {s:.1f} s", file=sys.stderr, flush=True))
    return Run(argv=list(argv), mode=mode, sizes=P, seconds=time.perf_counter() - t0, load_before=load0,
               load_after=load_average(), machine=hardware("cpu"), versions=lib_versions(),
               torch_threads=torch.get_num_threads(), omp_threads=os.environ.get("OMP_NUM_THREADS", "unset"),
               cores=os.cpu_count()), m


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="bench-perf", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shrink everything to seconds (tests)")
    ap.add_argument("--out", default="reports/perf.md")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: stable on a shared CPU)")
    ap.add_argument("--score-memory", type=int, default=None, help=argparse.SUPPRESS)  # internal: one fresh process
    a = ap.parse_args(argv)
    if a.threads < 1:
        print(f"bench: error: --threads={a.threads} is not allowed: an integer >= 1", file=sys.stderr)
        sys.exit(2)
    if a.score_memory is None:
        try:
            check_output_dir(Path(a.out).parent, "--out")
        except Exception as e:
            print(f"bench: error: {e}", file=sys.stderr)
            sys.exit(2)
    import torch  # lazy: the argument errors above come in a second, before these imports

    from bench.env import quiet_console  # lazy: as torch
    from bench.perf.experiments import score_memory  # lazy: as torch
    from bench.perf.render import render  # lazy: as torch

    quiet_console()
    torch.set_num_threads(a.threads)
    if a.score_memory is not None:
        print(json.dumps(score_memory(a.score_memory)))
        return
    text = render(*run("quick" if a.quick else "full", argv))
    atomic_write_text(a.out, text)
    print(text)
