"""``bench-perf``'s experiments: each returns data (its ratios, tables and profiles); ``bench.perf.render`` writes
the report. Every goal is a ratio of two timings taken side by side in one run: the two sides alternate round by
round and each side's minimum (and median) is used, so background load on a shared machine hits both alike."""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import psutil
import torch
from PIL import Image

from bench import cell
from bench.data import build_dataset, get_data_info
from bench.data.datamodule import BenchDataModule
from bench.evaluators import load_feature_net
from bench.images import quantize_uint8
from bench.metrics.cost import CostMeter
from bench.metrics.refstats import get_reference
from bench.metrics.scorer import Scorer
from bench.models import build_model
from bench.perf.profilers import py_profile, torch_profile
from bench.preflight import compose_cfg, expand
from bench.sampling import Batch, build_sampler, build_scheduler, compiled
from bench.sampling.subject import Denoiser, Provenance, sampling_call
from bench.schema import CostConfig
from bench.training import fit, load_or_train, objectives as obj
from bench.training.module import DiffusionModule

# one resolution level, no attention: the smallest UNet graph, so a test's compile stays short
TINY_UNET = ["model.block_out_channels=[16]", "model.down_block_types=[DownBlock2D]",
             "model.up_block_types=[UpBlock2D]"]
# Real config, shrunk per mode. "arch" overrides pick the UNet: full = the default digits UNet (conf/model/unet.yaml),
# quick = the smoke UNet. `train` = the (tiny) training of the model the 12-cell sweep samples. `compile`: the
# image sizes (digits resized) at which eager, compiled and bf16-autocast sampling are timed beside DDIMPipeline, on
# the "arch" UNet with "compile_arch" overrides (quick: the tiny UNet).
SIZES = {
    "full": dict(arch=[], batch=64, steps=50, rounds=3, fid_n=2000, mem_n=[1000, 4000, 10000],
                 time_n=[1000, 2000, 4000, 8000], time_n_steps=2, nfe_n=128, nfe_steps=[5, 10, 20, 50, 100],
                 train_steps=20, train_batch=128, sweep_n=100, sweep_steps=[5, 10, 20, 50],
                 sweep_train=["train.max_steps=50"],
                 compile=[dict(size=8, batch=64, steps=50), dict(size=28, batch=16, steps=10)], compile_arch=[],
                 feat_n=2000),
    "quick": dict(arch=["model.block_out_channels=[16,32]"], batch=8, steps=4, rounds=2, fid_n=200,
                  mem_n=[200, 400], time_n=[64, 128], time_n_steps=2, nfe_n=16, nfe_steps=[2, 4],
                  train_steps=4, train_batch=16, sweep_n=16, sweep_steps=[1, 2],
                  sweep_train=["train.max_steps=2", "train.batch_size=16", "train.warmup_steps=1"],
                  compile=[dict(size=8, batch=4, steps=2)], compile_arch=TINY_UNET, feat_n=100),
}
SWEEP_SAMPLERS = ["ddim", "dpmpp", "euler"]  # x sweep_steps = 12 cells (full)
BASE = ["tracker=none", "device=cpu", "trainer.enable_progress_bar=false", "hydra.mode=RUN"]


# ---- data --------------------------------------------------------------------------------------------------------
@dataclass
class Ratio:
    """One goal: ``value`` = the measured ratio, met when <= ``goal``; ``facts``: the numbers stated beside it."""

    key: str  # floor | diffusers | compiled (one per image size) | fid | memory | lightning | sweep
    value: float
    goal: float
    facts: dict

    @property
    def passed(self) -> bool:
        return self.value <= self.goal


@dataclass
class Measurements:
    """Everything one ``bench-perf`` run measured (what the report is rendered from)."""

    ratios: list = field(default_factory=list)  # Ratio, in ORDER
    sampling: dict = field(default_factory=dict)  # optimisations on/off: min/med seconds, max |Δ| samples, defaults
    time_vs_n: list = field(default_factory=list)  # (N, seconds, nfe)
    time_vs_nfe: list = field(default_factory=list)  # (steps, seconds, nfe)
    memory: list = field(default_factory=list)  # score_memory() per N
    profiles: dict = field(default_factory=dict)  # name -> Profile
    sweep: dict = field(default_factory=dict)
    compiled: list = field(default_factory=list)  # per image size: eager / compiled / bf16 / DDIMPipeline timings
    features: dict = field(default_factory=dict)  # the evaluator's feature extraction, eager vs compiled
    default_job: dict = field(default_factory=dict)  # what the default `bench` job samples (image-forwards)


ORDER = ["floor", "diffusers", "compiled", "fid", "memory", "lightning", "sweep"]


# ---- helpers -----------------------------------------------------------------------------------------------------
def _cfg(*overrides):

    return compose_cfg([*BASE, *overrides])


def _median(xs) -> float:
    return float(statistics.median(xs))


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


def _untrained(cfg, info) -> Denoiser:
    """The seeded, untrained model of ``cfg`` on the harness's sampler, as a cell's subject (unguided)."""
    torch.manual_seed(0)
    model = build_model(cfg.model, info).eval()
    return Denoiser(model, build_scheduler(cfg), info.num_classes,
                    Provenance(cfg.objective.name, cfg.schedule.name, cfg.sampler.timestep_spacing))


# ---- 1 + 2: sampling vs the bare forward floor and vs diffusers' DDIMPipeline; optimisations on/off ------------------
def sampling_ratios(P, m: Measurements) -> list[Ratio]:
    from diffusers import DDIMPipeline, DDIMScheduler  # lazy: the peer pipeline is only built for this ratio

    B, S = P["batch"], P["steps"]
    cfg = _cfg(*P["arch"], f"sampling.num_samples={B}", f"sampling.batch_size={B}", "sampling.seed=0",
               f"sampling.num_inference_steps={S}", "sampling.guidance_scale=1", "metric.repeats=1")
    info = dataclasses.replace(get_data_info(cfg.data), num_classes=0)  # DDIMPipeline is unconditional
    subject = _untrained(cfg, info)
    model, sched = subject.model, subject.scheduler
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    call = sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model, info, "cpu")
    pipe = DDIMPipeline(unet=model.unet, scheduler=DDIMScheduler.from_config(sched.config))
    pipe.set_progress_bar_config(disable=True)

    def harness(m=model, **opts) -> tuple[float, torch.Tensor]:
        meter = CostMeter("cpu")
        (batch,) = list(dataclasses.replace(subject, model=m).batches(dataclasses.replace(call, **opts), meter))
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
    variants = {"defaults": on,
                f"inference_mode={not d.inference_mode}": {**on, "inference_mode": not d.inference_mode},
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
    m.sampling = dict(min=mn, med=med, pipe_diff=pipe_diff, defaults=on,
                      diffs={k: float((samples[k] - samples["defaults"]).abs().max()) for k in variants})
    m.profiles["harness"] = torch_profile(lambda: sides["defaults"]())
    m.profiles["diffusers"] = torch_profile(lambda: diffusers_pipe())
    shape = dict(batch=B, steps=S, image_shape=list(info.shape), block_out_channels=list(cfg.model.block_out_channels))
    return [
        Ratio("floor", h / mn["bare"], 1.03, dict(shape, harness_s=h, bare_s=mn["bare"],
                                                  median_ratio=med["defaults"] / med["bare"])),
        Ratio("diffusers", h / mn["diffusers"], 0.9, dict(shape, harness_s=h, diffusers_s=mn["diffusers"],
                                                          median_ratio=med["defaults"] / med["diffusers"],
                                                          pipe_diff=pipe_diff)),
    ]


# ---- 2 compiled: eager vs torch.compile vs bf16 autocast sampling, per image size, beside DDIMPipeline --------------
def compiled_sampling(P, m: Measurements) -> list[Ratio]:
    """Per ``P["compile"]`` size: the digits UNet (unconditional, as DDIMPipeline) sampled eagerly, compiled
    (``cost.compile=default``: compiled once, warmed up and checked as a cell does) and under bf16 autocast, beside
    DDIMPipeline on the eager UNet, sides interleaved; ratio 2 with compile on = compiled ÷ DDIMPipeline."""
    out = [_compiled_at(P, c, m) for c in P["compile"]]
    m.default_job = default_job()
    return out


def _compiled_at(P, c: dict, m: Measurements) -> Ratio:
    """One size of :func:`compiled_sampling`: its record in ``m.compiled`` and its profile; its ratio."""
    from diffusers import DDIMPipeline, DDIMScheduler  # lazy: the peer pipeline is only built for these ratios

    B, S, size = c["batch"], c["steps"], c["size"]
    cfg = _cfg(*P["arch"], *P["compile_arch"], f"data.image_size={size}", f"sampling.num_samples={B}",
               f"sampling.batch_size={B}", "sampling.seed=0", f"sampling.num_inference_steps={S}",
               "sampling.guidance_scale=1", "metric.repeats=1")
    info = dataclasses.replace(get_data_info(cfg.data), num_classes=0)
    eager = _untrained(cfg, info)
    if CostConfig().channels_last:
        eager = dataclasses.replace(eager, model=eager.model.to(memory_format=torch.channels_last))
    call = sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model, info, "cpu")
    compiled._COMPILED.clear()  # a compile of its own, timed (inductor's on-disk cache as found)
    torch._dynamo.reset()
    fast = compiled.compile_denoiser(eager, "default", f"bench-perf-{size}", call)
    cols = fast.columns().groups[-1]
    unet = _untrained(cfg, info).model.unet  # the same seeded weights, default memory format
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(eager.scheduler.config))
    pipe.set_progress_bar_config(disable=True)

    def harness(subject, bf16=False):
        meter = CostMeter("cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            (batch,) = list(subject.batches(call, meter))
        return meter.batch_seconds[0], batch.x

    def diffusers_pipe():
        gens = [torch.Generator().manual_seed(i) for i in range(B)]
        t0 = time.perf_counter()
        img = pipe(batch_size=B, generator=gens, eta=0.0, num_inference_steps=S, output_type="pt").images
        return time.perf_counter() - t0, img * 2 - 1

    sides = {"eager": lambda: harness(eager), "compiled": lambda: harness(fast),
             "bf16 autocast": lambda: harness(eager, bf16=True), "diffusers": diffusers_pipe}
    times, samples = interleaved(sides, P["rounds"])
    mn, med = ({k: f(v) for k, v in times.items()} for f in (min, _median))
    rec = dict(size=size, batch=B, steps=S, image_shape=list(info.shape),
               block_out_channels=list(cfg.model.block_out_channels), min=mn, med=med,
               diffs={k: compiled.image_diff(samples[k], samples["eager"]) for k in sides},
               compile_s=cols.compile_s, check_diff=cols.compile_max_abs_diff, check_s=cols.compile_check_s,
               forwards=B * S)
    m.compiled.append(rec)
    m.profiles[f"compiled{size}"] = torch_profile(lambda: harness(fast))
    return Ratio("compiled", mn["compiled"] / mn["diffusers"], 0.9,
                 dict(rec, harness_s=mn["compiled"], diffusers_s=mn["diffusers"],
                      median_ratio=med["compiled"] / med["diffusers"]))


def default_job() -> dict:
    """What ``bench`` with no arguments (conf/experiment/default.yaml's grid) and the scheduler study sample: per job,
    its cells, images and image-forwards (images x repeats x model calls per image)."""
    out = {}
    for name, argv in (("bench", []), ("bench -m sweep=scheduler_steps", ["-m", "sweep=scheduler_steps"])):
        cells = [compose_cfg(o) for o in expand(argv)]
        images = [int(c.sampling.num_samples) * int(c.metric.repeats) for c in cells]
        out[name] = dict(cells=len(cells), images=sum(images),
                         image_forwards=sum(n * _model_calls(c) for n, c in zip(images, cells)))
    return out


def _model_calls(cfg) -> int:
    """Model rows per image of a cell: one per scheduler timestep (Heun's second evaluations included), two with
    batched classifier-free guidance."""
    sched = build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name, lcm_grid=cfg.distill.num_ddim_timesteps)
    sched.set_timesteps(int(cfg.sampling.num_inference_steps))
    return len(sched.timesteps) * (2 if cfg.sampling.guidance_scale not in (0, 1) else 1)


# ---- the evaluator's feature extraction, eager vs compiled -------------------------------------------------------
def compiled_features(P, m: Measurements, cache: Path) -> None:
    """The digits CNN's features of ``feat_n`` images (batches of 250, as the scorer streams them), eager vs a
    compiled copy (compiled on the batch sizes first, timed apart), interleaved."""
    cfg = _cfg(f"cache_dir={cache}")
    net = load_feature_net(cfg, get_data_info(cfg.data))
    fast = copy.copy(net)
    fast.model = copy.deepcopy(net.model)
    fast.model.compile()
    imgs = digits_images(P["feat_n"], seed=2)
    chunks = [imgs[s:s + 250] for s in range(0, len(imgs), 250)]

    def features(n):
        t0 = time.perf_counter()
        f = torch.cat([n(x)[0] for x in chunks])
        return time.perf_counter() - t0, f

    compile_s, _ = features(fast)
    times, feats = interleaved({"eager": lambda: features(net), "compiled": lambda: features(fast)}, P["rounds"])
    m.features = dict(n=len(imgs), feature_net=net.name, compile_s=compile_s, eager_s=min(times["eager"]),
                      compiled_s=min(times["compiled"]),
                      diff=float((feats["compiled"] - feats["eager"]).abs().max()))


# ---- 3: feature extraction + FID vs clean-fid's compute_fid on a PNG folder ----------------------------------------
def fid_ratio(P, m: Measurements, cache: Path) -> list[Ratio]:
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
        m.profiles["cleanfid"] = py_profile(clean)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [Ratio("fid", min(th) / min(tc), 0.5, dict(fid_n=P["fid_n"], n_ref=len(ref), harness_s=min(th),
                                                      clean_s=min(tc), median_ratio=_median(th) / _median(tc),
                                                      fid_harness=fid_h, fid_clean=fid_c))]


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


def memory_ratio(P, m: Measurements) -> list[Ratio]:
    recs = []
    for n in P["mem_n"]:
        p = subprocess.run([sys.executable, "-m", "bench.perf", "--score-memory", str(n)], capture_output=True,
                           text=True, env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        if p.returncode:
            raise RuntimeError(f"scoring {n} images failed: {p.stderr[-2000:]}")
        recs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    m.memory = recs
    lo, hi = recs[0], recs[-1]
    return [Ratio("memory", hi["peak_mb"] / lo["peak_mb"], 1.1, dict(lo=lo, hi=hi))]


# ---- scaling: time vs N, time vs NFE ---------------------------------------------------------------------------
def scaling(P, m: Measurements) -> None:

    def run(n, steps):
        cfg = _cfg(*P["arch"], f"sampling.num_inference_steps={steps}", "metric.kid=false", f"sampling.num_samples={n}",
                   "sampling.batch_size=250", "sampling.seed=0", "sampling.guidance_scale=1", "metric.repeats=1",
                   "cost.channels_last=false")
        info = get_data_info(cfg.data)
        subject = _untrained(cfg, info)
        scorer, meter = Scorer(cfg, info), CostMeter("cpu")
        t0 = time.perf_counter()
        for b in subject.batches(sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model, info, "cpu"),
                                 meter):
            scorer.update(b)
        scorer.compute()
        return time.perf_counter() - t0, meter.summary()["nfe"]

    run(min(P["time_n"]), P["time_n_steps"])  # warm-up
    m.time_vs_n = [(n, *run(n, P["time_n_steps"])) for n in P["time_n"]]
    m.time_vs_nfe = [(s, *run(P["nfe_n"], s)) for s in P["nfe_steps"]]


# ---- 5: Lightning training step vs a plain PyTorch loop ---------------------------------------------------------
def training_ratio(P, m: Measurements) -> list[Ratio]:

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
    m.profiles["lightning"] = py_profile(lightning)
    return [Ratio("lightning", _median(tl) / _median(tp), 1.10,
                  dict(train_batch=P["train_batch"], lightning_s=_median(tl), plain_s=_median(tp)))]


# ---- 6: a 12-cell sweep vs the sum of its cells' sampling + scoring ---------------------------------------------
def sweep_ratio(P, m: Measurements, root: Path) -> list[Ratio]:

    base = [*P["arch"], *P["sweep_train"], f"sampling.num_samples={P['sweep_n']}", "sampling.batch_size=100",
            f"out_dir={root}", "name=sweep", "metric.kid_subset_size=100"]

    cfg = _cfg(*base)
    load_or_train(cfg)  # trained once (cache), the evaluator and reference statistics too: none of it is timed
    info = cell.prepare(cfg)
    get_reference(cfg, info, load_feature_net(cfg, info))
    rows, t0 = [], time.perf_counter()
    for sampler in SWEEP_SAMPLERS:
        for steps in P["sweep_steps"]:
            rows.append(cell.run_cell(_cfg(*base, f"sampler={sampler}", f"sampling.num_inference_steps={steps}")))
    total = time.perf_counter() - t0

    def one_more():  # the first cell again under cProfile, in its own results root (not timed above)
        cell.run_cell(_cfg(*base, f"sampler={SWEEP_SAMPLERS[0]}", f"sampling.num_inference_steps={P['sweep_steps'][0]}",
                           "name=profiled"))

    m.profiles["sweep"] = py_profile(one_more, top=12, cumulative=True, only=f"{os.sep}bench{os.sep}")
    inner = sum(r["sample_s"] + r["score_s"] for r in rows)
    cell_wall = sum(r["wall_s"] for r in rows)
    m.sweep = dict(total=total, inner=inner, cells=len(rows), cell_wall=cell_wall)
    return [Ratio("sweep", total / inner, 1.2, dict(m.sweep))]


def measure(P, cache: Path, log=None) -> Measurements:
    """Run every experiment at sizes ``P`` (the sweep first: it trains and caches the evaluator and reference
    statistics the others need); ``log(name, seconds)`` after each."""
    m = Measurements()
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as work:
        steps = [("sweep", lambda: sweep_ratio(P, m, Path(work))), ("sampling", lambda: sampling_ratios(P, m)),
                 ("compiled", lambda: compiled_sampling(P, m)),
                 ("fid", lambda: fid_ratio(P, m, cache)),
                 ("compiled features", lambda: compiled_features(P, m, cache) or []),
                 ("memory", lambda: memory_ratio(P, m)),
                 ("training", lambda: training_ratio(P, m)), ("scaling", lambda: scaling(P, m) or [])]
        for name, fn in steps:
            t = time.perf_counter()
            m.ratios += fn()
            if log is not None:
                log(name, time.perf_counter() - t)
    m.ratios.sort(key=lambda r: ORDER.index(r.key))
    return m
