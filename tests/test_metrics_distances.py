"""Cross-checks of the metric arithmetic: closed forms, clean-fid and torchmetrics on the same features."""
import numpy as np
import pytest
import torch

from bench.images import quantize_uint8
from bench.metrics import distances, toy
from bench.metrics.stats import FeatureStats


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def test_frechet_closed_form_commuting_gaussians():
    # S1 = Q D1 Q^T, S2 = Q D2 Q^T commute: d² = |mu1 - mu2|² + sum (sqrt(d1) - sqrt(d2))²
    d = 16
    rng = np.random.default_rng(0)
    q = _rotation(d, 1)
    d1, d2 = rng.uniform(0.5, 3, d), rng.uniform(0.1, 2, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    got = distances.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-6)
    assert distances.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)


def test_frechet_closed_form_diagonal():
    # per axis: (m1 - m2)² + (sqrt(v1) - sqrt(v2))²
    got = distances.frechet_distance([1.0, 0.0], np.diag([4.0, 1.0]), [-2.0, 0.5], np.diag([9.0, 0.25]))
    assert got == pytest.approx(9.0 + 1.0 + 0.25 + 0.25, rel=1e-6)


def test_streaming_stats_match_numpy_in_float64():
    rng = np.random.default_rng(0)
    f = 1e4 + rng.standard_normal((1000, 8)) @ rng.standard_normal((8, 8))  # large offset: cancellation-prone
    s = FeatureStats()
    for chunk in np.array_split(f, [1, 7, 300, 301, 999]):
        s.update(chunk)
    assert s.n == 1000
    np.testing.assert_allclose(s.mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)
    assert s.sigma.dtype == np.float64


def test_fid_agrees_with_cleanfid_and_torchmetrics():
    from cleanfid.fid import fid_from_feats
    from torchmetrics.image.fid import FrechetInceptionDistance

    rng = np.random.default_rng(0)
    d = 32
    ref = rng.standard_normal((600, d)) @ rng.standard_normal((d, d)) * 0.3
    gen = rng.standard_normal((400, d)) @ rng.standard_normal((d, d)) * 0.3 + 0.2
    ours_stream = FeatureStats()
    for chunk in np.array_split(gen, 7):
        ours_stream.update(chunk)
    ref_stats = FeatureStats.from_features(ref)
    ours = distances.frechet_distance(ours_stream.mu, ours_stream.sigma, ref_stats.mu, ref_stats.sigma)

    clean = fid_from_feats(gen, ref)
    tm = FrechetInceptionDistance(feature=distances._Precomputed(d))
    tm.update(torch.from_numpy(ref), real=True)
    tm.update(torch.from_numpy(gen), real=False)
    tm_fid = float(tm.compute())
    assert ours > 1.0
    assert ours == pytest.approx(clean, rel=1e-4)
    assert ours == pytest.approx(tm_fid, rel=1e-4)


def test_kid_agrees_with_cleanfid_on_full_subsets():
    from cleanfid.fid import kernel_distance

    rng = np.random.default_rng(1)
    gen, ref = rng.standard_normal((200, 16)), rng.standard_normal((200, 16)) * 1.3 + 0.1
    ours, std, m = distances.kid(gen, ref, subsets=3, subset_size=200)
    np.random.seed(0)  # clean-fid draws subsets from the global numpy RNG; full-size subsets are permutations
    clean = kernel_distance(gen, ref, num_subsets=3, max_subset_size=200)
    assert m == 200
    assert ours == pytest.approx(clean, rel=1e-6)
    assert std == pytest.approx(0, abs=1e-9 * abs(ours))  # every full-size subset gives the same estimate
    assert ours > 0.01


def test_kid_subsets_are_seeded_and_unbiased_near_zero():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((500, 8)), rng.standard_normal((500, 8))
    k1, s1, _ = distances.kid(a, b, subsets=20, subset_size=100, seed=3)
    k2, s2, _ = distances.kid(a, b, subsets=20, subset_size=100, seed=3)
    assert (k1, s1) == (k2, s2)
    assert abs(k1) < 3 * s1 + 1e-3  # same distribution: unbiased estimate around zero
    far, _, _ = distances.kid(a, b + 1.0, subsets=20, subset_size=100)
    assert far > 10 * abs(k1)


def test_inception_score_matches_formula():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 10)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p.mean(0)
    expected = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), axis=1)))
    got, std = distances.inception_score(logits, splits=1)
    assert got == pytest.approx(expected, rel=1e-9)
    # confident and balanced over K classes -> IS = K
    onehot = np.eye(10)[np.arange(1000) % 10] * 50.0
    assert distances.inception_score(onehot, splits=1)[0] == pytest.approx(10.0, rel=1e-6)
    # splits: a seeded permutation, mean and std over splits, each split bounded by K
    got, std = distances.inception_score(onehot, splits=5, seed=1)
    assert (got, std) == distances.inception_score(onehot, splits=5, seed=1)
    assert 9.0 < got < 10.0 and 0 < std < 0.5
    # uninformative -> IS = 1
    assert distances.inception_score(np.zeros((100, 10)), splits=1)[0] == pytest.approx(1.0)


def test_clip_score_formula():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    txt = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    np.testing.assert_allclose(distances.clip_score(img, txt).numpy(), [100.0, 100 / np.sqrt(2), 0.0], rtol=1e-12)


def test_quantize_like_a_png():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 2.0, -1 + 2 * 100.4 / 255])
    assert quantize_uint8(x).tolist() == [0, 0, 128, 255, 255, 100]


def test_sliced_wasserstein_exact_for_a_translation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 2))
    shift = np.array([1.0, -0.5])
    theta = np.random.default_rng(7).standard_normal((64, 2))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    expected = np.mean(np.abs(theta @ shift))  # W1 of a 1-D translation is the shift
    assert toy.sliced_wasserstein(x + shift, x, num_projections=64, seed=7) == pytest.approx(expected, rel=1e-9)
    assert toy.sliced_wasserstein(x, x, 64) == pytest.approx(0.0, abs=1e-12)
    # two independent samples of one Gaussian: small; 2-D E|cos| = 2/pi for the translation
    y = rng.standard_normal((2000, 2))
    assert toy.sliced_wasserstein(x, y, 256) < 0.05
    assert toy.sliced_wasserstein(x + shift, y, 256) == pytest.approx(np.linalg.norm(shift) * 2 / np.pi, rel=0.08)


def test_mmd_rbf_unbiased_and_matches_dense():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 2)), rng.standard_normal((200, 2)) + 0.5
    mmd, h = toy.mmd_rbf(x, y, bandwidth=1.3)
    assert h == 1.3

    def k(a, b):
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * h * h))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    dense = ((kxx.sum() - np.trace(kxx)) / (300 * 299) + (kyy.sum() - np.trace(kyy)) / (200 * 199)
             - 2 * kxy.mean())
    assert mmd == pytest.approx(dense, rel=1e-10)
    same, h2 = toy.mmd_rbf(x, rng.standard_normal((300, 2)))
    assert h2 > 0 and abs(same) < 0.01 < mmd
