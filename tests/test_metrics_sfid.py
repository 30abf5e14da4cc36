"""sFID wiring with a random-weight Inception-v3 saved locally (no weights can be fetched; its numbers mean
nothing, the layer, the channels, the layout and the row are what is tested)."""
import numpy as np
import pytest
import torch

from bench.data import build_dataset, get_data_info
from bench.evaluators.inception import load_inception_spatial, save_random_inception_weights
from bench.images import quantize_uint8
from bench.metrics import distances
from bench.metrics.refstats import get_reference
from bench.metrics.scorer import METRICS, Scorer
from bench.metrics.stats import FeatureStats
from bench.schema import ConfigError
from metrics_helpers import batches, compose


def net_feats(net, x):
    return np.concatenate([net(quantize_uint8(x[s:s + 6]))[0].numpy() for s in range(0, len(x), 6)])  # as scored


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    return path, save_random_inception_weights(path, seed=0)


def overrides(random_inception, tmp_path):
    path, digest = random_inception
    return ("data=digits", "sampling.num_samples=12", "metric.sfid=true", "metric.kid=false",
            "metric.inception_score=false", "metric.num_reference=12", f"metric.inception_weights={path}",
            f"metric.inception_sha256={digest}", f"cache_dir={tmp_path}")


def test_features_are_mixed_6d_branch1x1_first_7_channels_nhwc(random_inception, tmp_path):
    net = load_inception_spatial(compose(*overrides(random_inception, tmp_path)))
    x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    seen = {}
    pre = net.model.Mixed_6d.register_forward_pre_hook(lambda m, inp: seen.setdefault("in", inp[0]))
    feats, logits = net(x)
    pre.remove()
    conv = net.model.Mixed_6d.branch1x1(seen["in"])  # 2 x 192 x 17 x 17
    assert conv.shape == (2, 192, 17, 17) and feats.shape == (2, 2023) and logits is None and net.dim == 2023
    h, w, c = 5, 11, 6
    assert feats[1, (h * 17 + w) * 7 + c] == conv[1, c, h, w]  # TF's NHWC flattening, as ADM's evaluator
    assert torch.equal(feats.view(2, 17, 17, 7).permute(0, 3, 1, 2), conv[:, :7])
    assert net.name == "inception-custom-mixed_6-conv" and "299" in net.resize


def test_scorer_row(random_inception, tmp_path, monkeypatch):
    # the Fréchet distances the scorer asks for, answered by a stand-in (scipy's sqrtm of a 2023-d product takes a
    # minute on one core; the distance itself is tested in test_metrics_distances)
    calls = []
    monkeypatch.setattr(distances, "frechet_distance", lambda *a: calls.append((a, 100.0 + len(calls))) or
                        calls[-1][1])
    cfg = compose(*overrides(random_inception, tmp_path))
    info = get_data_info(cfg.data)
    METRICS["auto"].check(cfg, info)
    sc = Scorer(cfg, info)
    x = build_dataset(cfg.data, "test").x[:12]
    for b in batches(x, batch_size=6):
        sc.update(b)
    row = sc.compute()
    gen = sc.own_space_features("sfid")
    ref = get_reference(cfg, info, sc.score_nets["sfid"])
    s = FeatureStats.from_features(gen)
    assert np.array_equal(gen, net_feats(sc.score_nets["sfid"], x))
    ((mu, sigma, ref_mu, ref_sigma), value), = [c for c in calls if np.shape(c[0][0]) == (2023,)]
    assert row["sfid"] == value
    assert np.array_equal(mu, s.mu) and np.array_equal(sigma, s.sigma)
    assert np.array_equal(ref_mu, ref.mu) and np.array_equal(ref_sigma, ref.sigma) and ref.n == 12
    assert row["sfid_dim"] == 2023 and row["sfid_n_gen"] == 12 and row["sfid_n_ref"] == 12 and row["sfid"] > 0
    assert row["sfid_net"] == "inception-custom-mixed_6-conv" and row["sfid_net_hash"] == random_inception[1][:16]
    assert row["feature_net"] == "digits_cnn" and "fid" in row  # the cell's own FID is untouched
    missing = compose("data=digits", "metric.sfid=true", "metric.inception_weights=/nonexistent.pth")
    with pytest.raises(ConfigError, match=r"^metric.inception_weights='/nonexistent.pth' is not allowed"):
        METRICS["auto"].check(missing, info)
