"""Precision/recall and density/coverage: equal to torch-fidelity 0.4.0's prc and prdc 0.2 on the same features,
tiled, with exact duplicates (zero radii) handled as each reference's rule says; wired into the Scorer."""
import contextlib
import io

import numpy as np
import pytest
import torch
from prdc import compute_prdc
from torch_fidelity.metric_prc import calculate_precision_recall_full

from bench.data import build_dataset, get_data_info
from bench.keys import SETTINGS, cell_config
from bench.metrics import prdc as prdc_mod
from bench.metrics.scorer import METRICS, Scorer
from bench.schema import ConfigError, MetricConfig
from bench.validate import check_bounds
from metrics_helpers import batches, compose


def references(real, gen, pr_k=3, dc_k=5):
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        dc = compute_prdc(real, gen, dc_k)
    p, r = calculate_precision_recall_full(torch.from_numpy(gen), torch.from_numpy(real), pr_k, 10000)
    return {"precision": p, "recall": r, "density": dc["density"], "coverage": dc["coverage"]}


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(prdc_mod, "TILE", 97)  # several tiles per side, ragged last tile


def gaussian_sets():
    rng = np.random.default_rng(0)
    return rng.normal(size=(600, 16)), rng.normal(0.3, 1.2, size=(500, 16))


def quantised_sets():
    """Integer features with many exact repeats: every distance is exact in float64 in all three codes, so the
    references see the same zero radii we do."""
    rng = np.random.default_rng(1)
    return rng.integers(0, 3, (600, 5)).astype(np.float64), rng.integers(0, 3, (500, 5)).astype(np.float64)


@pytest.mark.parametrize("sets", [gaussian_sets, quantised_sets])
def test_equal_to_torch_fidelity_and_prdc(sets, small_tiles):
    real, gen = sets()
    ours, ref = prdc_mod.prdc(real, gen), references(real, gen)
    diff = max(abs(ours[k] - ref[k]) for k in ref)
    # torch-fidelity returns float32 means (.item() of a float tensor): equal to 1e-7; prdc's float64: exactly
    assert diff < 1e-7, (ours, ref)
    assert ours["density"] == ref["density"] and ours["coverage"] == ref["coverage"]  # prdc: bit for bit
    assert ours["pr_k"] == 3 and ours["dc_k"] == 5 and ours["prdc_n_gen"] == 500 and ours["prdc_n_ref"] == 600
    if sets is quantised_sets:  # 3^5 = 243 cells for 600 points: many radii are 0, and the rules differ on them
        assert ours["prdc_zero_radii_ref"] > 100 and ours["prdc_zero_radii_gen"] > 50
        assert ours["precision"] == 1.0 and ours["density"] < 1.0  # <= keeps duplicates in a 0-ball, < does not
    else:
        assert ours["prdc_zero_radii_ref"] == ours["prdc_zero_radii_gen"] == 0
        assert 0.2 < ours["precision"] < ours["recall"] < 1.0  # wider generated set: lower precision, high recall


def test_untiled_equals_tiled(small_tiles):
    real, gen = gaussian_sets()
    tiled = prdc_mod.prdc(real, gen, 2, 4)
    prdc_mod.TILE = 10_000
    assert prdc_mod.prdc(real, gen, 2, 4) == tiled


def test_float_duplicates_have_exactly_zero_radii():
    """Repeated non-integer rows (a quantised image seen twice): |x|²+|y|²-2x·y rounds to a tiny nonzero value;
    the duplicate mask makes it 0, so the radius is 0 and the rules act on it as they should."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(100, 32)) * 37.1
    real = np.repeat(base, 4, axis=0)  # 3 other copies: the 3-NN radius is 0, the 5-NN radius is not
    out = prdc_mod.prdc(real, base[:50])
    assert out["prdc_zero_radii_ref"] == 400 and out["prdc_zero_radii_ref_dc"] == 0
    assert out["prdc_zero_radii_gen"] == 0
    assert out["precision"] == 1.0  # each generated point is a copy: inside its copies' zero balls (<=)
    # lower bounds only: a real row whose nearest other row is generated lies exactly on that row's 5-NN sphere,
    # where < decides on the last bit of two matmuls
    assert out["recall"] >= 0.5 and out["coverage"] >= 0.5  # the copies of the 50 generated rows
    assert out["density"] >= 4 / 5  # inside its 4 copies' 5-NN balls (radius > 0: the nearest other row)


def test_refuses_mismatched_features_and_too_few_points():
    with pytest.raises(ValueError, match="one d"):
        prdc_mod.prdc(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="need more than 5 points"):
        prdc_mod.prdc(np.random.default_rng(0).normal(size=(5, 2)), np.zeros((10, 2)))


@pytest.fixture(scope="module")
def digits():
    cfg = compose("data=digits", "sampling.num_samples=300", "metric.prdc=true", "metric.kid=false",
                  "metric.inception_score=false")
    return cfg, get_data_info(cfg.data), build_dataset(cfg.data, "test").x[:300]


def test_scorer_row_on_digits(digits, tmp_path):
    cfg, info, x = digits
    sc = Scorer(cfg, info)
    for b in batches(x):
        sc.update(b)
    row = sc.compute()
    expect = prdc_mod.prdc(sc.ref.features, np.concatenate([b.features() for b in sc.blocks]))
    assert {k: row[k] for k in expect} == expect
    assert row["prdc_n_ref"] == row["n_ref"] == 1437 and row["prdc_n_gen"] == 300 and row["feature_net"] == "digits_cnn"
    # held-out real digits; 300 generated points can hold at most part of 1437 real balls (coverage 0.61)
    assert row["precision"] > 0.85 and row["recall"] > 0.85 and row["coverage"] > 0.5
    noise = Scorer(cfg, info)
    for b in batches(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1):
        noise.update(b)
    bad = noise.compute()
    # noise: measured P 0.197 (outlying real digits have wide balls: the weakness density corrects), R 0.004,
    # D 0.065, C 0.005
    assert bad["precision"] < 0.3 and bad["density"] < bad["precision"] / 2
    assert bad["recall"] < 0.02 and bad["coverage"] < 0.02


def test_keys_off_by_default_leave_the_cell_key(digits):
    cfg, _, _ = digits
    assert "prdc" in cell_config(cfg)["metric"]
    off = compose("data=digits", "sampling.num_samples=300", "metric.kid=false", "metric.inception_score=false")
    new = {k for k, v in SETTINGS["metric"].items() if v.since == 4}
    assert len(new) == 15 and all(SETTINGS["metric"][k].default == getattr(MetricConfig, k) for k in new)
    assert not new & set(cell_config(off)["metric"])
    with pytest.raises(ConfigError, match=r"^metric.pr_k=0 is not allowed: an integer in \[1, inf\)"):
        check_bounds(compose("data=digits", "metric.prdc=true", "metric.pr_k=0"))


def test_a_score_that_would_not_be_computed_is_refused():
    toy = compose("data=toy2d", "metric.prdc=true")
    with pytest.raises(ConfigError, match=r"^metric.prdc=True is not allowed: false here \(data=toy2d is points"):
        METRICS["auto"].check(toy, get_data_info(toy.data))
    none = compose("data=digits", "metric=none", "metric.fd_inf=true")
    with pytest.raises(ConfigError, match=r"^metric.fd_inf=True is not allowed: false here \(metric=none computes"):
        METRICS["none"].check(none, get_data_info(none.data))


def test_seed_blocks_give_the_mean_and_the_spread_over_blocks(tmp_path):
    """metric.repeats=2: each new score is computed per block of N images, as FID is; the row holds the mean, the
    std over the blocks and what that std is over; FD∞'s subset sizes are per block."""
    cfg = compose("data=digits", "sampling.num_samples=150", "metric.repeats=2", "metric.prdc=true",
                  "metric.fd_inf=true", "metric.kid=false", "metric.inception_score=false")
    info = get_data_info(cfg.data)
    x = build_dataset(cfg.data, "test").x[:300]
    sc = Scorer(cfg, info)
    for b in batches(x):
        sc.update(b)
    row = sc.compute()
    per = [prdc_mod.prdc(sc.ref.features, b.features()) for b in sc.blocks]
    for k in ("precision", "recall", "density", "coverage"):
        vals = [p[k] for p in per]
        assert row[k] == pytest.approx(np.mean(vals), abs=1e-15) and row[f"{k}_std"] == pytest.approx(
            np.std(vals, ddof=1), abs=1e-15)
        assert row[f"{k}_std_over"] == "seeds" and row[f"{k}_repeats"] == 2
    assert row["prdc_n_gen"] == 150 and row["fid_n"] == 150 and row["fd_inf_n_max"] == 150
    assert row["fd_inf_n_min"] == 30 and row["fd_inf_std_over"] == "seeds" and row["fd_inf_std"] > 0
    assert row["precision_std"] > 0 and row["prdc_zero_radii_ref"] == per[0]["prdc_zero_radii_ref"]
