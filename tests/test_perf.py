"""bench-perf: the quick run measures every ratio (a finite positive number; the goals are the benchmark's business,
not the test's) and its side-by-side checks hold, read from the measurements themselves; the renderer writes what
it is given; bad input is one error line."""
import math
import os
import subprocess
import sys
from pathlib import Path

from metrics_helpers import CACHE

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, timeout=600):
    env = {**os.environ, "BENCH_CACHE": str(CACHE), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "bench.perf", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_quick_perf_measures_every_ratio(monkeypatch, one_thread):
    from bench.perf import run
    from bench.perf.experiments import ORDER, SIZES
    from bench.perf.render import render

    monkeypatch.setenv("BENCH_CACHE", str(CACHE))
    monkeypatch.chdir(ROOT)  # the memory ratio starts `python -m bench.perf` per N
    header, m = run("quick", ["--quick", "--out", "perf.md"])
    P = SIZES["quick"]
    assert [r.key for r in m.ratios] == [k for k in ORDER for _ in (P["compile"] if k == "compiled" else [k])]
    for r in m.ratios:
        assert math.isfinite(r.value) and r.value > 0 and r.passed == (r.value <= r.goal), r
    facts = {r.key: r.facts for r in m.ratios}
    # the harness and clean-fid compute the same FID on the same images; the harness and DDIMPipeline the same samples
    assert abs(facts["fid"]["fid_harness"] - facts["fid"]["fid_clean"]) <= 1e-4 * facts["fid"]["fid_clean"]
    assert facts["diffusers"]["pipe_diff"] < 1e-6 and facts["floor"]["steps"] == P["steps"]
    assert set(m.sampling["min"]) == {"bare", "diffusers", "defaults", "inference_mode=False", "channels_last=False",
                                      "host sync every step"} and min(m.sampling["min"].values()) > 0
    assert m.sampling["diffs"]["inference_mode=False"] == 0 and m.sampling["diffs"]["host sync every step"] == 0
    assert [n for n, _, _ in m.time_vs_n] == P["time_n"] and all(t > 0 and nfe == 2 for _, t, nfe in m.time_vs_n)
    assert [(s, nfe) for s, _, nfe in m.time_vs_nfe] == [(s, s) for s in P["nfe_steps"]]
    assert [r["n"] for r in m.memory] == P["mem_n"] and all(r["peak_mb"] >= r["base_mb"] > 0 for r in m.memory)
    assert m.sweep["cells"] == 3 * len(P["sweep_steps"]) and m.sweep["total"] >= m.sweep["cell_wall"] > 0
    # compiled sampling: timed apart from its compile, checked against eager, within one uint8 level of it
    from bench.sampling.compiled import ONE_UINT8_LEVEL

    (c,) = m.compiled
    assert (c["size"], c["batch"], c["steps"], c["forwards"], c["block_out_channels"]) == (8, 4, 2, 8, [16])
    assert set(c["min"]) == {"eager", "compiled", "bf16 autocast", "diffusers"} and min(c["min"].values()) > 0
    assert c["diffs"]["eager"] == 0 and c["diffs"]["compiled"] <= ONE_UINT8_LEVEL >= c["check_diff"]
    assert c["compile_s"] > max(c["min"].values())  # the compile is not inside the timed batches
    assert facts["compiled"]["harness_s"] == c["min"]["compiled"] and "compiled8" in m.profiles
    assert m.features["n"] == P["feat_n"] and m.features["compile_s"] > 0 and m.features["diff"] < 1e-3
    assert m.default_job["bench"] == dict(cells=6, images=6000, image_forwards=90000)  # 3 samplers x (10 + 20) steps
    assert header.torch_threads == 1 and header.mode == "quick"
    text = render(header, m)  # every measured ratio and verdict is in the report
    for i, r in enumerate(m.ratios, 1):
        assert f"| {i} | " in text and f"| {r.value:.3f} | ≤ {r.goal} | {'pass' if r.passed else '**miss**'} |" in text
    assert f"| 8×8 | 4 × 2 | compiled | {c['min']['compiled'] * 1e3:.1f} |" in text


def _compiled(size, batch, steps, eager, fast, compile_s):
    """One image size of the compiled-sampling experiment: the four sides' min (and 1.1x median) seconds."""
    mn = {"eager": eager, "compiled": fast, "bf16 autocast": 0.9 * eager, "diffusers": 1.02 * eager}
    return dict(size=size, batch=batch, steps=steps, image_shape=[1, size, size], block_out_channels=[32, 64],
                min=mn, med={k: 1.1 * v for k, v in mn.items()}, forwards=batch * steps, compile_s=compile_s,
                check_diff=2e-6, check_s=0.5,
                diffs={"eager": 0.0, "compiled": 1e-6, "bf16 autocast": 1e-2, "diffusers": 6e-4})


def test_report_lists_the_profiles_of_the_missed_goals_only():
    from bench.perf.experiments import Measurements, Ratio
    from bench.perf.profilers import Profile
    from bench.perf.render import Run, render

    run = Run(argv=[], mode="full", sizes={"rounds": 3, "time_n_steps": 2, "nfe_n": 4}, seconds=1.0, load_before=0.5,
              load_after=0.25, machine="cpu", versions="v", torch_threads=1, omp_threads="1", cores=2)
    m = Measurements(
        ratios=[Ratio("lightning", 1.5, 1.1, dict(train_batch=8, lightning_s=0.003, plain_s=0.002)),
                Ratio("sweep", 1.0, 1.2, dict(cells=12, total=2.0, inner=2.0, cell_wall=2.0))],
        sampling=dict(min={"defaults": 0.5}, med={"defaults": 0.6}, diffs={"defaults": 0.0},
                      defaults=dict(inference_mode=True, channels_last=False)),
        time_vs_n=[(10, 1.0, 2.0)], time_vs_nfe=[(2, 1.0, 2.0)],
        memory=[dict(n=10, base_mb=100.0, peak_mb=101.0, delta_mb=1.0, seconds=0.5)],
        profiles={"lightning": Profile("own", [("fit", "trainer/trainer.py:1", 1, 3.0, 75.0)])},
        compiled=[_compiled(8, 64, 50, eager=1.0, fast=0.5, compile_s=20.0),
                  _compiled(28, 16, 10, eager=2.0, fast=1.6, compile_s=60.0)],
        features=dict(n=2000, feature_net="digits_cnn", compile_s=10.0, eager_s=0.2, compiled_s=0.1, diff=1e-6),
        default_job={"bench": dict(cells=6, images=6000, image_forwards=90000)})
    text = render(run, m)
    assert ("| 1 | Lightning training step ÷ plain PyTorch loop (same module, loss, optimiser, clipping, EMA; batch "
            "8, median step) | 1.500 | ≤ 1.1 | **miss** | 3.0 ms vs 2.0 ms per step |") in text
    assert "| 2 | total time of a 12-cell sweep" in text and "| 1.000 | ≤ 1.2 | pass |" in text
    assert "| `fit` (trainer/trainer.py:1) | 1 | 3.0 | 75.0 % |" in text and "### total time" not in text
    assert "| defaults | 500.0 | 600.0 | 1.000× | 0.0e+00 |" in text and text.endswith("\n")
    # compiled vs eager per size; the compile's break-even and the default it supports, from the numbers given
    assert "| 8×8 | 64 × 50 | compiled | 500.0 | 550.0 | 0.500× | 1.0e-06 |" in text
    assert "| 28×28 | 16 × 10 | bf16 autocast | 1800.0 | 1980.0 | 0.900× | 1.0e-02 |" in text
    # 8x8: 0.5 s saved per 3200 image-forwards -> 0.156 ms each; 20 s of compile pay back after 128,000
    assert "| 8×8 | 20.0 | 0.156 | 128,000 | 2.0e-06 |" in text
    assert ("`bench` (6 cells, 90,000 image-forwards of the 8×8 UNet, at this batch's per-forward times): compiling "
            "saves 14 s of 28 s and costs 20 s once: 6 s slower in all.") in text
    assert "So the default job loses by compiling: `cost.compile=none` is the default, as this run's numbers favour" \
        in text
    assert "bf16 autocast (8×8): 0.90× the eager time, samples within 1.0e-02 of eager: beyond one uint8 level" \
        in text
    assert "compiling it pays for its compile after 200,000 images (the default job scores 6,000)" in text


def test_bad_threads_is_one_error_line(tmp_path):
    p = _run("--threads", "0", "--out", str(tmp_path / "perf.md"), timeout=120)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["bench: error: --threads=0 is not allowed: an "
                                                                   "integer >= 1"]
    assert not (tmp_path / "perf.md").exists()
