"""bench-perf --quick: reports/perf.md's structure, every ratio measured (a finite positive number; the goals are
the benchmark's business, not the test's), and bad input."""
import math
import os
import re
import subprocess
import sys
from pathlib import Path

from metrics_helpers import CACHE

ROOT = Path(__file__).resolve().parent.parent
RATIOS = ["NFE × bare denoiser forward", "diffusers `DDIMPipeline`", "clean-fid `compute_fid`", "peak memory",
          "Lightning training step", "-cell sweep"]


def _run(*args, timeout=600):
    env = {**os.environ, "BENCH_CACHE": str(CACHE), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "bench.perf", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_quick_perf_report(tmp_path):
    out = tmp_path / "perf.md"
    p = _run("--quick", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# bench-perf") and f"Command: `bench-perf --quick --out {out}`" in text
    assert "Machine: " in text and "torch threads 1" in text and "load average" in text and "diffusers " in text
    section = text.split("## Ratios")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if re.match(r"\| \d \| ", line)]
    assert len(rows) == len(RATIOS)
    for row, what in zip(rows, RATIOS):
        cells = [c.strip() for c in row.strip("|").split("|")]
        value, goal, verdict = float(cells[2]), cells[3], cells[4]
        assert what in cells[1] and math.isfinite(value) and value > 0, row
        assert goal.startswith("≤ ") and verdict in ("pass", "**miss**")
        assert (verdict == "pass") == (value <= float(goal[2:])), row  # the verdict follows the number
    for section in ("## Optimisations, each on/off", "## Scaling", "Time vs NFE", "Scoring memory vs N",
                    "## Where the misses come from"):
        assert section in text
    opt = re.findall(r"^\| (defaults|inference_mode=\w+|channels_last=\w+|host sync every step) \| ([\d.]+)", text,
                     re.M)
    assert len(opt) == 4 and all(float(v) > 0 for _, v in opt)
    # the harness and clean-fid compute the same FID on the same images; the harness and DDIMPipeline the same samples
    fid = re.search(r"FID ([\d.]+) vs ([\d.]+)", text)
    assert abs(float(fid[1]) - float(fid[2])) <= 1e-4 * float(fid[2])
    assert float(re.search(r"samples agree to ([\d.e+-]+)", text)[1]) < 1e-6  # same UNet, scheduler, noise


def test_bad_threads_is_one_error_line(tmp_path):
    p = _run("--threads", "0", "--out", str(tmp_path / "perf.md"), timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["bench: error: --threads=0 is not allowed: an "
                                                                   "integer >= 1"]
    assert not (tmp_path / "perf.md").exists()
