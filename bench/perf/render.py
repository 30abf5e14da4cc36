"""``reports/perf.md`` from one run's :class:`~bench.perf.experiments.Measurements` (the only place with prose)."""
from __future__ import annotations

from dataclasses import dataclass

from bench.perf.experiments import Measurements, Ratio
from bench.perf.profilers import Profile
from bench.sampling.compiled import ONE_UINT8_LEVEL
from bench.schema import CostConfig


@dataclass
class Run:
    """Where and how a ``bench-perf`` run went (the report's header)."""

    argv: list
    mode: str
    sizes: dict
    seconds: float
    load_before: float
    load_after: float
    machine: str
    versions: str
    torch_threads: int
    omp_threads: str
    cores: int


def _shape(f: dict) -> str:
    return (f"batch {f['batch']}, DDIM {f['steps']} steps, {'x'.join(map(str, f['image_shape']))} UNet "
            f"{f['block_out_channels']}")


def ratio_name(r: Ratio) -> str:
    f = r.facts
    return {
        "floor": lambda: f"harness sampling wall ÷ (NFE × bare denoiser forward), {_shape(f)}",
        "diffusers": lambda: f"harness sampling (its defaults) ÷ diffusers `DDIMPipeline` (same UNet, steps, batch, "
                             f"per-image generators), {_shape(f)}",
        "compiled": lambda: f"harness sampling compiled (`cost.compile=default`) ÷ diffusers `DDIMPipeline` (eager), "
                            f"{_shape(f)}",
        "fid": lambda: f"harness feature extraction + FID ÷ clean-fid `compute_fid` (digits CNN in both, "
                       f"{f['fid_n']} generated vs {f['n_ref']} reference images; clean-fid reads them as PNG folders)",
        "memory": lambda: f"peak memory (process RSS) of scoring at N = {f['hi']['n']} ÷ at N = {f['lo']['n']} "
                          f"(FID + KID + IS, streamed)",
        "lightning": lambda: f"Lightning training step ÷ plain PyTorch loop (same module, loss, optimiser, clipping, "
                             f"EMA; batch {f['train_batch']}, median step)",
        "sweep": lambda: f"total time of a {f['cells']}-cell sweep ÷ Σ (per-cell sampling + scoring) (one process; "
                         f"model, evaluator and reference statistics cached before)",
    }[r.key]()


def ratio_detail(r: Ratio) -> str:
    f = r.facts
    return {
        "floor": lambda: f"{f['harness_s'] * 1e3:.1f} ms vs {f['steps']} × {f['bare_s'] / f['steps'] * 1e3:.2f} ms = "
                         f"{f['bare_s'] * 1e3:.1f} ms; medians {f['median_ratio']:.3f}",
        "diffusers": lambda: f"{f['harness_s'] * 1e3:.1f} ms vs {f['diffusers_s'] * 1e3:.1f} ms; medians "
                             f"{f['median_ratio']:.3f}; samples agree to {f['pipe_diff']:.1e} (same memory layout)",
        "compiled": lambda: f"{f['harness_s'] * 1e3:.1f} ms vs {f['diffusers_s'] * 1e3:.1f} ms; medians "
                            f"{f['median_ratio']:.3f}; compiled once in {f['compile_s']:.1f} s (not in the time); "
                            f"samples agree to {f['diffs']['diffusers']:.1e}",
        "fid": lambda: f"{f['harness_s'] * 1e3:.0f} ms vs {f['clean_s'] * 1e3:.0f} ms; medians "
                       f"{f['median_ratio']:.3f}; FID {f['fid_harness']:.6f} vs {f['fid_clean']:.6f}",
        "memory": lambda: f"{f['hi']['peak_mb']:.0f} MB vs {f['lo']['peak_mb']:.0f} MB; scoring's own growth "
                          f"{f['hi']['delta_mb']:.1f} vs {f['lo']['delta_mb']:.1f} MB",
        "lightning": lambda: f"{f['lightning_s'] * 1e3:.1f} ms vs {f['plain_s'] * 1e3:.1f} ms per step",
        "sweep": lambda: f"{f['total']:.1f} s vs {f['inner']:.1f} s (cells' own wall {f['cell_wall']:.1f} s)",
    }[r.key]()


def profile_table(p: Profile) -> str:
    if p.kind == "ops":
        lines = ["| op | calls | self CPU (ms) | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{name}` | {calls} | {ms:.1f} | {share:.1f} % |" for name, _, calls, ms, share in p.rows]
    else:
        lines = [f"| function | calls | {p.kind} time (ms) | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{name}` ({where}) | {calls} | {ms:.1f} | {share:.1f} % |" for name, where, calls, ms, share
                  in p.rows]
    return "\n".join(lines)


def explain(key: str, m: Measurements) -> str:
    """Why a missed goal was missed: its profiles, in words."""
    t, s = {k: profile_table(p) for k, p in m.profiles.items()}, m.sweep
    return {
        "floor": lambda: "Harness sampling, one batch (torch.profiler, top ops by self CPU time):\n\n"
        + t["harness"] + "\n\nWhat is not the UNet forward: the scheduler's elementwise step, the per-image noise "
        "generators, the finite check and call counting.",
        "diffusers": lambda: "Both loops run the same UNet calls and the same `DDIMScheduler.step`; the harness adds "
        "per-image generators, the finite check and call counting, and gains only what its speed options give (table "
        "above), so it lands where those options put it. Harness, one batch (torch.profiler, top ops by self CPU "
        "time):\n\n" + t["harness"] + "\n\n`DDIMPipeline`, one batch:\n\n" + t["diffusers"],
        "compiled": lambda: "Compiled, every UNet forward is one inductor kernel graph; what is left beside it is the "
        "scheduler's step, the per-image generators and the loop's bookkeeping. Harness compiled, one batch per size "
        "(torch.profiler, top ops by self CPU time):\n\n" + "\n\n".join(
            f"{c['size']}×{c['size']}:\n\n" + t[f"compiled{c['size']}"] for c in m.compiled
            if f"compiled{c['size']}" in t),
        "memory": lambda: "Scoring keeps per-image features for KID and logits for IS (the growth column of the "
        "memory table); the images are streamed.",
        "lightning": lambda: "Lightning's `fit` for the same steps (cProfile, top functions by own time):\n\n"
        + t["lightning"],
        "sweep": lambda: f"{s['cells']} cells: {s['total']:.1f} s in all, {s['cell_wall']:.1f} s inside the cells, "
        f"{s['inner']:.1f} s sampling + scoring. Per cell, outside sampling and scoring:\n\n" + t["sweep"],
    }[key]()


def _per_forward(c: dict, side: str) -> float:
    return c["min"][side] / c["forwards"]


def compiled_section(m: Measurements) -> list[str]:
    """Eager vs compiled vs bf16 autocast per image size, what compiling costs and when it pays, the default it
    supports; the evaluator's feature extraction compiled."""
    if not m.compiled:
        return []
    level = f"one uint8 level ({ONE_UINT8_LEVEL:.4f})"
    L = ["## Compiled sampling and bf16 autocast, per image size", "",
         "The digits UNet architecture (unconditional, untrained, seeded), one DDIM batch per round, sides "
         "interleaved: eager (the harness defaults); compiled (`cost.compile=default`: `torch.compile` with inductor, "
         "compiled once, warmed up on the batch's shape and checked against eager before timing, as a cell does); "
         "eager under `torch.autocast('cpu', bfloat16)`; diffusers' `DDIMPipeline` on the eager UNet. UNets: "
         + "; ".join(f"{c['size']}×{c['size']} {c['block_out_channels']}" for c in m.compiled) + ".", "",
         "| image | batch × steps | setting | min batch time (ms) | median (ms) | vs eager (min) | max abs Δ sample "
         "vs eager |", "|---|---|---|---:|---:|---:|---:|"]
    for c in m.compiled:
        for k in ("eager", "compiled", "bf16 autocast", "diffusers"):
            L.append(f"| {c['size']}×{c['size']} | {c['batch']} × {c['steps']} | "
                     f"{'`DDIMPipeline`' if k == 'diffusers' else k} | {c['min'][k] * 1e3:.1f} | "
                     f"{c['med'][k] * 1e3:.1f} | {c['min'][k] / c['min']['eager']:.3f}× | {c['diffs'][k]:.1e} |")
    L += ["", "What compiling costs, once per model and process (a sweep's cells reuse it; the row records "
          "`compile_s`, `compile_reused` and the check), and after how many image-forwards (images × NFE) it has "
          "paid for itself:",
          "", "| image | compile + warm-up (s) | saved per image-forward (ms) | break-even (image-forwards) | check on "
          "the first images: max abs Δ vs eager |", "|---|---:|---:|---:|---:|"]
    for c in m.compiled:
        saved = _per_forward(c, "eager") - _per_forward(c, "compiled")
        even = f"{c['compile_s'] / saved:,.0f}" if saved > 0 else "never (not faster)"
        L.append(f"| {c['size']}×{c['size']} | {c['compile_s']:.1f} | {saved * 1e3:.3f} | {even} | "
                 f"{c['check_diff']:.1e} |")
    L.append("")
    eight = next((c for c in m.compiled if c["size"] == 8), m.compiled[0])
    saved = _per_forward(eight, "eager") - _per_forward(eight, "compiled")
    default = CostConfig().compile
    for name, job in m.default_job.items():
        net = job["image_forwards"] * saved - eight["compile_s"]
        L.append(f"`{name}` ({job['cells']} cells, {job['image_forwards']:,} image-forwards of the "
                 f"{eight['size']}×{eight['size']} UNet, at this batch's per-forward times): compiling saves "
                 f"{job['image_forwards'] * saved:.0f} s of "
                 f"{job['image_forwards'] * _per_forward(eight, 'eager'):.0f} s and costs {eight['compile_s']:.0f} s "
                 f"once: {abs(net):.0f} s {'faster' if net > 0 else 'slower'} in all.")
    job = m.default_job.get("bench")
    if job is not None:
        wins = job["image_forwards"] * saved > eight["compile_s"]
        favoured = "default" if wins else "none"
        verdict = ("as this run's numbers favour" if favoured == default
                   else f"while this run's numbers favour `cost.compile={favoured}`: re-decide it")
        past = (" A job past the break-even (more cells, steps or images per model, e.g. the studies under "
                "sweeps/) gains from `cost.compile=default`." if saved > 0 else "")
        L += ["", f"So the default job {'gains' if wins else 'loses'} by compiling: `cost.compile={default}` is the "
              f"default, {verdict}.{past}"]
    bf, d = eight["min"]["bf16 autocast"] / eight["min"]["eager"], eight["diffs"]["bf16 autocast"]
    L += ["", f"bf16 autocast ({eight['size']}×{eight['size']}): {bf:.2f}× the eager time, samples within {d:.1e} of "
          f"eager: {'beyond' if d > ONE_UINT8_LEVEL else 'within'} {level}"
          + (", so it would move the scores: not a speed option." if d > ONE_UINT8_LEVEL else
             ", and faster: a candidate speed option." if bf < 1 else ", and not faster: not a speed option.")]
    f = m.features
    if f:
        saved_img = (f["eager_s"] - f["compiled_s"]) / f["n"]
        even = f["compile_s"] / saved_img if saved_img > 0 else float("inf")
        pays = f"pays for its compile after {even:,.0f} images" if saved_img > 0 else "is not faster"
        scored = f" (the default job scores {job['images']:,})" if job else ""
        keep = ("a candidate for the evaluator" if job and even < job["images"]
                else "so the evaluator runs eager")
        L += ["", f"The evaluator's feature extraction ({f['feature_net']}, {f['n']} images in batches of 250): "
              f"eager {f['eager_s'] * 1e3:.1f} ms, compiled {f['compiled_s'] * 1e3:.1f} ms (compiled in "
              f"{f['compile_s']:.1f} s apart; features within {f['diff']:.1e}): compiling it {pays}{scored}, {keep}."]
    return [*L, ""]


def render(run: Run, m: Measurements) -> str:
    P, mode, s = run.sizes, run.mode, m.sampling
    L = ["# bench-perf: the harness against its floors and peers", "",
         f"Command: `{' '.join(['bench-perf', *run.argv])}`", "",
         f"Machine: {run.machine} (torch threads {run.torch_threads}, OMP_NUM_THREADS={run.omp_threads}); "
         f"versions: {run.versions}.",
         f"Mode: {mode}; run time {run.seconds:.0f} s; 1-min load average {run.load_before:.2f} at the start, "
         f"{run.load_after:.2f} at the end ({run.cores} cores, shared: other processes ran beside this one).",
         f"Sizes ({mode}, chosen so the whole run stays under 10 minutes on a shared 2-core CPU): "
         + ", ".join(f"{k}={v}" for k, v in P.items() if k not in ("arch", "compile_arch")) + ".", "",
         "Models: every sampling timing uses an *untrained* UNet of the digits architecture "
         + ("(smoke UNet [16, 32]" if mode == "quick"
            else "(conf/model/unet.yaml: [32, 64], attention in the 2nd block")
         + ", 1×8×8, seeded"
         + "".join(f"; also {c['size']}×{c['size']} (digits resized) for compiled sampling" for c in m.compiled
                   if c["size"] != 8)
         + "): weights do not change the arithmetic, so training is irrelevant to these timings; "
         "ratios 1–2 use it unconditional because `DDIMPipeline` is. The 12-cell sweep samples a model trained by the "
         "harness (cached) and scores with the harness's digits CNN, as a real sweep does.", "",
         "## Ratios", "", "| # | ratio | measured | goal | | timings |", "|---|---|---:|---:|---|---|"]
    for i, r in enumerate(m.ratios, 1):
        L.append(f"| {i} | {ratio_name(r)} | {r.value:.3f} | ≤ {r.goal} | {'pass' if r.passed else '**miss**'} | "
                 f"{ratio_detail(r)} |")
    d = s["defaults"]
    number = {r.key: i for i, r in enumerate(m.ratios, 1)}  # the table's numbering, which depends on the sizes run
    L += ["", f"Each ratio alternates its sides for {P['rounds']} timed rounds (order rotating, after one uncounted "
          "warm-up round) and divides the *minimum* times (other processes on a shared machine only ever add time); "
          f"the ratio of medians is shown beside it. Ratio {number.get('memory')} runs one fresh process per N and "
          f"reads its resident set size after every batch; ratio {number.get('lightning')} compares median step "
          "times.", "",
          "## Optimisations, each on/off (harness sampling, same batch as ratio 1)", "",
          f"Harness defaults: `cost.inference_mode={str(d['inference_mode']).lower()}`, "
          f"`cost.channels_last={str(d['channels_last']).lower()}`, one finite check (host sync) per batch.", "",
          "| setting | min batch time (ms) | median (ms) | vs defaults (min) | max abs Δ sample vs defaults |",
          "|---|---:|---:|---:|---:|"]
    base = s["min"]["defaults"]
    for k in s["diffs"]:
        L.append(f"| {k} | {s['min'][k] * 1e3:.1f} | {s['med'][k] * 1e3:.1f} | {s['min'][k] / base:.3f}× | "
                 f"{s['diffs'][k]:.1e} |")
    L += ["", "A flipped option slower than the defaults (> 1×) is one the defaults gain from. `inference_mode` and "
          "one "
          "finite check per batch give bit-identical samples; `channels_last` changes float rounding only (Δ above, "
          "below one uint8 level of 1/127.5), so it is a default that every row records (`channels_last`), like "
          "`inference_mode`. `torch.compile` and bf16 autocast: next section. Not tried on this CPU: preallocated "
          "buffers (diffusers' `scheduler.step` allocates its outputs; the CPU caching allocator already reuses them) "
          "and the GPU-only options (fp16 autocast, CUDA graphs: `cost.compile=reduce-overhead`, TF32): no GPU in this "
          "run. Evaluator reuse across cells: ratio 6 bounds what it could "
          "gain — everything in a cell besides sampling and scoring (model, evaluator and reference loads, artifacts).",
          "",
          *compiled_section(m), "## Scaling", "", f"Harness sampling + scoring (FID, IS), DDIM, batch 250, time vs N "
          f"({P['time_n_steps']} steps):", "", "| N | seconds | ms / image | × of the smallest N, per image |",
          "|---:|---:|---:|---:|"]
    n0 = m.time_vs_n[0]
    for n, t, _ in m.time_vs_n:
        L.append(f"| {n} | {t:.2f} | {t / n * 1e3:.3f} | {(t / n) / (n0[1] / n0[0]):.3f} |")
    L += ["", f"Time vs NFE (N = {P['nfe_n']}):", "", "| steps | NFE | seconds | ms / (image · NFE) |",
          "|---:|---:|---:|---:|"]
    for st, t, nfe in m.time_vs_nfe:
        L.append(f"| {st} | {nfe:g} | {t:.2f} | {t / (P['nfe_n'] * nfe) * 1e3:.4f} |")
    L += ["", "Scoring memory vs N (a fresh process per N; FID + KID + IS on the digits CNN):", "",
          "| N | RSS before scoring (MB) | peak RSS (MB) | growth (MB) | seconds |", "|---:|---:|---:|---:|---:|"]
    for r in m.memory:
        L.append(f"| {r['n']} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {r['delta_mb']:.1f} | {r['seconds']:.2f} |")
    L += ["", "Growth with N comes from what KID and IS need per image (64 float32 features and 10 float64 logits: "
          "~0.3 kB each); the images themselves are streamed.", ""]
    misses = [r for r in m.ratios if not r.passed]
    L += ["## Where the misses come from (profiles)", ""]
    if not misses:
        L += ["Every ratio meets its goal in this run.", ""]
    for r in misses:
        if r.key == "compiled" and any(x.key == "compiled" for x in misses[:misses.index(r)]):
            continue  # one section for every size
        L += [f"### {ratio_name(r).split(' (')[0]}", "", explain(r.key, m), ""]
    return "\n".join(L).rstrip() + "\n"
