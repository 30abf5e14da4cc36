"""Re-scoring without re-sampling (bench.rescore): a finished cell that kept its samples gets a new score without a
single model call, under the cell key a fresh run of that config has, with the numbers a fresh run gives."""
import json

import numpy as np
import pytest

from bench import cell, rescore
from bench.keys import samples_key
from bench.models.unet import UNetDenoiser
from bench.results import ResultsError, read_rows
from bench.schema import ConfigError
from reliability_helpers import DIGITS, compose, trained

pytestmark = pytest.mark.usefixtures("one_thread")
NEW = ("precision", "recall", "density", "coverage")


@pytest.fixture(scope="module")
def digits_model():
    return trained(DIGITS)


@pytest.fixture
def model_calls(monkeypatch):
    """How many times the UNet runs (every sampling step of every batch calls it)."""
    calls = []
    forward = UNetDenoiser.forward
    monkeypatch.setattr(UNetDenoiser, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    return calls


def _cfg(root, *extra):
    return compose(*DIGITS, "hydra.mode=RUN", f"out_dir={root}", "metric.repeats=2", *extra)


@pytest.fixture
def sampled(digits_model, tmp_path):
    """One finished digits cell (2 seed blocks of 24) that kept its samples: (results root, its row)."""
    row = cell.run_cell(_cfg(tmp_path / "runs", "sampling.save_samples=true"))
    return tmp_path / "runs" / "smoke", row


def test_rescoring_calls_no_model_and_equals_a_fresh_run(sampled, tmp_path, model_calls):
    root, row = sampled
    assert row["samples_n"] == 48 and len(row["samples_sha256"]) == 64
    (new,) = rescore.rescore(root, ["metric.prdc=true"])
    assert model_calls == []  # not one UNet call: the kept images were scored
    fresh = cell.run_cell(_cfg(tmp_path / "fresh", "metric.prdc=true"))
    assert len(model_calls) == 2 * 48 // 8  # the fresh run samples: 2 steps x 6 batches of 8
    # the re-scored cell is the fresh cell: one key, one set of numbers (the same uint8 images, the same scorer)
    assert new["cell_key"] == fresh["cell_key"] != row["cell_key"]
    for k in (*NEW, *(f"{m}_std" for m in NEW), "fid", "fid_std", "kid", "is", "prdc_n_gen", "prdc_zero_radii_gen"):
        assert new[k] == fresh[k], k
    assert new["precision_std_over"] == "seeds" and new["precision_repeats"] == 2 and new["prdc_n_gen"] == 24
    assert 0 <= new["precision"] <= 1 and new["precision_std"] > 0
    # the row says which images it scored, and keeps the sampled cell's own columns
    assert new["samples_from"] == row["cell_key"] and new["samples_sha256"] == row["samples_sha256"]
    assert new["samples_key"] == row["samples_key"] == samples_key(_cfg(tmp_path, "metric.prdc=true"))
    assert new["samples_n"] == 48 and new["nfe"] == row["nfe"] and new["model_key"] == row["model_key"]
    assert new["key_settings"]["metric.prdc"] is True and new["fid"] == row["fid"]
    assert "precision" not in row and not (root / new["cell_dir"] / "samples.npz").exists()
    assert json.loads((root / new["cell_dir"] / "metrics.json").read_text()) == new
    # run again: the re-scored cell is finished there (resume), nothing is written
    assert rescore.rescore(root, ["metric.prdc=true"]) == [] and len(read_rows(root)) == 2


def test_images_that_are_not_the_rows_are_refused(sampled):
    root, row = sampled
    path = root / row["cell_dir"] / "samples.npz"
    with np.load(path) as z:
        images = z["images"].copy()
    images[0, 0, 0, 0] ^= 1  # one pixel one level off
    np.savez_compressed(path, images=images)
    with pytest.raises(ResultsError, match="is not the .* its row .* recorded: not the images that row scored"):
        rescore.rescore(root, ["metric.prdc=true"])
    row.pop("samples_sha256")  # a row from before the digest: the images must still reproduce its scores
    (root / "results.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ResultsError, match=r"give fid=.* the row .* holds .*: not the images that row scored"):
        rescore.rescore(root, ["metric.prdc=true"])
    assert len(read_rows(root)) == 1 and not list((root / "cells").glob("*.partial"))


def test_overrides_that_change_the_samples_are_refused(sampled, capsys):
    root, _ = sampled
    with pytest.raises(ConfigError, match=r"^sampling.num_samples=12 is not allowed: metric.KEY=VALUE"):
        rescore.rescore(root, ["sampling.num_samples=12"])
    with pytest.raises(ConfigError, match=r"^metric.repeats=3 is not allowed: 2 \(the sampled cell's\)"):
        rescore.rescore(root, ["metric.repeats=3"])
    assert rescore.main([str(root), "metric.prdc=maybe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: metric.prdc='maybe' is not allowed")
    assert len(read_rows(root)) == 1


def test_a_cell_without_kept_samples_says_how_to_get_them(digits_model, tmp_path):
    cell.run_cell(_cfg(tmp_path / "runs"))
    with pytest.raises(ResultsError, match="no kept samples .* sampling.save_samples=true"):
        rescore.rescore(tmp_path / "runs" / "smoke", ["metric.prdc=true"])
