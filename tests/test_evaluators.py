"""Feature networks: offline digits CNN and tiny CLIP (trained once, cached), Inception-v3 loading path."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from bench.data import build_dataset, get_data_info
from bench.evaluators import EvaluatorError, resolve_feature_net
from bench.images import quantize_uint8
from bench.metrics import distances
from bench.metrics.scorer import Scorer
from bench.schema import ConfigError
from metrics_helpers import batches, compose


@pytest.fixture(scope="module")
def shapes():
    cfg = compose("data=shapes", "sampling.num_samples=480", "metric.kid_subset_size=100")
    info = get_data_info(cfg.data)
    test = build_dataset(cfg.data, "test")
    return cfg, info, test.x[:480], test.y[:480]


@pytest.fixture(scope="module")
def clip_net(shapes):
    from bench.evaluators.clip import load_clip

    cfg, info, _, _ = shapes
    return load_clip(cfg, info)


def test_digits_cnn_held_out_accuracy():
    from bench.evaluators.digits_cnn import load_digits_cnn

    cfg = compose("data=digits")
    net = load_digits_cnn(cfg, get_data_info(cfg.data))
    test = build_dataset(cfg.data, "test")
    feats, logits = net(quantize_uint8(test.x))
    acc = float((logits.argmax(1) == test.y).float().mean())
    assert acc >= 0.97 and net.meta["test_accuracy"] == pytest.approx(acc, abs=1e-6)
    assert feats.shape == (len(test), 64) and len(net.weights_hash) == 16 and net.resize == "none (8x8)"
    # IS of real held-out digits is bounded by the 10 classes
    is_mean, _ = distances.inception_score(logits, splits=1)
    assert 8.0 < is_mean <= 10.0
    # digits at another resolution are resized to the CNN's 8x8, and that is recorded
    big = compose("data=digits", "data.image_size=16")
    net16 = load_digits_cnn(big, get_data_info(big.data))
    assert net16.weights_hash == net.weights_hash and "16x16->8x8" in net16.resize


def test_feature_net_choice():
    assert resolve_feature_net(compose("data=digits")) == "digits_cnn"
    assert resolve_feature_net(compose("data=shapes")) == "clip"
    assert resolve_feature_net(compose("data=digits", "metric=inception")) == "inception"
    with pytest.raises(ConfigError, match="metric.feature_net"):
        resolve_feature_net(compose("data=shapes", "metric.feature_net=digits_cnn"))


def test_inception_missing_weights_is_one_clear_error(monkeypatch):
    from bench.evaluators.inception import OFFICIAL_FILE, OFFICIAL_SHA256, load_inception

    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(EvaluatorError) as err:
        load_inception(compose("data=digits", "metric=inception"))
    msg = str(err.value)
    assert "\n" not in msg
    for needed in (OFFICIAL_FILE, OFFICIAL_SHA256, "metric.inception_weights=", "BENCH_INCEPTION_WEIGHTS="):
        assert needed in msg


def test_inception_loads_local_weights_with_checksum(tmp_path, monkeypatch):
    """The loading path, with a randomly initialised network saved locally (its 'FID' means nothing)."""
    from bench.evaluators.inception import load_inception, save_random_inception_weights

    path = tmp_path / "random_inception.pth"
    digest = save_random_inception_weights(path, seed=0)
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(path))
    with pytest.raises(EvaluatorError, match=f"metric.inception_sha256={digest}"):
        load_inception(compose("data=digits", "metric=inception"))  # not the official file
    net = load_inception(compose("data=digits", "metric=inception", f"metric.inception_sha256={digest}"))
    assert net.name == "inception-custom" and net.weights_hash == digest[:16] and "299" in net.resize
    feats, logits = net(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008) and torch.isfinite(feats).all()
    with pytest.raises(EvaluatorError, match="sha256"):
        load_inception(compose("data=digits", "metric=inception", f"metric.inception_weights={path}",
                               "metric.inception_sha256=" + "0" * 64))


def test_offline_clip_retrieval_accuracy(shapes, clip_net):
    from bench.evaluators.clip import MIN_RETRIEVAL, _shapes_cfg, retrieval_accuracy

    cfg, info, _, _ = shapes
    acc = retrieval_accuracy(clip_net, _shapes_cfg(cfg.data), "test")
    assert acc >= MIN_RETRIEVAL and clip_net.meta["test_retrieval_top1"] == pytest.approx(acc)
    assert acc > 10 / 48  # far above chance


def test_clip_score_matching_beats_mismatched(shapes, clip_net):
    cfg, info, x, y = shapes
    u8 = quantize_uint8(x)
    img = clip_net.encode_image(u8)
    text = clip_net.encode_text(info.class_names)
    match = distances.clip_score(img, text[y]).mean()
    wrong = distances.clip_score(img, text[(y + 1 + torch.arange(len(y)) % 47) % 48]).mean()
    assert match > wrong + 10, (float(match), float(wrong))


def test_shapes_scorer_fid_kid_is_and_clip_score(shapes, tmp_path):
    cfg, info, x, y = shapes
    sc = Scorer(cfg, info, tmp_path)
    for b in batches(x, y):
        sc.update(b)
    row = sc.compute()
    assert row["feature_net"] == "clip" and row["n_gen"] == 480 and row["ref_id"].startswith("shapes-16px")
    assert row["fid"] < 5 and row["is"] > 20 and row["clip_score"] > 0
    shuffled = Scorer(cfg, info)
    for b in batches(x, (y + 7) % 48):
        shuffled.update(b)
    bad = shuffled.compute()
    assert bad["clip_score"] < row["clip_score"] - 10 and bad["fid"] == pytest.approx(row["fid"])
    noise = Scorer(cfg, info)
    for b in batches(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1, y):
        noise.update(b)
    assert noise.compute()["fid"] > 10 * row["fid"]


def test_open_clip_model_without_checkpoint_is_a_clear_error(shapes):
    from bench.evaluators.clip import load_clip

    cfg, info, _, _ = shapes
    with pytest.raises(EvaluatorError, match="metric.clip_pretrained"):
        load_clip(compose("data=shapes", "metric.clip_model=ViT-B-32"), info)
    with pytest.raises(EvaluatorError, match="not an open_clip model"):
        load_clip(compose("data=shapes", "metric.clip_model=ViT-nope"), info)
    with pytest.raises(EvaluatorError, match="could not be loaded"):
        load_clip(compose("data=shapes", "metric.clip_model=ViT-B-32", "metric.clip_pretrained=/nonexistent/x.bin"),
                  info)


def test_shipped_evaluators_are_pinned_and_load_without_training(monkeypatch, tmp_path):
    """The frozen evaluators ship in the package: their sha256 is pinned, and loading them never trains."""
    from omegaconf import OmegaConf

    from bench import evaluators
    from bench.evaluators import PINNED_SHA256, SHIPPED, digits_cnn
    from bench.evaluators.clip import load_offline_clip
    from bench.schema import DataConfig
    from bench.utils import file_sha256

    assert PINNED_SHA256["digits_cnn-ff8f887cde6bdaaf"].startswith("6745630043570243")
    for name, digest in PINNED_SHA256.items():
        (weights,) = [p for p in (SHIPPED / name).glob("*.safetensors")]
        assert file_sha256(weights) == digest, name

    def no_training(*a, **k):
        raise AssertionError("a shipped evaluator was retrained")

    monkeypatch.setattr(digits_cnn, "train_digits_cnn", no_training)
    monkeypatch.setattr("bench.evaluators.clip.train_offline_clip", no_training)
    cfg = OmegaConf.create({"cache_dir": str(tmp_path), "data": OmegaConf.structured(DataConfig(name="digits"))})
    net = digits_cnn.load_digits_cnn(cfg)
    assert net.weights_hash == "6745630043570243" and net.meta["test_accuracy"] > 0.98
    assert net.meta["path"] == str(SHIPPED / "digits_cnn-ff8f887cde6bdaaf") and not (tmp_path / "evaluators").exists()
    clip = load_offline_clip(OmegaConf.create({"cache_dir": str(tmp_path), "data": OmegaConf.structured(
        DataConfig(name="shapes", image_size=16, channels=3))}))
    assert clip.weights_hash == PINNED_SHA256["tiny_clip-4f3496fabba231ed"][:16]

    # a shipped file replaced together with its meta.json is still caught by the pin
    fake = tmp_path / "shipped"
    shutil.copytree(SHIPPED / "digits_cnn-ff8f887cde6bdaaf", fake / "digits_cnn-ff8f887cde6bdaaf")
    w = fake / "digits_cnn-ff8f887cde6bdaaf" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-100:] = bytes(100)
    w.write_bytes(bytes(data))
    meta = json.loads((w.parent / "meta.json").read_text())
    (w.parent / "meta.json").write_text(json.dumps(dict(meta, weights_sha256=file_sha256(w))))
    monkeypatch.setattr(evaluators.common, "SHIPPED", fake)  # where find_evaluator and verified_meta read it
    with pytest.raises(evaluators.EvaluatorError, match="bench pins 6745630043570243"):
        digits_cnn.load_digits_cnn(cfg)


def test_shipped_reference_statistics_are_used_for_builtin_digits(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    import bench.metrics.refstats as refstats
    from bench.data import get_data_info
    from bench.evaluators import SHIPPED
    from bench.evaluators.digits_cnn import load_digits_cnn
    from bench.schema import DataConfig, MetricConfig

    monkeypatch.setattr(refstats, "compute_reference",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("computed")))
    cfg = OmegaConf.create({"cache_dir": str(tmp_path), "data": OmegaConf.structured(DataConfig(name="digits")),
                            "metric": OmegaConf.structured(MetricConfig(name="auto"))})
    info = get_data_info(cfg.data)
    ref = refstats.get_reference(cfg, info, load_digits_cnn(cfg, info))
    assert ref.meta["source"] == "shipped" and ref.n == 1437 and ref.mu.shape == (64,)
    assert ref.meta["path"].startswith(str(SHIPPED))


def test_bench_evaluator_list_names_the_pinned_files():
    p = subprocess.run([sys.executable, "-m", "bench.evaluators.cli", "list"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert "digits_cnn-ff8f887cde6bdaaf: sha256 6745630043570243… (ok)" in p.stdout
    assert "refstats/digits-8px-c1-train-digits_cnn-nall-" in p.stdout


def test_a_split_without_a_shipped_evaluator_trains_and_caches_one(tmp_path):
    """Another split convention has no shipped network: it is trained once (seeded, one thread) and cached."""
    from omegaconf import OmegaConf

    from bench.evaluators.digits_cnn import load_digits_cnn
    from bench.schema import DataConfig

    cfg = OmegaConf.create({"cache_dir": str(tmp_path),
                            "data": OmegaConf.structured(DataConfig(name="digits", split_seed=1))})
    net = load_digits_cnn(cfg)
    assert net.meta["path"].startswith(str(tmp_path / "evaluators" / "digits_cnn-"))
    assert net.meta["test_accuracy"] >= 0.97 and net.weights_hash != "6745630043570243"
    assert load_digits_cnn(cfg).weights_hash == net.weights_hash  # the cached copy, not a second training
