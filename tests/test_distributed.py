"""Sharded, multi-process sampling and scoring (bench/distributed.py) on CPU with gloo: the same samples and scores
as one process, whatever the world size, and a cell killed mid-way resumes from its shard files to the same numbers."""
import json

import numpy as np
import pytest

SHRINK = ["tracker=none", "sampling.num_samples=64", "sampling.batch_size=16", "sampling.save_samples=true"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One model/evaluator cache for the module: the smoke model and digits CNN train once."""
    path = tmp_path_factory.mktemp("dist-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE", str(path))
        yield path


def run(compose_cfg, out, *overrides):
    """One cell through cell.run_cell (what `bench` runs per Hydra job), in this process."""
    import time

    from bench import cell
    from bench.keys import results_root

    cfg = compose_cfg(*SHRINK, f"out_dir={out}", *overrides)
    t0 = time.perf_counter()
    row = cell.run_cell(cfg)
    row["_wall"] = time.perf_counter() - t0
    samples = np.load(results_root(cfg) / row["cell_dir"] / "samples.npz")["images"]
    return row, samples


def test_two_processes_give_the_samples_and_scores_of_one(cache, compose_cfg, tmp_path, one_thread):
    plain, x_plain = run(compose_cfg, tmp_path / "plain")  # the unsharded path, as before
    one, x_one = run(compose_cfg, tmp_path / "one", "sampling.shard_size=16")
    two, x_two = run(compose_cfg, tmp_path / "two", "sampling.devices=2", "sampling.shard_size=16")
    print(json.dumps({k: {c: r.get(c) for c in ("fid", "kid", "is", "world_size", "_wall", "images_per_s")}
                      for k, r in (("plain", plain), ("one", one), ("two", two))}))
    assert plain["cell_key"] == one["cell_key"] == two["cell_key"]  # the world size is not part of a cell
    assert x_plain.shape == (64, 8, 8, 1)
    assert np.array_equal(x_one, x_plain) and np.array_equal(x_two, x_plain)  # identical samples
    for r in (one, two):
        assert r["fid"] == pytest.approx(plain["fid"], rel=1e-6) and r["fid"] > 0
        assert r["kid"] == pytest.approx(plain["kid"], rel=1e-6, abs=1e-12)
        assert r["is"] == pytest.approx(plain["is"], rel=1e-6)
        assert r["nfe"] == plain["nfe"] == 5 and r["n_gen"] == 64
    assert (one["world_size"], one["shards"], two["world_size"], two["shards"]) == (1, 4, 2, 4)
    ranks = two["cost_per_rank"]
    assert [c["rank"] for c in ranks] == [0, 1] and [c["images"] for c in ranks] == [32, 32]
    assert two["images_per_s"] == pytest.approx(sum(c["images_per_s"] for c in ranks))
    root = tmp_path / "two" / "smoke"
    assert len((root / "results.jsonl").read_text().splitlines()) == 1  # rank 0 alone wrote the row
    assert not (root / two["cell_dir"] / "shards").exists()  # shards are gone once the cell is scored


def test_killed_two_process_cell_resumes_on_one_process_to_the_same_fid(cache, compose_cfg, tmp_path, monkeypatch,
                                                                         one_thread):
    from bench.distributed import FAULT_ENV

    ref, x_ref = run(compose_cfg, tmp_path / "ref", "sampling.shard_size=16")
    monkeypatch.setenv(FAULT_ENV, "1")  # each rank dies after its first shard file
    with pytest.raises(Exception, match="fault injection"):
        run(compose_cfg, tmp_path / "resume", "sampling.devices=2", "sampling.shard_size=16")
    root = tmp_path / "resume" / "smoke"
    done = sorted(p.name for p in root.glob("cells/*/shards/*.npz"))
    assert 1 <= len(done) <= 2 and set(done) <= {"000000000-000000016.npz", "000000016-000000032.npz"}
    assert not (root / "results.jsonl").exists()  # no row from a killed cell
    monkeypatch.delenv(FAULT_ENV)
    row, x = run(compose_cfg, tmp_path / "resume", "sampling.devices=1", "sampling.shard_size=16")
    assert row["shards_resumed"] == len(done) and sum(c["images"] for c in row["cost_per_rank"]) == 64 - 16 * len(done)
    assert np.array_equal(x, x_ref)
    assert row["fid"] == pytest.approx(ref["fid"], rel=1e-6) and row["kid"] == pytest.approx(ref["kid"], rel=1e-6)
    assert row["nfe"] == 5  # from every shard's counters, resumed ones included


def test_world_size_and_shard_size_are_checked_before_work(compose_cfg):
    from bench.schema import ConfigError
    from bench.validate import validate

    for bad, key in (("sampling.devices=0", "sampling.devices"), ("sampling.shard_size=-1", "sampling.shard_size")):
        with pytest.raises(ConfigError, match=key):
            validate(compose_cfg(bad))


def test_toy2d_points_two_processes_match_one(cache, compose_cfg, tmp_path, one_thread):
    """Points cells (swd/mmd against the exact sampler) shard the same way."""
    toy = ["experiment=toy2d", "hydra.mode=RUN", "train.max_steps=50", "sampling.num_samples=200",
           "sampling.batch_size=50", "sampling.grid_size=64", "metric.toy_num_reference=500",
           "sampling.num_inference_steps=5"]
    rows = {}
    for n, extra in (("plain", []), ("two", ["sampling.devices=2", "sampling.shard_size=50"])):
        from bench import cell
        from bench.keys import results_root

        cfg = compose_cfg(*SHRINK[:1], f"out_dir={tmp_path / n}", *toy, "sampling.save_samples=true", *extra)
        row = cell.run_cell(cfg)
        rows[n] = (row, np.load(results_root(cfg) / row["cell_dir"] / "samples.npz")["points"])
    (plain, p1), (two, p2) = rows["plain"], rows["two"]
    assert p1.shape == (200, 2) and np.array_equal(p1, p2)
    assert two["swd"] == pytest.approx(plain["swd"], rel=1e-6) and two["mmd"] == pytest.approx(plain["mmd"], rel=1e-6)
    assert two["world_size"] == 2 and [c["images"] for c in two["cost_per_rank"]] == [100, 100]


def test_sigkilled_two_process_cli_run_resumes_to_the_same_fid(cache, compose_cfg, tmp_path, one_thread):
    """`kill -9` of the whole `bench` process group once the first shard file is on disk; the re-run samples only
    the missing shards and ends with the FID of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from test_run import ROOT, rows

    slow = ["sampling.num_inference_steps=100", "sampling.shard_size=16"]
    ref, x_ref = run(compose_cfg, tmp_path / "ref", *slow)  # also trains the model into the shared cache
    args = [sys.executable, "-m", "bench.run", "experiment=smoke", *SHRINK, *slow, "sampling.devices=2",
            f"out_dir={tmp_path / 'cli'}", "trainer.enable_progress_bar=false"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    root = tmp_path / "cli" / "smoke"
    deadline = time.monotonic() + 120
    while not list(root.glob("cells/*/shards/*.npz")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)  # the run's own process group: bench and its two ranks
    p.wait()
    done = list(root.glob("cells/*/shards/*.npz"))
    assert 1 <= len(done) < 4, "the run was not caught mid-cell"
    assert not (root / "results.jsonl").exists()
    q = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    (row,) = rows(root / "results.jsonl")
    assert row["shards_resumed"] == len(done)  # every shard file written before the kill is reused
    assert row["fid"] == pytest.approx(ref["fid"], rel=1e-6) and row["kid"] == pytest.approx(ref["kid"], rel=1e-6)
    x = np.load(root / row["cell_dir"] / "samples.npz")["images"]
    assert np.array_equal(x, x_ref)


# ------------------------------------------------------------------------------ training on N processes (ddp_spawn)

TOY_TRAIN = ["experiment=toy2d", "tracker=none", "device=cpu", "train.batch_size=64", "train.warmup_steps=5",
             "data.num_train=2000", "trainer.enable_progress_bar=false", "trainer.accelerator=cpu",
             "train.checkpoint_every=10"]


def test_two_process_training_takes_the_steps_of_one_and_resumes(compose_cfg, tmp_path, one_thread):
    """trainer.devices=2 (ddp_spawn, gloo): each rank trains on its half of every global batch, so 2 processes train
    the weights of 1 (max abs diff <= 1e-5, float32 gradient-sum rounding apart) with the same loss curve; stopped at
    step 20 and resumed to 30 on 2 processes it ends where 30 uninterrupted 1-process steps end. Then the real
    pipeline on 2 processes: the same model key as 1 process, the model published to the cache, and a cell on it."""
    import torch

    from bench import cell
    from bench.data import get_data_info
    from bench.keys import model_key
    from bench.training import fit, load_or_train
    from bench.training.module import DiffusionModule

    def train(devices, steps, work):
        cfg = compose_cfg(*TOY_TRAIN, f"trainer.devices={devices}", f"train.max_steps={steps}")
        info = get_data_info(cfg.data)
        return fit(lambda: DiffusionModule.from_config(cfg, info), cfg.data, cfg.train, cfg.trainer, work)

    one = train(1, 30, tmp_path / "w1")
    train(2, 20, tmp_path / "w2")
    two = train(2, 30, tmp_path / "w2")  # resumes from rank 0's step-20 checkpoint
    assert (one.trained_steps, two.trained_steps) == (30, 30)
    for a, b in ((one.model, two.model), (one.ema, two.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert max(float((sa[k] - sb[k]).abs().max()) for k in sa) <= 1e-5
    assert np.allclose(one.losses(), two.losses(), rtol=1e-5, atol=1e-7) and len(two.losses()) == 30

    cache = tmp_path / "cache"
    args = [*TOY_TRAIN, "train.max_steps=30", f"cache_dir={cache}", f"out_dir={tmp_path / 'runs'}",
            "sampling.num_samples=64", "sampling.batch_size=32", "metric.toy_num_reference=500"]
    cfg2 = compose_cfg(*args, "trainer.devices=2")
    assert model_key(cfg2) == model_key(compose_cfg(*args))  # how many processes train is not in the key
    model, info = load_or_train(cfg2)
    assert info["cached"] is False and info["train_steps"] == 30
    sm, se = model.state_dict(), one.ema.state_dict()
    assert max(float((sm[k] - se[k].to(sm[k].device)).abs().max()) for k in sm) <= 1e-5  # the EMA weights, published
    row = cell.run_cell(cfg2)
    assert row["status"] == "ok" and np.isfinite(row["swd"])
    _, again = load_or_train(compose_cfg(*args))  # one process now: a cache hit on the model 2 processes trained
    assert again["cached"] is True and again["model_key"] == info["model_key"]
    assert torch.is_tensor(next(iter(sm.values())))


def test_classifier_guided_cell_is_guided_on_every_path(cache, compose_cfg, tmp_path, one_thread):
    """Classifier guidance on the sharded path (shards in one process, then 2 processes): the samples, scores and
    classifier NFE of the one-process cell. Before, shards sampled *unguided* under the guided cell's key and row."""
    guided = ["sampling.classifier_scale=2", "sampling.guidance_scale=0", "classifier.max_steps=20",
              "classifier.block_out_channels=[8,16]"]
    plain, x_plain = run(compose_cfg, tmp_path / "plain", *guided)
    _, x_unguided = run(compose_cfg, tmp_path / "unguided", "sampling.guidance_scale=0")
    one, x_one = run(compose_cfg, tmp_path / "one", *guided, "sampling.shard_size=16")
    two, x_two = run(compose_cfg, tmp_path / "two", *guided, "sampling.devices=2", "sampling.shard_size=16")
    print(json.dumps({k: {c: r.get(c) for c in ("fid", "nfe", "nfe_classifier", "classifier_scale")}
                      for k, r in (("plain", plain), ("one", one), ("two", two))}))
    assert not np.array_equal(x_plain, x_unguided)  # the classifier moves the samples
    assert np.array_equal(x_one, x_plain) and np.array_equal(x_two, x_plain)
    for r in (one, two):
        assert r["cell_key"] == plain["cell_key"] and r["fid"] == pytest.approx(plain["fid"], rel=1e-6)
        assert r["nfe"] == plain["nfe"] == 5 and r["nfe_classifier"] == plain["nfe_classifier"] == 5
        assert r["classifier_key"] == plain["classifier_key"]


def test_resumed_shards_that_lack_samples_are_sampled_again(cache, compose_cfg, tmp_path, monkeypatch, one_thread):
    """Shards written without sampling.save_samples keep only the grid's samples (here shard 0 of 4); resumed with
    save_samples, the cell must not take them as they are: before, samples.npz held 48 of the 64 images (16-31
    missing) under an ok row. A shard that lacks samples the run keeps is sampled again."""
    from bench.distributed import FAULT_ENV

    ref, x_ref = run(compose_cfg, tmp_path / "ref")  # one process, unsharded, every sample saved
    monkeypatch.setenv(FAULT_ENV, "2")  # killed after its first two shards
    with pytest.raises(RuntimeError, match="fault injection"):
        run(compose_cfg, tmp_path / "resume", "sampling.shard_size=16", "sampling.save_samples=false",
            "sampling.grid_size=16")
    monkeypatch.delenv(FAULT_ENV)
    row, x = run(compose_cfg, tmp_path / "resume", "sampling.shard_size=16")  # resumed with save_samples=true
    assert x.shape == (64, 8, 8, 1) and np.array_equal(x, x_ref)
    assert row["shards_resumed"] == 1  # shard 0 held its 16 samples (the grid's); shard 1 none: sampled again
    assert sum(c["images"] for c in row["cost_per_rank"]) == 48
    assert row["fid"] == pytest.approx(ref["fid"], rel=1e-6) and row["nfe"] == ref["nfe"] == 5


def test_tiny_sd_pipeline_on_two_processes_gives_the_images_and_scores_of_one(compose_cfg, tmp_path, one_thread):
    """A loaded diffusers pipeline (the tiny Stable Diffusion built offline) sampled on 2 processes (ddp_spawn, gloo)
    and in one: the same images, FID/KID/IS/CLIP score, NFE, per-prompt table and provenance."""
    from bench import cell
    from bench.keys import results_root
    from bench.models import tiny

    sd = tiny.save("sd", tmp_path / "sd")
    base = ["data=shapes", "model=pipeline", f"model.path={sd}", "prompts=shapes", "sampler=ddim",
            "sampling.num_inference_steps=2", "sampling.guidance_scale=2", "sampling.num_samples=8",
            "sampling.batch_size=2", "sampling.save_samples=true", "metric.kid_subset_size=4", "metric.kid_subsets=2",
            "metric.is_splits=1", "device=cpu", f"cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false"]
    runs = {}
    for name, extra in (("one", []), ("two", ["sampling.devices=2", "sampling.shard_size=2"])):
        cfg = compose_cfg(*base, f"out_dir={tmp_path / name}", *extra)
        row = cell.run_cell(cfg)
        d = results_root(cfg) / row["cell_dir"]
        runs[name] = (row, np.load(d / "samples.npz")["images"], (d / "prompts.csv").read_text())
    (one, x1, p1), (two, x2, p2) = runs["one"], runs["two"]
    scores = ("fid", "kid", "is", "clip_score")
    print(json.dumps({"max_abs_uint8_diff": int(np.abs(x1.astype(int) - x2).max()),
                      **{f"{k}_{n}": r[k] for n, r in (("one", one), ("two", two)) for k in scores}}))
    assert one["cell_key"] == two["cell_key"] and x1.shape == (8, 16, 16, 3) and np.array_equal(x1, x2)
    for k in scores:
        assert np.isfinite(one[k]) and two[k] == pytest.approx(one[k], rel=1e-6, abs=1e-12), k
    assert one["nfe"] == two["nfe"] == 4 and p1 == p2 and len(p1.splitlines()) == 1 + 8
    assert two["world_size"] == 2 and [c["images"] for c in two["cost_per_rank"]] == [4, 4]
    for k in ("pipeline_class", "scheduler_class", "prompts_sha256", "objective", "schedule", "classifier_scale"):
        assert one[k] == two[k], k


# ------------------------------------------------------------------------------- how ranks start on CPU (bench.ranks)

def _probe_rank(process_idx, spawn_like, queue):
    """A rank's view after bench.ranks' restore: an environment variable, its working directory, a torch flag, its
    RNG."""
    import os

    import torch

    spawn_like.restore()
    queue.put((os.environ.get("BENCH_RANK_PROBE"), os.getcwd(), torch.are_deterministic_algorithms_enabled(),
               float(torch.rand(()))))


def test_forkserver_ranks_see_the_launching_process_as_it_is_at_launch(monkeypatch, tmp_path):
    """The forkserver's own environment, working directory and torch state are those of its start; a rank must see
    the launching process's at the launch (what a spawned rank sees), or a setting changed in between would silently
    not apply."""
    import multiprocessing

    import torch
    import torch.multiprocessing as torch_mp

    from bench import ranks

    assert ranks.forkserver("cpu") and not ranks.forkserver("cuda")
    queue = multiprocessing.get_context("forkserver").SimpleQueue()

    def launch():
        torch_mp.start_processes(_probe_rank, args=(ranks.SpawnLike(), queue), nprocs=1, start_method="forkserver")
        return queue.get()

    monkeypatch.setenv("BENCH_RANK_PROBE", "first")
    assert launch()[0] == "first"  # the server is running now, started with this environment
    monkeypatch.setenv("BENCH_RANK_PROBE", "second")
    monkeypatch.chdir(tmp_path)
    was = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(1234)
    expected = float(torch.rand(()))
    torch.manual_seed(1234)
    try:
        torch.use_deterministic_algorithms(not was)
        env, cwd, deterministic, draw = launch()
    finally:
        torch.use_deterministic_algorithms(was)
    assert (env, cwd, deterministic, draw) == ("second", str(tmp_path), not was, expected)
