"""Scorer on digits (offline digits CNN) and toy2d: numbers, provenance, reference registry, uncertainty."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import build_dataset, get_data_info, sample_true
from bench.images import quantize_uint8
from bench.metrics import distances
from bench.metrics.refstats import RefStatsError, load_reference, ref_key
from bench.metrics.scorer import Scorer
from bench.metrics.stats import FeatureStats
from bench.schema import ConfigError
from metrics_helpers import batches, compose


@pytest.fixture(scope="module")
def digits():
    cfg = compose("data=digits", "sampling.num_samples=360", "metric.kid_subset_size=100")
    info = get_data_info(cfg.data)
    test = build_dataset(cfg.data, "test")
    return cfg, info, test.x, test.y


def score(cfg, info, x, labels=None, cell_dir=None):
    sc = Scorer(cfg, info, cell_dir)
    for b in batches(x, labels):
        sc.update(b)
    return sc.compute()


def test_digits_heldout_far_below_noise_with_provenance(digits, tmp_path):
    cfg, info, x, y = digits
    row = score(cfg, info, x, y, tmp_path / "cell")
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    row_noise = score(cfg, info, noise)
    assert row["fid"] < 2.0 and row_noise["fid"] > 20 * row["fid"]
    assert abs(row["kid"]) < 3 * row["kid_std"] + 0.05 and row_noise["kid"] > 0.5
    assert 7.0 < row["is"] <= 10.0 and row_noise["is"] < row["is"]
    for key in ("feature_net", "feature_net_hash", "resize", "ref_id", "ref_hash", "n_ref", "n_gen", "kid_std",
                "is_std", "metric_versions"):
        assert key in row, key
    assert row["feature_net"] == "digits_cnn" and row["quantize"] == "uint8"
    assert row["n_gen"] == 360 and row["n_ref"] == 1437 and row["reference_split"] == "train"
    assert row["feature_net_accuracy"] >= 0.97
    assert set(row["metric_versions"]) >= {"torchmetrics", "cleanfid", "open_clip"}
    json.dumps(row)  # one flat JSON-able row
    # anyone can recompute the FID from files: gen_stats.npz + the cached reference npz
    gen = np.load(tmp_path / "cell" / "gen_stats.npz")
    ref = np.load(Path(Scorer(cfg, info).ref.meta["path"]))  # shipped with bench for the built-in digits
    assert int(gen["n"]) == 360 and gen["sigma"].dtype == np.float64
    assert distances.frechet_distance(gen["mu"], gen["sigma"], ref["mu"], ref["sigma"]) == pytest.approx(row["fid"],
                                                                                                        rel=1e-10)


def test_fid_bias_falls_like_one_over_n(digits):
    """FID of held-out real digits vs the train reference shrinks with N as a + b/N (Chong & Forsyth 2020)."""
    cfg, info, x, _ = digits
    sc = Scorer(cfg, info)
    feats, _ = sc.net(quantize_uint8(x))
    ref = sc.ref
    rng = np.random.default_rng(0)
    ns = np.array([45, 90, 180, 360])
    fids = []
    for n in ns:
        reps = 1 if n == len(x) else 12
        vals = [distances.frechet_distance(*(lambda s: (s.mu, s.sigma))(FeatureStats.from_features(
            feats[rng.choice(len(x), n, replace=False)])), ref.mu, ref.sigma) for _ in range(reps)]
        fids.append(np.mean(vals))
    fids = np.array(fids)
    assert np.all(np.diff(fids) < 0), fids
    design = np.stack([np.ones(len(ns)), 1.0 / ns], 1)
    (a, b), *_ = np.linalg.lstsq(design, fids, rcond=None)
    pred = design @ np.array([a, b])
    r2 = 1 - np.sum((fids - pred) ** 2) / np.sum((fids - fids.mean()) ** 2)
    assert b > 0 and r2 > 0.95, (fids, a, b, r2)
    assert fids[0] > 3 * fids[-1]


def test_reference_registry_cached_verified_and_mismatch_is_an_error(digits, tmp_path):
    cfg, info, x, y = digits
    sc = Scorer(cfg, info)
    path = Path(sc.ref.meta["path"])
    mtime = path.stat().st_mtime_ns
    assert Scorer(cfg, info).ref.meta["ref_hash"] == sc.ref.meta["ref_hash"] and path.stat().st_mtime_ns == mtime
    key = ref_key(info, "train", sc.net, 0)
    # another resize (or network) than the file was made with: a clear error, not a silent recompute
    with pytest.raises(RefStatsError, match="resize"):
        load_reference(path, dict(key, resize="bilinear 16x16->8x8"))
    with pytest.raises(RefStatsError, match="feature_net_hash"):
        load_reference(path, dict(key, feature_net_hash="0" * 16))
    bad = tmp_path / path.name
    shutil.copy(path, bad)
    shutil.copy(path.with_suffix(".json"), bad.with_suffix(".json"))
    with open(bad, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(RefStatsError, match="sha256"):
        load_reference(bad, key)
    with pytest.raises(ConfigError, match="metric.num_reference"):
        Scorer(compose("data=digits", "metric.num_reference=5000"), info)
    with pytest.raises(ConfigError, match="metric.reference_split"):
        Scorer(compose("data=digits", "metric.reference_split=val"), info)


def test_held_out_reference_split_and_capped_n(digits):
    cfg, info, x, y = digits
    row_test = score(compose("data=digits", "sampling.num_samples=360", "metric.reference_split=test",
                             "metric.kid_subset_size=100"), info, x)
    assert row_test["reference_split"] == "test" and row_test["n_ref"] == 360
    assert row_test["fid"] == pytest.approx(0.0, abs=1e-6)  # the same images
    row_cap = score(compose("data=digits", "sampling.num_samples=360", "metric.num_reference=500",
                            "metric.kid_subset_size=100"), info, x)
    assert row_cap["n_ref"] == 500 and row_cap["ref_id"] != row_test["ref_id"]


def test_imported_reference_stats(digits, tmp_path):
    cfg, info, x, y = digits
    base = score(compose("data=digits", "sampling.num_samples=360", "metric.reference_split=test",
                         "metric.kid_subset_size=100"), info, x[:200])
    # ADM-style reference batch: uint8 NHWC images in arr_0 -> features through the run's network
    adm = tmp_path / "ref_batch.npz"
    np.savez(adm, arr_0=quantize_uint8(x).permute(0, 2, 3, 1).numpy())
    row = score(compose("data=digits", "sampling.num_samples=360", f"metric.reference_stats={adm}",
                        "metric.kid_subset_size=100"), info, x[:200])
    assert row["ref_id"] == "import:ref_batch.npz" and row["n_ref"] == 360 and len(row["ref_hash"]) == 16
    assert row["fid"] == pytest.approx(base["fid"], rel=1e-6) and row["kid"] == pytest.approx(base["kid"], rel=1e-6)
    # clean-fid / pytorch-fid style mu/sigma: Inception statistics by convention -> refused with digits_cnn ...
    sc = Scorer(cfg, info)
    stats = FeatureStats.from_features(sc.net(quantize_uint8(x))[0])
    mus = tmp_path / "mu_sigma.npz"
    np.savez(mus, mu=stats.mu, sigma=stats.sigma)
    with pytest.raises(RefStatsError, match="feature_net=digits_cnn"):
        Scorer(compose("data=digits", f"metric.reference_stats={mus}"), info)
    # ... unless the file declares its network; then no features -> FID only, KID skipped with a reason
    (tmp_path / "mu_sigma.npz.json").write_text(json.dumps({"feature_net": "digits_cnn"}))
    row = score(compose("data=digits", "sampling.num_samples=360", f"metric.reference_stats={mus}"), info, x[:200])
    assert row["fid"] == pytest.approx(base["fid"], rel=1e-6) and "kid" not in row and "kid_skipped" in row
    with pytest.raises(ConfigError, match="metric.reference_stats"):
        Scorer(compose("data=digits", f"metric.reference_stats={tmp_path / 'missing.npz'}"), info)


def test_repeats_and_bootstrap_give_spread(digits):
    cfg, info, x, y = digits
    # the runner samples repeats x num_samples images; block r = images [r N, (r + 1) N)
    row = score(compose("data=digits", "sampling.num_samples=120", "metric.repeats=3", "metric.kid_subset_size=100"),
                info, x)
    assert row["fid_repeats"] == 3 and row["fid_n"] == 120 and row["fid_std"] > 0 and row["n_gen"] == 360
    # KID and IS follow the same seed blocks: their ± is a spread over seeds, and the row says so
    assert row["kid_repeats"] == 3 and row["kid_std_over"] == "seeds" and row["kid_std"] > 0
    assert row["is_repeats"] == 3 and row["is_std_over"] == "seeds" and row["fid_std_over"] == "seeds"
    per_block_is = [distances.inception_score(Scorer(cfg, info).net(quantize_uint8(x[i * 120:(i + 1) * 120]))[1],
                                              splits=1)[0] for i in range(3)]
    assert row["is"] == pytest.approx(np.mean(per_block_is), rel=1e-9) and row["is_splits"] == 1
    boot = score(compose("data=digits", "sampling.num_samples=360", "metric.bootstrap=20",
                         "metric.kid_subset_size=100"), info, x)
    assert boot["fid_bootstrap"] == 20 and boot["fid_std"] > 0
    assert boot["fid_ci_low"] < boot["fid_ci_high"] and boot["fid_std_over"] == "bootstrap"
    assert boot["kid_std_over"] == "subsets"  # one seed block: KID's std is torchmetrics' subset spread


def test_inception_score_is_the_whole_set_value_below_two_splits_of_5000(digits):
    """Ten splits of 36 images bias IS low; below 2 x 5000 images IS is computed on the whole set."""
    cfg, info, x, y = digits
    row = score(cfg, info, x)
    logits = Scorer(cfg, info).net(quantize_uint8(x))[1]
    whole, _ = distances.inception_score(logits, splits=1)
    ten, _ = distances.inception_score(logits, splits=10)
    assert row["is_splits"] == 1 and row["is"] == pytest.approx(whole, rel=1e-9) and row["is_std_over"] == "none"
    assert ten < whole  # the bias the rule avoids


def test_metric_none_and_clip_score_needs_captions(digits):
    cfg, info, x, y = digits
    assert score(compose("data=digits", "metric=none"), info, x[:10]) == {"n_gen": 10}
    with pytest.raises(ConfigError, match="metric.clip_score"):
        Scorer(compose("data=digits", "metric.clip_score=true"), info)


def test_toy2d_scores_against_true_sampler(tmp_path):
    cfg = compose("data=toy2d", "model=mlp", "metric.toy_num_reference=3000", "metric.swd_projections=64")
    info = get_data_info(cfg.data)
    good = torch.from_numpy(sample_true(cfg.data, 2000, seed=123)).float()
    row = score(cfg, info, good, cell_dir=tmp_path)
    bad = score(cfg, info, good * 1.5 + 0.3)
    assert row["swd"] < 0.05 and bad["swd"] > 5 * row["swd"]
    assert abs(row["mmd"]) < 0.005 < bad["mmd"]
    assert row["mmd_bandwidth"] > 0 and row["mmd_bandwidth_rule"] == "median"
    assert row["n_gen"] == 2000 and row["n_ref"] == 3000 and (tmp_path / "gen_stats.npz").exists()
    fixed = score(compose("data=toy2d", "model=mlp", "metric.toy_num_reference=3000", "metric.mmd_bandwidth=0.5"),
                  info, good)
    assert fixed["mmd_bandwidth"] == 0.5 and fixed["mmd_bandwidth_rule"] == "fixed"
