"""The bad-input catalogue: each case runs the real CLI entry point (`bench.run.main`, in-process for speed; one case
per kind also as a real subprocess) and checks the one-line message, the exit status and that nothing was written.

Config-level errors fail in pre-flight, before Hydra writes anything. Run-time errors (a corrupt cache file, reference
statistics that do not match, a results file bench cannot read) stop the run with one `bench: error:` line too and
leave no half-written cell. NaN/Inf and out-of-memory fail only their cell: a failed row, and the sweep goes on.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_runner import assert_one_line_error, in_process
from reliability_helpers import DIGITS, TOY, bench, private_cache, rows, trained

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_model():
    return trained(TOY)


@pytest.fixture(scope="module")
def digits_model():
    return trained(DIGITS)


def cli(tmp_path, capsys, monkeypatch, *args, out=None):
    """bench.run.main() with `args`: (exit status, stderr lines, results root)."""
    out = Path(out or tmp_path / "runs")
    code, err = in_process(capsys, monkeypatch, *args, f"out_dir={out}")
    return code, err, out


# ------------------------------------------------------------------------------------------- config-level errors

CONFIG_CASES = {
    "unknown group value": (["sampler=foo"], ["sampler=foo is not allowed: one of", "ddim", "flow_euler"]),
    # sweep and family were `optional` in the defaults list: a misspelt name was skipped and the default grid ran
    "misspelt study": (["-m", "sweep=familes"], ["sweep=familes is not allowed: one of", "families"]),
    "misspelt family": (["family=digit_dit"], ["family=digit_dit is not allowed: one of", "digits_dit"]),
    "misspelt key": (["sampling.num_inferenc_steps=5"], ["no such key in SamplingConfig", "num_inference_steps"]),
    "misspelt group": (["samplr=ddim"], ["samplr"]),
    "wrong type": (["sampling.num_samples=many"], ["sampling.num_samples", "many"]),
    "override syntax": (["sampler=[ddim"], ["sampler=[ddim"]),
    "steps = 0": (["sampling.num_inference_steps=0"], ["sampling.num_inference_steps=0 is not allowed"]),
    "steps > num_train_timesteps": (["sampling.num_inference_steps=2000"],
                                    ["sampling.num_inference_steps=2000 is not allowed", "1000"]),
    "negative guidance": (["sampling.guidance_scale=-1"], ["sampling.guidance_scale=-1", "a number >= 0"]),
    "guidance on an unconditional model": (["experiment=toy2d", "hydra.mode=RUN", "sampling.guidance_scale=3"],
                                           ["sampling.guidance_scale=3", "unconditional"]),
    "flow sampler on an eps model": (["sampler=flow_euler"], ["sampler", "flow_euler", "objective"]),
    "ddim on a flow model": (["objective=flow", "sampler=ddim"], ["sampler", "ddim", "flow"]),
    "mlp on images": (["model=mlp"], ["model='mlp' is not allowed: model=unet for data=digits"]),
    "batch_size = 0": (["sampling.batch_size=0"], ["sampling.batch_size=0 is not allowed: an integer in [1, inf)"]),
    "cost.repeats = 0": (["cost.repeats=0"], ["cost.repeats=0 is not allowed: an integer in [1, inf)"]),
    "negative cost.warmup_batches": (["cost.warmup_batches=-1"],
                                     ["cost.warmup_batches=-1 is not allowed: an integer in [0, inf)"]),
    "ema_decay out of range": (["train.ema_decay=1.5"], ["train.ema_decay=1.5 is not allowed: a number in [0, 1)"]),
    "folder without a path": (["data=folder"], ["data.path=None is not allowed"]),
    "unknown feature network": (["metric.feature_net=vgg"], ["metric.feature_net='vgg' is not allowed", "inception"]),
    "missing inception weights": (["metric=inception"], ["metric.inception_weights=None is not allowed",
                                                         "weights-inception-2015-12-05", "BENCH_INCEPTION_WEIGHTS"]),
    "missing reference stats": (["metric.reference_stats=/nonexistent/ref.npz"],
                                ["metric.reference_stats='/nonexistent/ref.npz'", "file not found"]),
    "bad value in the last cell of a sweep": (["-m", "sampling.num_inference_steps=2,3,-1"],
                                              ["sampling.num_inference_steps=-1 is not allowed"]),
    # a key of another model family: each family has its own schema (bench.schema.MODEL_SCHEMAS)
    "a VAE key on the pixel UNet": (["model=unet", "model.vae=/tmp/vae"],
                                    ["model.vae: no such key in UNetConfig (model=unet); allowed keys: name, "
                                     + "block_out_channels", "pretrained"]),
    "a UNet key on the DiT": (["model=dit", "model.block_out_channels=[8,16]"],
                              ["model.block_out_channels: no such key in DiTConfig (model=dit)", "patch_size"]),
    "an added key of another family": (["model=unet", "+model.text_encoder=/tmp/clip"],
                                       ["model.text_encoder='/tmp/clip' is not allowed: a key of UNetConfig"]),
    # values that once passed the preflight, then crashed after the work (bounds: beside each schema field)
    "num_samples = 1": (["sampling.num_samples=1"], ["sampling.num_samples=1 is not allowed: an integer in [2, inf)"]),
    "seed beyond 64 bits": (["sampling.seed=99999999999999999999"], ["sampling.seed=99999999999999999999"]),
    "negative train.seed": (["train.seed=-1"], ["train.seed=-1 is not allowed: an integer in [0, 4294967295]"]),
    "train.seed beyond Lightning's range": (["train.seed=4294967296"], ["train.seed=4294967296 is not allowed"]),
    "NaN learning rate": (["train.lr=nan"], ["train.lr=nan is not allowed: a finite number in (0, inf)"]),
    "NaN gradient clip": (["train.grad_clip=nan"], ["train.grad_clip=nan is not allowed: a finite number"]),
    "infinite guidance": (["sampling.guidance_scale=inf"], ["sampling.guidance_scale=inf is not allowed"]),
    "NaN eta": (["sampler.eta=nan"], ["sampler.eta=nan is not allowed"]),
    "grid_size = 0": (["sampling.grid_size=0"], ["sampling.grid_size=0 is not allowed: an integer in [1, inf)"]),
    "is_splits = 0": (["metric.is_splits=0"], ["metric.is_splits=0 is not allowed"]),
    "kid_subsets = 0": (["metric.kid_subsets=0"], ["metric.kid_subsets=0 is not allowed"]),
    "test_fraction = 0": (["data.test_fraction=0"], ["data.test_fraction=0", "(0, 1)"]),
    "test_fraction > 1": (["data.test_fraction=1.5"], ["data.test_fraction=1.5", "(0, 1)"]),
    "reversed betas": (["schedule.beta_start=0.03"],
                       ["schedule.beta_start=0.03 is not allowed: < schedule.beta_end=0.02", "reversed"]),
    "beta_end = 1": (["schedule.beta_end=1.0"], ["schedule.beta_end=1.0 is not allowed: a number in (0, 1)"]),
    "accumulate_grad_batches = 0": (["train.accumulate_grad_batches=0"], ["train.accumulate_grad_batches=0"]),
    "max_time not DD:HH:MM:SS": (["trainer.max_time=90min"], ["trainer.max_time='90min' is not allowed",
                                                               "DD:HH:MM:SS"]),
    "max_steps = 0": (["train.max_steps=0"], ["train.max_steps=0 is not allowed"]),
    "negative weight decay": (["train.weight_decay=-1"], ["train.weight_decay=-1"]),
    "distill lr NaN": (["distill.lr=nan"], ["distill.lr=nan is not allowed"]),
    "kid_subset_size = 1": (["metric.kid_subset_size=1"],
                            ["metric.kid_subset_size=1 is not allowed: an integer in [2, inf)"]),
    "swd_projections = 0": (["metric.swd_projections=0"], ["metric.swd_projections=0 is not allowed"]),
    "negative shard_size": (["sampling.shard_size=-1"], ["sampling.shard_size=-1 is not allowed"]),
    "NaN max_sigma": (["sampler.max_sigma=nan"], ["sampler.max_sigma=nan is not allowed: a finite number"]),
    "NaN flow_shift": (["schedule.flow_shift=nan"], ["schedule.flow_shift=nan is not allowed: a finite number"]),
    "min_timed_batches = 0": (["cost.min_timed_batches=0"], ["cost.min_timed_batches=0 is not allowed"]),
    "teacher_steps = 0": (["distill.teacher_steps=0"], ["distill.teacher_steps=0 is not allowed"]),
    "log_every_n_steps = 0": (["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps=0 is not allowed"]),
    "negative metric.seed": (["metric.seed=-1"], ["metric.seed=-1 is not allowed: an integer in [0, 4294967295]"]),
    "negative split_seed": (["data.split_seed=-1"], ["data.split_seed=-1 is not allowed"]),
    "mmd bandwidth 0": (["metric.mmd_bandwidth=0"], ["metric.mmd_bandwidth=0", "(0, inf)"]),
    "one training timestep": (["schedule.num_train_timesteps=1", "sampling.num_inference_steps=1"],
                              ["schedule.num_train_timesteps=1 is not allowed: an integer in [2, inf)"]),
    "multi-process training with ddp": (["trainer.devices=2", "trainer.strategy=ddp"],
                                        ["trainer.strategy='ddp' is not allowed: auto or ddp_spawn",
                                         "re-launches the whole bench job per rank"]),
    "batch not divisible by processes": (["trainer.devices=3"], ["is not allowed: a multiple of trainer.devices=3",
                                                                 "an equal share of every batch"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_error(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    args, fragments = CONFIG_CASES[case]
    if args[0] == "-m":
        args = ["-m", "experiment=smoke", "tracker=none", *args[1:]]
    else:
        args = ["experiment=smoke", "tracker=none", *args]
    code, err, out = cli(tmp_path, capsys, monkeypatch, *args)
    assert_one_line_error(code, err, out, *fragments)
    assert not out.exists()


def test_empty_data_folder(tmp_path, capsys, monkeypatch):
    (tmp_path / "images" / "cats").mkdir(parents=True)
    code, err, out = cli(tmp_path, capsys, monkeypatch, "experiment=smoke", "tracker=none", "data=folder",
                         f"data.path={tmp_path / 'images'}")
    assert_one_line_error(code, err, out, "data.path=", "contains no images")
    assert not out.exists()


def test_unwritable_output_directory(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, err, out = cli(tmp_path, capsys, monkeypatch, "experiment=smoke", "tracker=none", out=blocker / "runs")
    assert_one_line_error(code, err, out, "out_dir=", "a writable directory", "is not writable")
    if os.geteuid() != 0:  # root may write anywhere: the permission case only means something for other users
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        code, err, out = cli(tmp_path, capsys, monkeypatch, "experiment=smoke", "tracker=none", out=ro / "runs")
        assert_one_line_error(code, err, out, "is not writable")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu(tmp_path, capsys, monkeypatch):
    code, err, out = cli(tmp_path, capsys, monkeypatch, "experiment=smoke", "tracker=none", "device=cuda")
    assert_one_line_error(code, err, out, "device='cuda' is not allowed", "no CUDA device is visible")


def test_config_error_through_the_real_cli(tmp_path):
    p = bench(tmp_path / "runs", "experiment=smoke", "tracker=none", "sampling.guidance_scale=-0.5")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "bench: error: sampling.guidance_scale=-0.5 is not allowed: a number >= 0 (0 = unconditional, 1 = "
        "conditional, > 1 = classifier-free guidance)"], p.stderr
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------- run-time errors

def test_missing_pretrained_weights(toy_model, tmp_path, capsys, monkeypatch):
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", "model=unet", "data=digits",
                         f"model.pretrained={tmp_path / 'no-such-model'}")
    assert_one_line_error(code, err, out, "model.pretrained=", "no-such-model", "could not be loaded offline")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_cached_safetensors(damage, toy_model, tmp_path, capsys, monkeypatch):
    cache = private_cache(tmp_path / "cache", ("models",))
    from bench.keys import model_key
    from reliability_helpers import compose

    weights = cache / "models" / model_key(compose(*TOY, "hydra.mode=RUN")) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 64)
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", f"cache_dir={cache}")
    assert_one_line_error(code, err, out, f"{weights}: cached model weights cannot be read", "delete",
                          "to train it again")


def test_corrupt_resume_checkpoint(tmp_path, capsys, monkeypatch):
    from bench.training import partial_dir
    from reliability_helpers import compose

    cache = tmp_path / "cache"
    args = [*TOY, "hydra.mode=RUN", "train.max_steps=7", f"cache_dir={cache}"]
    ckpt = partial_dir(compose(*args, cache=cache)) / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 truncated zip")
    code, err, out = cli(tmp_path, capsys, monkeypatch, *args)
    assert_one_line_error(code, err, out, f"{ckpt}: cannot resume training from this checkpoint", "delete it")


# The built-in digits reference ships with bench (read-only); these tests corrupt a computed, cached one instead:
# a capped reference (metric.num_reference) is computed on first use and cached.
CAPPED_REF = "metric.num_reference=1000"


@pytest.fixture
def digits_cache(digits_model, tmp_path):
    from bench.data import get_data_info
    from bench.evaluators import load_feature_net
    from bench.metrics.refstats import get_reference
    from reliability_helpers import compose

    cache = private_cache(tmp_path / "cache")
    cfg = compose(*DIGITS, "hydra.mode=RUN", CAPPED_REF, cache=cache)
    info = get_data_info(cfg.data)
    ref = get_reference(cfg, info, load_feature_net(cfg, info))
    npz = Path(ref.meta["path"])
    assert ref.meta["source"] == "computed" and npz.parent == cache / "refstats" and npz.exists()
    return cache, npz


def test_refstats_checksum_mismatch(digits_cache, tmp_path, capsys, monkeypatch):
    cache, npz = digits_cache
    data = bytearray(npz.read_bytes())
    data[-100] ^= 0xFF
    npz.write_bytes(bytes(data))
    code, err, out = cli(tmp_path, capsys, monkeypatch, *DIGITS, "hydra.mode=RUN", CAPPED_REF, f"cache_dir={cache}")
    assert_one_line_error(code, err, out, f"{npz}: sha256", "does not match", "delete both to recompute")


@pytest.mark.parametrize("field,value", [("data_id", "digits-16px-c1"), ("feature_net_hash", "0123456789abcdef"),
                                         ("resize", "bicubic to 299")])
def test_refstats_of_another_resolution_or_network(field, value, digits_cache, tmp_path, capsys, monkeypatch):
    cache, npz = digits_cache
    meta_path = npz.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, field: value}))
    code, err, out = cli(tmp_path, capsys, monkeypatch, *DIGITS, "hydra.mode=RUN", CAPPED_REF, f"cache_dir={cache}")
    assert_one_line_error(code, err, out, f"reference was made with {field}={value!r} but this run uses {field}=")


def test_imported_refstats_of_another_feature_network(digits_cache, tmp_path, capsys, monkeypatch):
    cache, _ = digits_cache
    ref = tmp_path / "inception_ref.npz"
    np.savez(ref, mu=np.zeros(2048), sigma=np.eye(2048))
    code, err, out = cli(tmp_path, capsys, monkeypatch, *DIGITS, "hydra.mode=RUN", CAPPED_REF, f"cache_dir={cache}",
                         f"metric.reference_stats={ref}")
    assert_one_line_error(code, err, out, "holds published mu/sigma", "metric.feature_net=digits_cnn")
    (tmp_path / "inception_ref.npz.json").write_text(json.dumps({"feature_net": "digits_cnn"}))
    code, err, out = cli(tmp_path, capsys, monkeypatch, *DIGITS, "hydra.mode=RUN", CAPPED_REF, f"cache_dir={cache}",
                         f"metric.reference_stats={ref}")
    assert_one_line_error(code, err, out, "has 2048-d statistics but feature net digits_cnn gives 64-d")


def test_inception_weights_checksum_mismatch(digits_model, tmp_path, capsys, monkeypatch):
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"not the official file")
    code, err, out = cli(tmp_path, capsys, monkeypatch, *DIGITS, "hydra.mode=RUN", "metric=inception",
                         f"metric.inception_weights={weights}")
    assert_one_line_error(code, err, out, f"metric.inception_weights={weights} has sha256", "expected 6726825d",
                          "metric.inception_sha256=")


@pytest.mark.parametrize("content,fragment", [
    ('{"cell_key": "x", "schema_version": 99, "status": "ok"}\n', "schema_version=99 is newer than this bench reads"),
    ("sampler,fid\nddim,3.1\n", "not JSON Lines"),
])
def test_unreadable_results_file(content, fragment, toy_model, tmp_path, capsys, monkeypatch):
    results = tmp_path / "runs" / "toy2d" / "results.jsonl"
    results.parent.mkdir(parents=True)
    results.write_text(content)
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN")
    assert code == 2 and err[-1].startswith("bench: error:") and fragment in err[-1] and str(results) in err[-1], err
    assert results.read_text() == content and not (results.parent / "cells").exists()  # untouched


def test_run_time_error_through_the_real_cli(toy_model, tmp_path):
    cache = private_cache(tmp_path / "cache", ("models",))
    for w in (cache / "models").glob("*/model.safetensors"):
        w.write_bytes(w.read_bytes()[:100])
    p = bench(tmp_path / "runs", *TOY, "hydra.mode=RUN", cache=cache)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and err[-1].startswith("bench: error: ") and "cached model weights cannot be read" in \
        err[-1] and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert not (tmp_path / "runs" / "toy2d").exists()


# ------------------------------------------------------------------------------ per-cell failures: NaN and OOM

class _NaNAfter(torch.nn.Module):
    """Wraps a denoiser; returns NaN from model call `k` on (counted per batch)."""

    def __init__(self, model, k):
        super().__init__()
        self.model, self.k, self.calls = model, k, 0

    def forward(self, x, t, class_labels=None):
        self.calls += 1
        out = self.model(x, t, class_labels=class_labels)
        return out * float("nan") if self.calls > self.k else out


def test_nan_fails_the_cell_and_the_sweep_goes_on(toy_model, tmp_path, capsys, monkeypatch):
    import bench.training

    real = bench.training.load_or_train

    def nan_for_euler(cfg):
        model, info = real(cfg)
        return (_NaNAfter(model, 2) if cfg.sampler.name == "euler" else model), info

    monkeypatch.setattr(bench.training, "load_or_train", nan_for_euler)
    code, err, out = cli(tmp_path, capsys, monkeypatch, "-m", *TOY, "sampler=euler,ddim",
                         "sampling.num_inference_steps=4")
    assert code == 0, err
    got = {r["sampler"]: r for r in rows(out / "toy2d" / "results.jsonl")}
    assert got["euler"]["status"] == "failed" and got["euler"]["failed_step"] == 2
    assert "non-finite values (NaN/Inf) in the sample after step 2/4" in got["euler"]["error"]
    assert "swd" not in got["euler"]
    assert got["ddim"]["status"] == "ok" and got["ddim"]["swd"] > 0  # the next cell ran
    # a failed cell is retried on re-run (and replaced by its ok row)
    monkeypatch.setattr(bench.training, "load_or_train", real)
    code, err, out = cli(tmp_path, capsys, monkeypatch, "-m", *TOY, "sampler=euler,ddim",
                         "sampling.num_inference_steps=4")
    assert code == 0 and [r["status"] for r in rows(out / "toy2d" / "results.jsonl")] == ["ok", "ok"]


def test_nan_with_fail_fast_stops_with_one_line(toy_model, tmp_path, capsys, monkeypatch):
    import bench.training

    real = bench.training.load_or_train
    monkeypatch.setattr(bench.training, "load_or_train", lambda cfg: (_NaNAfter(real(cfg)[0], 0), real(cfg)[1]))
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", "fail_fast=true", "sampler=ddim",
                         "sampling.num_inference_steps=3")
    assert code == 2 and err[-1].startswith("bench: error: non-finite values (NaN/Inf) in the sample after step 0/3")


@pytest.mark.parametrize("max_batch", [8, 0])
def test_out_of_memory_halves_the_batch_or_fails_the_cell(max_batch, toy_model, tmp_path, capsys, monkeypatch):
    import bench.sampling.subject

    real = bench.sampling.subject.sample  # the one loop, as the sampling interface calls it
    seen = []

    def oom_above(*a, batch_size, **k):
        seen.append(batch_size)
        if batch_size > max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, batch_size=batch_size, **k)

    args = [*TOY, "hydra.mode=RUN", "sampler=ddim", "sampling.num_inference_steps=3", "sampling.batch_size=32"]
    code, err, out = cli(tmp_path / "ref", capsys, monkeypatch, *args)
    (ref,) = rows(out / "toy2d" / "results.jsonl")
    monkeypatch.setattr(bench.sampling.subject, "sample", oom_above)
    code, err, out = cli(tmp_path, capsys, monkeypatch, *args)
    assert code == 0, err
    (row,) = rows(out / "toy2d" / "results.jsonl")
    if max_batch:
        assert seen == [32, 16, 8] and row["status"] == "ok" and row["batch_size"] == 8
        assert row["cell_key"] == ref["cell_key"]
        # batch 8 vs 32: float32 GEMMs round differently per batch shape on some CPUs (documented ~1e-6 relative)
        assert row["swd"] == pytest.approx(ref["swd"], rel=1e-4) and row["mmd"] == pytest.approx(ref["mmd"], rel=1e-3)
    else:
        assert seen == [32, 16, 8, 4, 2, 1] and row["status"] == "failed"
        assert row["error"] == "CUDA out of memory at sampling.batch_size=1"


def test_finished_cell_from_another_evaluator_is_not_skipped_silently(tmp_path, capsys, monkeypatch):
    """The cell key holds the config, not the evaluator's weights: a finished row scored by another feature network
    (an older shipped file, another cache's) must stop the run with one line, not be kept as this run's result."""
    from bench.results import append_row
    from bench.run import cell_key
    from reliability_helpers import compose

    args = [*DIGITS, "hydra.mode=RUN"]
    out = tmp_path / "runs"
    key = cell_key(compose(*args, f"out_dir={out}"))
    append_row(out / "smoke" / "results.jsonl", {"cell_key": key, "status": "ok", "name": "smoke", "fid": 1.0,
                                                 "feature_net": "digits_cnn", "feature_net_hash": "0000deadbeef0000"})
    code, err, _ = cli(tmp_path, capsys, monkeypatch, *args, out=out)
    assert code == 2
    assert f"cell {key} was scored with feature net digits_cnn #0000deadbeef0000, this run's is #" in err[-1]
    assert len(rows(out / "smoke" / "results.jsonl")) == 1  # nothing removed, nothing added


def test_out_dir_name_that_is_a_file(tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "smoke").write_text("not a directory")
    code, err, _ = cli(tmp_path, capsys, monkeypatch, "experiment=smoke", "tracker=none", out=out)
    assert_one_line_error(code, err, out / "nothing", "out_dir=", "a writable directory")
    assert (out / "smoke").read_text() == "not a directory"


def test_cached_weights_changed_in_place_are_refused_not_used(toy_model, tmp_path, capsys, monkeypatch):
    """The unfixed behaviour first: 40 KB zeroed inside a cached model.safetensors is still a valid
    file, with other weights (so another score under the same keys). Now its sha256 no longer matches meta.json's."""
    from safetensors.torch import load_file

    from bench.keys import model_key
    from reliability_helpers import compose

    cache = private_cache(tmp_path / "cache", ("models",))
    weights = cache / "models" / model_key(compose(*TOY, "hydra.mode=RUN")) / "model.safetensors"
    before = {k: v.clone() for k, v in load_file(str(weights)).items()}  # a copy: load_file maps the file
    data = bytearray(weights.read_bytes())
    start = len(data) // 2
    data[start:start + 40_000] = bytes(40_000)
    weights.write_bytes(bytes(data))
    after = load_file(str(weights))  # loads fine: safetensors has no checksum of its own
    assert after.keys() == before.keys() and any(not torch.equal(after[k], before[k]) for k in before)
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", f"cache_dir={cache}")
    assert_one_line_error(code, err, out, f"{weights}: sha256", "does not match", "recorded when it was cached",
                          "delete")


def test_garbage_meta_json_in_the_model_cache(toy_model, tmp_path, capsys, monkeypatch):
    from bench.keys import model_key
    from reliability_helpers import compose

    cache = private_cache(tmp_path / "cache", ("models",))
    meta = cache / "models" / model_key(compose(*TOY, "hydra.mode=RUN")) / "meta.json"
    meta.write_text("{not json")
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", f"cache_dir={cache}")
    assert_one_line_error(code, err, out, f"{meta}: cached model metadata cannot be read", "delete")


def test_model_cached_without_a_checksum_gets_one_recorded(toy_model, tmp_path, capsys, monkeypatch):
    """A cache written before checksums existed is trusted once: its sha256 is recorded (a warning says so) and
    verified on every later load."""
    from bench.keys import model_key
    from bench.utils import file_sha256
    from reliability_helpers import compose

    cache = private_cache(tmp_path / "cache", ("models",))
    d = cache / "models" / model_key(compose(*TOY, "hydra.mode=RUN"))
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "weights_sha256"}))
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", f"cache_dir={cache}")
    assert code == 0, err
    assert json.loads((d / "meta.json").read_text())["weights_sha256"] == file_sha256(d / "model.safetensors")


def test_folder_replaced_under_the_same_path_makes_new_keys(tmp_path):
    """Before: the folder's id, model key and cell key were made of data.path, so new images under the
    same path reused the old model and reference statistics. Now they are made of the folder's content."""
    from PIL import Image

    from bench.data import get_data_info
    from bench.keys import model_key
    from bench.run import cell_key
    from bench.utils import config_hash
    from reliability_helpers import compose

    root = tmp_path / "imgs"

    def fill(seed):
        rng = np.random.default_rng(seed)
        for c in ("a", "b"):
            (root / c).mkdir(parents=True, exist_ok=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / c / f"{i}.png")

    def keys():
        cfg = compose("experiment=smoke", "tracker=none", "data=folder", f"data.path={root}", "data.channels=1")
        return get_data_info(cfg.data).id, model_key(cfg), cell_key(cfg)

    fill(0)
    first = keys()
    old_scheme = config_hash(str(root), n=8)  # what the id was made of before: the path only
    fill(1)  # same names, same sizes, other pixels
    second = keys()
    assert config_hash(str(root), n=8) == old_scheme  # the old key could not see the change
    assert all(a != b for a, b in zip(first, second)), (first, second)
    fill(0)  # the first contents again: the first keys again (content, not mtimes, for a small folder)
    assert keys() == first


def test_pretrained_weights_and_imported_stats_are_keyed_by_content(tmp_path):
    """Before: model.pretrained and metric.reference_stats entered the keys as paths, so new weights (or
    statistics) at the same path skipped the cell as "resume" and gave a fresh run the same keys with another FID."""
    from bench.keys import model_key
    from bench.run import cell_key
    from reliability_helpers import compose

    weights, stats = tmp_path / "pipe", tmp_path / "ref.npz"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"a" * 64)
    stats.write_bytes(b"x" * 64)

    def keys():
        cfg = compose("experiment=smoke", "tracker=none", f"model.pretrained={weights}",
                      f"metric.reference_stats={stats}")
        return model_key(cfg), cell_key(cfg)

    first = keys()
    (weights / "model.safetensors").write_bytes(b"b" * 64)  # same path, same size, other weights
    second = keys()
    assert second[0] != first[0] and second[1] != first[1]
    stats.write_bytes(b"y" * 64)  # same path, other statistics: another cell, the same model
    third = keys()
    assert third[0] == second[0] and third[1] != second[1]


# -------------------------------------------------------- a cell stopped half way; a folder that turns unwritable

class _CrashAfter(torch.nn.Module):
    """Wraps a denoiser; raises from model call `k` on: a crash (not a NaN) after sampling started."""

    def __init__(self, model, k, exc):
        super().__init__()
        self.model, self.k, self.exc, self.calls = model, k, exc, 0

    def forward(self, x, t, class_labels=None):
        self.calls += 1
        if self.calls > self.k:
            raise self.exc
        return self.model(x, t, class_labels=class_labels)


def test_cell_stopped_after_sampling_started_leaves_no_cell_directory(toy_model, tmp_path, capsys, monkeypatch):
    """Sampling is produced in cells/<key>.partial and renamed to cells/<key> only with its metrics.json: a crash
    half way leaves nothing under the cell's own name, and the next run replaces the partial directory."""
    import bench.training

    real = bench.training.load_or_train
    monkeypatch.setattr(bench.training, "load_or_train",
                        lambda cfg: (_CrashAfter(real(cfg)[0], 3, KeyboardInterrupt()), real(cfg)[1]))
    with pytest.raises(KeyboardInterrupt):
        cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", "sampling.num_inference_steps=4")
    cells = tmp_path / "runs" / "toy2d" / "cells"
    assert [p.name.endswith(".partial") for p in cells.iterdir()] == [True]  # only the work directory
    assert not list(cells.rglob("metrics.json")) and not (cells.parent / "results.jsonl").exists()
    monkeypatch.setattr(bench.training, "load_or_train", real)
    code, err, out = cli(tmp_path, capsys, monkeypatch, *TOY, "hydra.mode=RUN", "sampling.num_inference_steps=4")
    assert code == 0, err
    (row,) = rows(out / "toy2d" / "results.jsonl")
    assert [p.name for p in cells.iterdir()] == [row["cell_key"]] and row["cell_dir"] == f"cells/{row['cell_key']}"
    assert json.loads((cells / row["cell_key"] / "metrics.json").read_text())["swd"] == row["swd"]


@pytest.mark.parametrize("errno_name", ["EACCES", "ENOSPC", "EROFS"])
def test_results_folder_unwritable_mid_run(errno_name, toy_model, tmp_path, capsys, monkeypatch):
    """The results file refuses the second cell's row (permissions changed, disk full, read-only remount): one
    `bench: error:` line naming the file, exit 2, the first row intact, and the next run adds only the missing cell.
    (Simulated: these tests may run as root, for whom chmod does not refuse writes.)"""
    import errno

    import bench.results

    real, calls = bench.results.atomic_write_text, []

    def refuse_second(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)), str(path))
        return real(path, text)

    monkeypatch.setattr(bench.results, "atomic_write_text", refuse_second)
    sweep = ["-m", *TOY, "sampler=ddim", "sampling.num_inference_steps=2,3"]
    code, err, out = cli(tmp_path, capsys, monkeypatch, *sweep)
    results = out / "toy2d" / "results.jsonl"
    errors = [line for line in err if line.startswith("bench: error:")]
    assert code == 2 and errors == [err[-1]] and not any("Traceback" in line for line in err), err
    assert f"cannot write {results}" in err[-1] and errno_name in err[-1] and "rows already in results.jsonl are kept" \
        in err[-1], err[-1]
    (first,) = rows(results)
    assert not list((out / "toy2d" / "cells").glob("*.partial"))  # no work directory left behind
    monkeypatch.setattr(bench.results, "atomic_write_text", real)
    code, err, out = cli(tmp_path, capsys, monkeypatch, *sweep)
    assert code == 0, err
    again = rows(results)
    assert len(again) == 2 and again[0] == first  # the finished row untouched, the refused cell done now
