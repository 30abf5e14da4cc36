"""CMMD: zero on equal sets, equal to google-research's distance.py formula written out in full, its first-order
relation to the mean difference, unit embeddings whatever their scale; the Scorer on shapes (offline CLIP) and
the open_clip loading path with a tiny random-weight model saved to a file."""
import json

import numpy as np
import pytest
import torch

from bench.data import build_dataset, get_data_info
from bench.evaluators import EvaluatorError
from bench.evaluators.clip import load_cmmd_clip
from bench.metrics import cmmd as cmmd_mod
from bench.metrics.cmmd import cmmd
from bench.metrics.scorer import METRICS, Scorer
from bench.schema import ConfigError
from bench.utils import file_sha256
from metrics_helpers import batches, compose


def direct(x, y, sigma=10.0, scale=1000.0):
    """google-research cmmd/distance.py ``mmd`` on L2-normalised embeddings, full matrices, float64."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    xx, yy = np.diag(x @ x.T), np.diag(y @ y.T)
    gamma = 1 / (2 * sigma ** 2)
    k_xx = np.mean(np.exp(-gamma * (-2 * x @ x.T + xx[:, None] + xx[None, :])))
    k_xy = np.mean(np.exp(-gamma * (-2 * x @ y.T + xx[:, None] + yy[None, :])))
    k_yy = np.mean(np.exp(-gamma * (-2 * y @ y.T + yy[:, None] + yy[None, :])))
    return scale * (k_xx + k_yy - 2 * k_xy)


def embeddings(n, shift, seed, d=32):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) + shift * np.eye(d)[0]


def test_zero_on_equal_sets_and_equal_to_the_formula(monkeypatch):
    monkeypatch.setattr(cmmd_mod, "TILE", 70)  # ragged tiles on both sides
    x, y = embeddings(300, 0.0, 0), embeddings(250, 0.7, 1)
    assert abs(cmmd(x, x)) < 1e-12  # zero up to the rounding of two summation orders (symmetric, full)
    ours, ref = cmmd(x, y), direct(x, y)
    assert ours == pytest.approx(ref, rel=1e-11, abs=1e-12) and ours > 0.1
    assert cmmd(x, y, sigma=3.0) == pytest.approx(direct(x, y, sigma=3.0), rel=1e-11)


def test_unit_vectors_whatever_the_scale():
    """The harness's CLIP features are sqrt(d)-scaled unit vectors: CMMD normalises them again."""
    x, y = embeddings(200, 0.0, 0), embeddings(200, 0.5, 1)
    assert cmmd(np.sqrt(32) * x / np.linalg.norm(x, axis=1, keepdims=True), 3.7 * y) == pytest.approx(cmmd(x, y),
                                                                                                      rel=1e-12)


@pytest.mark.parametrize("sigma,tol", [(10.0, 0.02), (100.0, 2e-4)])
def test_first_order_mean_difference(sigma, tol):
    """exp(-|a-b|²/2σ²) = 1 - |a-b|²/2σ² + O(σ⁻⁴); with the V-statistic the quadratic terms leave exactly
    |mean(x) - mean(y)|², so CMMD = 1000 |mean(x) - mean(y)|² / σ² up to a relative O(|a-b|²/σ²) <= O(4/σ²)."""
    x, y = embeddings(400, 0.0, 0), embeddings(400, 1.0, 1)
    ux = x / np.linalg.norm(x, axis=1, keepdims=True)
    uy = y / np.linalg.norm(y, axis=1, keepdims=True)
    first = 1000 * np.sum((ux.mean(0) - uy.mean(0)) ** 2) / sigma ** 2
    assert cmmd(x, y, sigma) == pytest.approx(first, rel=tol)
    assert abs(cmmd(x, y, sigma) / first - 1) > tol / 100  # the relation is first order, not exact


@pytest.fixture(scope="module")
def shapes():
    cfg = compose("data=shapes", "sampling.num_samples=240", "metric.cmmd=true", "metric.kid=false",
                  "metric.inception_score=false", "metric.num_reference=600")
    return cfg, get_data_info(cfg.data), build_dataset(cfg.data, "test").x[:240]


def score(cfg, info, x):
    sc = Scorer(cfg, info)
    for b in batches(x):
        sc.update(b)
    return sc, sc.compute()


def test_scorer_on_shapes_uses_the_offline_clip_unit_embeddings(shapes):
    cfg, info, x = shapes
    sc, row = score(cfg, info, x)
    assert sc.score_nets["cmmd"] is sc.net and not sc.score_feats  # one CLIP pass serves FID and CMMD
    gen = np.concatenate([b.features() for b in sc.blocks])
    assert row["cmmd"] == pytest.approx(direct(sc.ref.features.astype(np.float64), gen.astype(np.float64)),
                                        rel=1e-9)
    assert row["cmmd_sigma"] == 10.0 and row["cmmd_scale"] == 1000.0 and row["cmmd_n_ref"] == 600
    assert row["cmmd_n_gen"] == 240 and row["cmmd_net"] == "offline-tiny-clip" and row["cmmd_ref_id"] == row["ref_id"]
    _, noise = score(cfg, info, torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert noise["cmmd"] > 20 * row["cmmd"]


def tiny_open_clip(tmp_path):
    """A 2-layer random-weight ViT CLIP registered with open_clip under a name of its own, saved as a checkpoint."""
    import open_clip

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "patch_size": 8, "layers": 1, "width": 32,
                                           "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "bench-tiny-cmmd-vit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "bench-tiny-cmmd-vit.json")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("bench-tiny-cmmd-vit").state_dict(), tmp_path / "tiny.pt")
    return tmp_path / "tiny.pt"


def test_open_clip_from_a_local_file_on_other_data(tmp_path):
    weights = tiny_open_clip(tmp_path)
    over = ("data=digits", "sampling.num_samples=100", "metric.cmmd=true", "metric.fid=false", "metric.kid=false",
            "metric.inception_score=false", f"cache_dir={tmp_path / 'cache'}", "metric.num_reference=200")
    missing = compose(*over)
    with pytest.raises(ConfigError, match=r"^metric.cmmd_clip_weights=None is not allowed: .*ViT-L-14-336.*not set"):
        METRICS["auto"].check(missing, get_data_info(missing.data))
    with pytest.raises(EvaluatorError, match="cannot download"):
        load_cmmd_clip(missing)
    cfg = compose(*over, "metric.cmmd_clip_model=bench-tiny-cmmd-vit", f"metric.cmmd_clip_weights={weights}")
    info = get_data_info(cfg.data)
    METRICS["auto"].check(cfg, info)
    x = build_dataset(cfg.data, "test").x[:100]
    sc, row = score(cfg, info, x)
    assert sc.score_nets["cmmd"] is not sc.net and len(sc.own_space_features("cmmd")) == 100
    assert row["cmmd_net"] == "bench-tiny-cmmd-vit" and row["cmmd_net_hash"] == file_sha256(weights)[:16]
    assert row["cmmd_n_ref"] == 200 and row["cmmd"] > 0 and "fid" not in row
    # the same numbers from the embeddings themselves
    net = load_cmmd_clip(cfg)
    from bench.images import quantize_uint8
    from bench.metrics.refstats import get_reference
    assert row["cmmd"] == pytest.approx(cmmd(get_reference(cfg, info, net).features, net(quantize_uint8(x))[0]),
                                        rel=1e-6)


def test_sharded_cell_hands_the_score_features_back(tmp_path):
    """A sharded cell saves what measure() returns and add()s it back (bench.distributed): a score in its own
    feature space arrives whole, and the row equals the one-process row."""
    weights = tiny_open_clip(tmp_path)
    cfg = compose("data=digits", "sampling.num_samples=40", "metric.cmmd=true", "metric.kid=false",
                  "metric.inception_score=false", "metric.num_reference=100", f"cache_dir={tmp_path / 'cache'}",
                  "metric.cmmd_clip_model=bench-tiny-cmmd-vit", f"metric.cmmd_clip_weights={weights}")
    info = get_data_info(cfg.data)
    x = build_dataset(cfg.data, "test").x[:40]
    _, whole = score(cfg, info, x)
    sharded = Scorer(cfg, info)
    for i, b in enumerate(batches(x, batch_size=20)):
        np.savez(tmp_path / f"shard{i}.npz", index=b.index.numpy(), x=b.x.numpy(), **sharded.measure(b))
    assert "cmmd" in sharded.measured
    for i in range(2):
        with np.load(tmp_path / f"shard{i}.npz") as d:
            sharded.add(d["index"], **{k: d[k] for k in sharded.measured if k in d})
    row = sharded.compute()
    assert row["cmmd"] == whole["cmmd"] and row["cmmd_n_gen"] == 40 and row["fid"] == whole["fid"]
