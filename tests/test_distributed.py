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
    """One cell through pipeline.run_cell (what `bench` runs per Hydra job), in this process."""
    import time

    from bench import pipeline
    from bench.run import cell_config, cell_key, results_root

    cfg = compose_cfg(*SHRINK, f"out_dir={out}", *overrides)
    info = pipeline.prepare(cfg)
    t0 = time.perf_counter()
    row = pipeline.run_cell(cfg, info, results_root(cfg), cell_key(cfg), cell_config(cfg))
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
