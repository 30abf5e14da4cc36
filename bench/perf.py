"""`bench-perf`: the harness measured against its floors and peers -> ``reports/perf.md``.

Every goal is a ratio of two timings taken side by side in one run: the two sides alternate round by round and
each side's median is used, so background load on a shared machine hits both alike. Sizes are fixed per mode
(``SIZES``); ``--quick`` shrinks everything to seconds (for the test), the default run fits in minutes on 2 cores.

    bench-perf                      # full: writes reports/perf.md
    bench-perf --quick --out /tmp/perf.md
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import dataclasses
import functools
import io
import json
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import lightning as L
import numpy as np
import psutil
import torch
from PIL import Image

from bench import pipeline
from bench.data import build_dataset, get_data_info
from bench.data.datamodule import BenchDataModule
from bench.env import hardware
from bench.evaluators import load_feature_net
from bench.images import quantize_uint8
from bench.metrics.cost import CostMeter, load_average
from bench.metrics.refstats import get_reference
from bench.metrics.scorer import Scorer
from bench.models import build_model
from bench.preflight import compose_cfg
from bench.keys import cell_config, cell_key
from bench.sampling import Batch, build_scheduler, sample
from bench.schema import CostConfig
from bench.training import load_or_train, objectives as obj
from bench.training.cache import fit
from bench.training.module import DiffusionModule
from bench.utils import atomic_write_text
from bench.validate import check_output_dir

# Real config, shrunk per mode. "arch" overrides pick the UNet: full = the default digits UNet (conf/model/unet.yaml),
# quick = the smoke UNet. `train` = the (tiny) training of the model the 12-cell sweep samples.
SIZES = {
    "full": dict(arch=[], batch=64, steps=50, rounds=3, fid_n=2000, mem_n=[1000, 4000, 10000],
                 time_n=[1000, 2000, 4000, 8000], time_n_steps=2, nfe_n=128, nfe_steps=[5, 10, 20, 50, 100],
                 train_steps=20, train_batch=128, sweep_n=100, sweep_steps=[5, 10, 20, 50],
                 sweep_train=["train.max_steps=50"]),
    "quick": dict(arch=["model.block_out_channels=[16,32]"], batch=8, steps=4, rounds=2, fid_n=200,
                  mem_n=[200, 400], time_n=[64, 128], time_n_steps=2, nfe_n=16, nfe_steps=[2, 4],
                  train_steps=4, train_batch=16, sweep_n=16, sweep_steps=[1, 2],
                  sweep_train=["train.max_steps=2", "train.batch_size=16", "train.warmup_steps=1"]),
}
SWEEP_SAMPLERS = ["ddim", "dpmpp", "euler"]  # x sweep_steps = 12 cells (full)
BASE = ["tracker=none", "device=cpu", "trainer.enable_progress_bar=false", "hydra.mode=RUN"]


# ---- helpers -----------------------------------------------------------------------------------------------------
def _cfg(*overrides):

    return compose_cfg([*BASE, *overrides])


def _median(xs) -> float:
    return float(statistics.median(xs))


def _rss_mb() -> float:

    return psutil.Process().memory_info().rss / 2**20


def interleaved(sides: dict, rounds: int) -> tuple[dict, dict]:
    """Time each side once per round, the order rotating every round, after one uncounted warm-up round.
    Each side is a callable returning (seconds, output); returns ({side: [seconds]}, {side: last output}).
    Ratios use the minimum over rounds (timeit's rule: other processes only ever add time) and show medians too."""
    names, times, outs = list(sides), {k: [] for k in sides}, {}
    for r in range(rounds + 1):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t, outs[k] = sides[k]()
            if r:
                times[k].append(t)
    return times, outs


def torch_profile(fn, top: int = 6) -> str:
    """Top ops by self CPU time of one call of ``fn`` (torch.profiler), as a markdown table."""
    from torch.profiler import ProfilerActivity, profile  # lazy: only a missed goal is profiled

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1
    lines = ["| op | calls | self CPU (ms) | share |", "|---|---:|---:|---:|"]
    for e in ev[:top]:
        lines.append(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e3:.1f} | "
                     f"{100 * e.self_cpu_time_total / total:.1f} % |")
    return "\n".join(lines)


def py_profile(fn, top: int = 8, cumulative: bool = False, only: str | None = None) -> str:
    """Top Python functions of one call of ``fn`` (cProfile) by own time, or by cumulative time for functions
    whose file path contains ``only``, as a markdown table."""
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    st = pstats.Stats(pr, stream=io.StringIO())
    col = 3 if cumulative else 2
    items = [kv for kv in st.stats.items() if only is None or only in kv[0][0]]
    rows = sorted(items, key=lambda kv: kv[1][col], reverse=True)[:top]
    total = max(v[3] for v in st.stats.values()) if cumulative else sum(v[2] for v in st.stats.values())
    what = "cumulative" if cumulative else "own"
    lines = [f"| function | calls | {what} time (ms) | share |", "|---|---:|---:|---:|"]
    for (file, line, name), v in rows:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        lines.append(f"| `{name}` ({where}) | {v[1]} | {v[col] * 1e3:.1f} | {100 * v[col] / (total or 1):.1f} % |")
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def _digits_train() -> torch.Tensor:

    return build_dataset(_cfg().data, "train").x


def digits_images(n: int, seed: int = 0) -> torch.Tensor:
    """n uint8 (1, 8, 8) images: the digits train split tiled to n, each copy with its own small noise (distinct
    images with digit statistics; timing does not depend on what they show)."""

    x = _digits_train()
    g = torch.Generator().manual_seed(seed)
    reps = -(-n // len(x))
    tiled = x.repeat(reps, 1, 1, 1)[:n]
    return quantize_uint8(tiled + 0.04 * torch.randn(tiled.shape, generator=g) * (torch.arange(n) >= len(x))
                          .view(-1, 1, 1, 1))


# ---- 1 + 2: sampling vs the bare forward floor and vs diffusers' DDIMPipeline; optimisations on/off ------------------
def sampling_ratios(P, out: dict) -> list[dict]:
    from diffusers import DDIMPipeline, DDIMScheduler  # lazy: the peer pipeline is only built for this ratio


    cfg = _cfg(*P["arch"])
    info = dataclasses.replace(get_data_info(cfg.data), num_classes=0)  # DDIMPipeline is unconditional
    torch.manual_seed(0)
    model = build_model(cfg.model, info).eval()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    sched = build_scheduler(cfg)
    B, S = P["batch"], P["steps"]
    pipe = DDIMPipeline(unet=model.unet, scheduler=DDIMScheduler.from_config(sched.config))
    pipe.set_progress_bar_config(disable=True)

    def harness(m=model, **opts) -> tuple[float, torch.Tensor]:
        meter = CostMeter("cpu")
        (batch,) = list(sample(m, sched, shape=tuple(info.shape), num_samples=B, batch_size=B, seed=0,
                               num_inference_steps=S, guidance_scale=1.0, num_classes=0, device="cpu", cost=meter,
                               progress=False, **opts))
        return meter.batch_seconds[0], batch.x

    d = CostConfig()  # the harness defaults, and each option flipped
    # the floor: the same model the harness samples with its defaults, called S times in a row
    floor = model_cl if d.channels_last else model
    x_bare, t_bare = torch.randn(B, *info.shape), torch.full((B,), 500.0)
    if d.channels_last:
        x_bare = x_bare.contiguous(memory_format=torch.channels_last)

    def bare():
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(S):
                floor(x_bare, t_bare)
            return time.perf_counter() - t0, None

    def diffusers_pipe():
        gens = [torch.Generator().manual_seed(i) for i in range(B)]
        t0 = time.perf_counter()
        img = pipe(batch_size=B, generator=gens, eta=0.0, num_inference_steps=S, output_type="pt").images
        return time.perf_counter() - t0, img

    on = dict(inference_mode=d.inference_mode, channels_last=d.channels_last, check_every_step=False)
    variants = {"defaults": on, f"inference_mode={not d.inference_mode}": {**on, "inference_mode": not d.inference_mode},
                f"channels_last={not d.channels_last}": {**on, "channels_last": not d.channels_last},
                "host sync every step": {**on, "check_every_step": True}}
    sides = {"bare": bare, "diffusers": diffusers_pipe,
             **{k: functools.partial(harness, **v, m=model_cl if v["channels_last"] else model)
                for k, v in variants.items()}}
    times, samples = interleaved(sides, P["rounds"])
    mn, med = ({k: f(v) for k, v in times.items()} for f in (min, _median))
    h = mn["defaults"]
    img = samples["diffusers"]
    same_layout = f"channels_last={not d.channels_last}" if d.channels_last else "defaults"  # as the pipeline's UNet
    pipe_diff = float(((samples[same_layout] / 2 + 0.5).clamp(0, 1) - img).abs().max())
    out["sampling"] = dict(min=mn, med=med, pipe_diff=pipe_diff, defaults=on,
                           diffs={k: float((samples[k] - samples["defaults"]).abs().max()) for k in variants})
    out["profile_harness"] = torch_profile(lambda: sides["defaults"]())
    out["profile_diffusers"] = torch_profile(lambda: diffusers_pipe())
    shape = f"batch {B}, DDIM {S} steps, {'x'.join(map(str, info.shape))} UNet {list(cfg.model.block_out_channels)}"
    return [
        dict(key="floor", name=f"harness sampling wall ÷ (NFE × bare denoiser forward), {shape}", value=h / mn["bare"],
             goal=1.03, detail=f"{h * 1e3:.1f} ms vs {S} × {mn['bare'] / S * 1e3:.2f} ms = {mn['bare'] * 1e3:.1f} ms; "
             f"medians {med['defaults'] / med['bare']:.3f}"),
        dict(key="diffusers", name=f"harness sampling (its defaults) ÷ diffusers `DDIMPipeline` (same UNet, steps, "
             f"batch, per-image generators), {shape}", value=h / mn["diffusers"], goal=0.9,
             detail=f"{h * 1e3:.1f} ms vs {mn['diffusers'] * 1e3:.1f} ms; medians "
                    f"{med['defaults'] / med['diffusers']:.3f}; samples agree to {pipe_diff:.1e} (same memory layout)"),
    ]


# ---- 3: feature extraction + FID vs clean-fid's compute_fid on a PNG folder ----------------------------------------
def fid_ratio(P, out: dict, cache: Path) -> list[dict]:
    from cleanfid import fid as cfid  # lazy: the peer is only imported for this ratio


    cfg = _cfg(f"cache_dir={cache}", "metric.kid=false", "metric.inception_score=false")
    info = get_data_info(cfg.data)
    net = load_feature_net(cfg, info)  # trained and cached once, outside the timing (clean-fid gets it loaded too)
    gen = digits_images(P["fid_n"], seed=1)
    ref = quantize_uint8(build_dataset(cfg.data, "train").x)
    tmp = Path(tempfile.mkdtemp(prefix="bench-perf-"))
    try:
        for name, imgs in (("gen", gen), ("ref", ref)):
            (tmp / name).mkdir()
            for i, im in enumerate(imgs[:, 0].numpy()):
                Image.fromarray(im).save(tmp / name / f"{i:06d}.png")

        class Extractor(torch.nn.Module):  # clean-fid hands (B, 3, H, W) floats in [0, 255]: the grey channel
            def forward(self, x):
                return net(x[:, :1].round().to(torch.uint8))[0]

        run_cache = tmp / "cache"  # reference statistics computed inside the timing, as clean-fid does
        c = _cfg(f"cache_dir={run_cache}", "metric.kid=false", "metric.inception_score=false")

        def harness():
            shutil.rmtree(run_cache, ignore_errors=True)
            if (cache / "evaluators").is_dir():  # a trained (not shipped) evaluator lives in the cache
                shutil.copytree(cache / "evaluators", run_cache / "evaluators")
            t0 = time.perf_counter()
            scorer = Scorer(c, info)
            for s in range(0, len(gen), 250):
                idx = torch.arange(s, min(s + 250, len(gen)))
                scorer.update(Batch(x=gen[idx].float() / 127.5 - 1, labels=None, index=idx))
            fid = scorer.compute()["fid"]
            return time.perf_counter() - t0, fid

        def clean():
            t0 = time.perf_counter()
            fid = cfid.compute_fid(str(tmp / "gen"), str(tmp / "ref"), mode="clean", custom_feat_extractor=Extractor(),
                                   custom_fn_resize=lambda im: im, num_workers=0, batch_size=250,
                                   device=torch.device("cpu"), verbose=False)
            return time.perf_counter() - t0, fid

        times, fids = interleaved({"harness": harness, "clean": clean}, P["rounds"])
        th, tc, fid_h, fid_c = times["harness"], times["clean"], fids["harness"], fids["clean"]
        out["fid"] = dict(h=min(th), c=min(tc), fid_h=fid_h, fid_c=fid_c)
        out["profile_cleanfid"] = py_profile(clean)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [dict(key="fid", name=f"harness feature extraction + FID ÷ clean-fid `compute_fid` (digits CNN in both, "
                 f"{P['fid_n']} generated vs {len(ref)} reference images; clean-fid reads them as PNG folders)",
                 value=min(th) / min(tc), goal=0.5,
                 detail=f"{min(th) * 1e3:.0f} ms vs {min(tc) * 1e3:.0f} ms; medians {_median(th) / _median(tc):.3f}; "
                        f"FID {fid_h:.6f} vs {fid_c:.6f}")]


# ---- 4: scoring memory vs N (a fresh process per N) ---------------------------------------------------------------
def score_memory(n: int) -> dict:
    """In this (fresh) process: score n images with the real digits scorer (FID, KID, IS); peak RSS and time."""


    cfg = _cfg()
    info = get_data_info(cfg.data)
    scorer = Scorer(cfg, info)
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak, t0 = base, time.perf_counter()
    for s in range(0, n, 250):  # each batch made on the fly: the images are never all held, as in a sweep
        idx = torch.arange(s, min(s + 250, n))
        x = digits_images(len(idx), seed=s).float() / 127.5 - 1
        scorer.update(Batch(x=x, labels=None, index=idx))
        peak = max(peak, proc.memory_info().rss)
    row = scorer.compute()
    peak = max(peak, proc.memory_info().rss)
    return {"n": n, "base_mb": base / 2**20, "peak_mb": peak / 2**20, "delta_mb": (peak - base) / 2**20,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "seconds": time.perf_counter() - t0,
            "fid": row["fid"]}


def memory_ratio(P, out: dict) -> list[dict]:
    recs = []
    for n in P["mem_n"]:
        p = subprocess.run([sys.executable, "-m", "bench.perf", "--score-memory", str(n)], capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        if p.returncode:
            raise RuntimeError(f"scoring {n} images failed: {p.stderr[-2000:]}")
        recs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    out["memory"] = recs
    lo, hi = recs[0], recs[-1]
    return [dict(key="memory", name=f"peak memory (process RSS) of scoring at N = {hi['n']} ÷ at N = {lo['n']} "
                 f"(FID + KID + IS, streamed)", value=hi["peak_mb"] / lo["peak_mb"], goal=1.1,
                 detail=f"{hi['peak_mb']:.0f} MB vs {lo['peak_mb']:.0f} MB; scoring's own growth "
                        f"{hi['delta_mb']:.1f} vs {lo['delta_mb']:.1f} MB")]


# ---- scaling: time vs N, time vs NFE ---------------------------------------------------------------------------
def scaling(P, out: dict) -> None:

    def run(n, steps):
        cfg = _cfg(*P["arch"], f"sampling.num_inference_steps={steps}", "metric.kid=false")
        info = get_data_info(cfg.data)
        torch.manual_seed(0)
        model = build_model(cfg.model, info).eval()
        scorer, meter = Scorer(cfg, info), CostMeter("cpu")
        t0 = time.perf_counter()
        for b in sample(model, build_scheduler(cfg), shape=tuple(info.shape), num_samples=n, batch_size=250, seed=0,
                        num_inference_steps=steps, guidance_scale=1.0, num_classes=info.num_classes, device="cpu",
                        cost=meter, progress=False):
            scorer.update(b)
        scorer.compute()
        return time.perf_counter() - t0, meter.summary()["nfe"]

    run(min(P["time_n"]), P["time_n_steps"])  # warm-up
    out["time_vs_n"] = [(n, *run(n, P["time_n_steps"])) for n in P["time_n"]]
    out["time_vs_nfe"] = [(s, *run(P["nfe_n"], s)) for s in P["nfe_steps"]]


# ---- 5: Lightning training step vs a plain PyTorch loop ---------------------------------------------------------
def training_ratio(P, out: dict) -> list[dict]:


    steps = P["train_steps"]
    cfg = _cfg(*P["arch"], f"train.max_steps={steps}", f"train.batch_size={P['train_batch']}",
               "train.checkpoint_every=0")
    info = get_data_info(cfg.data)

    class Clock(L.Callback):
        def __init__(self):
            self.t = []

        def on_train_batch_start(self, *a):
            self.t.append(time.perf_counter())

        def on_train_end(self, *a):
            self.t.append(time.perf_counter())

    def lightning():
        clock = Clock()
        with tempfile.TemporaryDirectory() as d:
            fit(lambda: DiffusionModule.from_config(cfg, info), cfg.data, cfg.train, cfg.trainer, d, callbacks=[clock])
        return list(np.diff(clock.t)[2:])  # steps 0-1 warm up

    def plain():
        torch.manual_seed(int(cfg.train.seed))
        module = DiffusionModule.from_config(cfg, info)
        dm = BenchDataModule(cfg.data, cfg.train.batch_size, cfg.train.seed)
        dm.setup("fit")
        opt_cfg = module.configure_optimizers()
        opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
        ts = [time.perf_counter()]
        for step, (x0, y) in enumerate(dm.train_dataloader()):
            if step == steps:
                break
            g = torch.Generator().manual_seed(obj.step_seed(cfg.train.seed, step))
            loss = module.compute_loss(x0, module.drop_labels(y, g), g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), float(cfg.train.grad_clip))
            opt.step()
            sched.step()
            module.update_ema()
            module.loss_history.append(loss.detach())
            ts.append(time.perf_counter())
        return list(np.diff(ts)[2:])

    tl, tp = [], []
    for r in range(max(1, P["rounds"] // 2)):  # alternate which side goes first
        for f, acc in ((lightning, tl), (plain, tp))[::1 if r % 2 == 0 else -1]:
            acc += f()
    out["training"] = dict(l=_median(tl), p=_median(tp))
    out["profile_lightning"] = py_profile(lightning)
    return [dict(key="lightning", name=f"Lightning training step ÷ plain PyTorch loop (same module, loss, "
                 f"optimiser, clipping, EMA; batch {P['train_batch']}, median step)", value=_median(tl) / _median(tp),
                 goal=1.10, detail=f"{_median(tl) * 1e3:.1f} ms vs {_median(tp) * 1e3:.1f} ms per step")]


# ---- 6: a 12-cell sweep vs the sum of its cells' sampling + scoring ---------------------------------------------
def sweep_ratio(P, out: dict, root: Path) -> list[dict]:

    base = [*P["arch"], *P["sweep_train"], f"sampling.num_samples={P['sweep_n']}", "sampling.batch_size=100",
            f"out_dir={root}", "name=sweep", "metric.kid_subset_size=100"]

    cfg = _cfg(*base)
    load_or_train(cfg)  # trained once (cache), the evaluator and reference statistics too: none of it is timed
    info = pipeline.prepare(cfg)
    get_reference(cfg, info, load_feature_net(cfg, info))
    rows, t0 = [], time.perf_counter()
    for sampler in SWEEP_SAMPLERS:
        for steps in P["sweep_steps"]:
            cfg = _cfg(*base, f"sampler={sampler}", f"sampling.num_inference_steps={steps}")
            info = pipeline.prepare(cfg)
            rows.append(pipeline.run_cell(cfg, info, root / "sweep", cell_key(cfg), cell_config(cfg)))
    total = time.perf_counter() - t0

    def one_more():  # the first cell again under cProfile, in its own results root (not timed above)
        cfg = _cfg(*base, f"sampler={SWEEP_SAMPLERS[0]}", f"sampling.num_inference_steps={P['sweep_steps'][0]}",
                   "name=profiled")
        pipeline.run_cell(cfg, pipeline.prepare(cfg), root / "profiled", cell_key(cfg), cell_config(cfg))

    out["profile_sweep"] = py_profile(one_more, top=12, cumulative=True, only=f"{os.sep}bench{os.sep}")
    inner = sum(r["sample_s"] + r["score_s"] for r in rows)
    cell_wall = sum(r["wall_s"] for r in rows)
    out["sweep"] = dict(total=total, inner=inner, cells=len(rows), cell_wall=cell_wall)
    return [dict(key="sweep", name=f"total time of a {len(rows)}-cell sweep ÷ Σ (per-cell sampling + scoring) "
                 f"(one process; model, evaluator and reference statistics cached before)",
                 value=total / inner, goal=1.2, detail=f"{total:.1f} s vs {inner:.1f} s (cells' own wall {cell_wall:.1f} s)")]


# ---- report ----------------------------------------------------------------------------------------------------
def machine() -> str:

    return hardware("cpu")


def lib_versions() -> str:

    libs = ["torch", "diffusers", "lightning", "clean-fid", "numpy"]
    return ", ".join([f"python {platform.python_version()}", *(f"{n} {version(n)}" for n in libs)])


def render(P, mode, ratios, out, argv, seconds, load0, load1) -> str:
    s = out["sampling"]
    L = ["# bench-perf: the harness against its floors and peers", "",
         f"Command: `{' '.join(['bench-perf', *argv])}`", "",
         f"Machine: {machine()} (torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
         f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); versions: {lib_versions()}.",
         f"Mode: {mode}; run time {seconds:.0f} s; 1-min load average {load0:.2f} at the start, {load1:.2f} at the end "
         f"({os.cpu_count()} cores, shared: other processes ran beside this one).",
         f"Sizes ({mode}, chosen so the whole run stays under 10 minutes on a shared 2-core CPU): "
         + ", ".join(f"{k}={v}" for k, v in P.items() if k != "arch") + ".", "",
         "Models: every sampling timing uses an *untrained* UNet of the digits architecture "
         f"({'smoke UNet [16, 32]' if mode == 'quick' else 'conf/model/unet.yaml: [32, 64], attention in the 2nd block'}"
         ", 1×8×8, seeded): weights do not change the arithmetic, so training is irrelevant to these timings; "
         "ratios 1–2 use it unconditional because `DDIMPipeline` is. The 12-cell sweep samples a model trained by the "
         "harness (cached) and scores with the harness's digits CNN, as a real sweep does.", "",
         "## Ratios", "", "| # | ratio | measured | goal | | timings |", "|---|---|---:|---:|---|---|"]
    for i, r in enumerate(ratios, 1):
        ok = r["value"] <= r["goal"]
        r["pass"] = ok
        L.append(f"| {i} | {r['name']} | {r['value']:.3f} | ≤ {r['goal']} | {'pass' if ok else '**miss**'} | "
                 f"{r['detail']} |")
    d = s["defaults"]
    L += ["", f"Each ratio alternates its sides for {P['rounds']} timed rounds (order rotating, after one uncounted "
          "warm-up round) and divides the *minimum* times (other processes on a shared machine only ever add time); "
          "the ratio of medians is shown beside it. Ratio 4 runs one fresh process per N and reads its resident set "
          "size after every batch; ratio 5 compares median step times.", "",
          "## Optimisations, each on/off (harness sampling, same batch as ratio 1)", "",
          f"Harness defaults: `cost.inference_mode={str(d['inference_mode']).lower()}`, "
          f"`cost.channels_last={str(d['channels_last']).lower()}`, one finite check (host sync) per batch.", "",
          "| setting | min batch time (ms) | median (ms) | vs defaults (min) | max abs Δ sample vs defaults |",
          "|---|---:|---:|---:|---:|"]
    base = s["min"]["defaults"]
    for k in s["diffs"]:
        L.append(f"| {k} | {s['min'][k] * 1e3:.1f} | {s['med'][k] * 1e3:.1f} | {s['min'][k] / base:.3f}× | "
                 f"{s['diffs'][k]:.1e} |")
    L += ["", "A flipped option slower than the defaults (> 1×) is one the defaults gain from. `inference_mode` and one "
          "finite check per batch give bit-identical samples; `channels_last` changes float rounding only (Δ above, "
          "below one uint8 level of 1/127.5), so it is a default that every row records (`channels_last`), like "
          "`inference_mode`. Not tried on this CPU: preallocated buffers (diffusers' `scheduler.step` allocates its "
          "outputs; the CPU caching allocator already reuses them) and the GPU-only options (bf16/fp16 autocast, "
          "`torch.compile`, TF32): no GPU in this run. Evaluator reuse across cells: ratio 6 bounds what it could "
          "gain — everything in a cell besides sampling and scoring (model, evaluator and reference loads, artifacts).",
          "",
          "## Scaling", "", f"Harness sampling + scoring (FID, IS), DDIM, batch 250, time vs N "
          f"({P['time_n_steps']} steps):", "", "| N | seconds | ms / image | × of the smallest N, per image |",
          "|---:|---:|---:|---:|"]
    n0 = out["time_vs_n"][0]
    for n, t, _ in out["time_vs_n"]:
        L.append(f"| {n} | {t:.2f} | {t / n * 1e3:.3f} | {(t / n) / (n0[1] / n0[0]):.3f} |")
    L += ["", f"Time vs NFE (N = {P['nfe_n']}):", "", "| steps | NFE | seconds | ms / (image · NFE) |",
          "|---:|---:|---:|---:|"]
    for st, t, nfe in out["time_vs_nfe"]:
        L.append(f"| {st} | {nfe:g} | {t:.2f} | {t / (P['nfe_n'] * nfe) * 1e3:.4f} |")
    L += ["", "Scoring memory vs N (a fresh process per N; FID + KID + IS on the digits CNN):", "",
          "| N | RSS before scoring (MB) | peak RSS (MB) | growth (MB) | seconds |", "|---:|---:|---:|---:|---:|"]
    for m in out["memory"]:
        L.append(f"| {m['n']} | {m['base_mb']:.0f} | {m['peak_mb']:.0f} | {m['delta_mb']:.1f} | {m['seconds']:.2f} |")
    L += ["", "Growth with N comes from what KID and IS need per image (64 float32 features and 10 float64 logits: "
          "~0.3 kB each); the images themselves are streamed.", ""]
    misses = [r for r in ratios if not r["pass"]]
    L += ["## Where the misses come from (profiles)", ""]
    if not misses:
        L += ["Every ratio meets its goal in this run.", ""]
    for r in misses:
        L += [f"### {r['name'].split(' (')[0]}", "", EXPLAIN[r["key"]](out), ""]
    return "\n".join(L).rstrip() + "\n"


EXPLAIN = {
    "floor": lambda o: "Harness sampling, one batch (torch.profiler, top ops by self CPU time):\n\n"
    + o["profile_harness"] + "\n\nWhat is not the UNet forward: the scheduler's elementwise step, the per-image noise "
    "generators, the finite check and call counting.",
    "diffusers": lambda o: "Both loops run the same UNet calls and the same `DDIMScheduler.step`; the harness adds "
    "per-image generators, the finite check and call counting, and gains only what its speed options give (table "
    "above), so it lands where those options put it. Harness, one batch (torch.profiler, top ops by self CPU "
    "time):\n\n" + o["profile_harness"] + "\n\n`DDIMPipeline`, one batch:\n\n" + o["profile_diffusers"],
    "fid": lambda o: "clean-fid, one `compute_fid` call (cProfile, top functions by own time):\n\n"
    + o["profile_cleanfid"],
    "memory": lambda o: "Scoring keeps per-image features for KID and logits for IS (the growth column of the memory "
    "table); the images are streamed.",
    "lightning": lambda o: "Lightning's `fit` for the same steps (cProfile, top functions by own time):\n\n"
    + o["profile_lightning"],
    "sweep": lambda o: f"{o['sweep']['cells']} cells: {o['sweep']['total']:.1f} s in all, {o['sweep']['cell_wall']:.1f} s "
    f"inside the cells, {o['sweep']['inner']:.1f} s sampling + scoring. Per cell, outside sampling and scoring:\n\n"
    + o["profile_sweep"],
}


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
    torch.set_num_threads(a.threads)
    if a.score_memory is not None:
        print(json.dumps(score_memory(a.score_memory)))
        return

    try:
        check_output_dir(Path(a.out).parent, "--out")
    except Exception as e:
        print(f"bench: error: {e}", file=sys.stderr)
        sys.exit(2)
    mode = "quick" if a.quick else "full"
    P = SIZES[mode]

    load0, t0, out, ratios = load_average(), time.perf_counter(), {}, []
    cache = Path(_cfg().cache_dir)
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as work:
        steps = [("sampling", lambda: sampling_ratios(P, out)), ("fid", lambda: fid_ratio(P, out, cache)),
                 ("memory", lambda: memory_ratio(P, out)), ("training", lambda: training_ratio(P, out)),
                 ("sweep", lambda: sweep_ratio(P, out, Path(work)))]
        # the sweep goes first: it trains/caches the evaluator and reference statistics the others need
        for name, fn in [steps[-1], *steps[:-1]]:
            t = time.perf_counter()
            ratios += fn()
            print(f"bench-perf: {name} done in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        order = ["floor", "diffusers", "fid", "memory", "lightning", "sweep"]
        ratios.sort(key=lambda r: order.index(r["key"]))
        t = time.perf_counter()
        scaling(P, out)
        print(f"bench-perf: scaling done in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    text = render(P, mode, ratios, out, argv, time.perf_counter() - t0, load0, load_average())
    atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
