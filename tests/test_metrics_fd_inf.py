"""FD∞ on Gaussians whose Fréchet distance is known in closed form: the finite-N FD is biased upwards, the
extrapolation removes the bias; seeded; wired into the Scorer for the cell's feature network."""
import numpy as np
import pytest

from bench.data import build_dataset, get_data_info
from bench.metrics.fd_inf import fd_infinity
from bench.metrics.scorer import METRICS, Scorer
from bench.schema import ConfigError
from metrics_helpers import batches, compose

D = 16
VAR_GEN, VAR_REF = np.linspace(0.5, 2.0, D), np.linspace(1.0, 1.5, D)
MU_REF = np.full(D, 0.1)
# diagonal covariances commute: FD = |mu1 - mu2|² + sum(a + b - 2 sqrt(a b))
TRUE_FD = float(np.sum(MU_REF ** 2) + np.sum(VAR_GEN + VAR_REF - 2 * np.sqrt(VAR_GEN * VAR_REF)))


def gaussian_samples(n, seed):
    return np.random.default_rng(seed).normal(size=(n, D)) * np.sqrt(VAR_GEN)


def test_removes_the_finite_n_bias_on_gaussians():
    """20 draws of N = 1000 against the exact reference Gaussian (measured: FD at N is 0.125 ± 0.010 too high,
    FD∞ 0.024 ± 0.014, of a true 0.504)."""
    runs = [fd_infinity(gaussian_samples(1000, 100 + s), MU_REF, np.diag(VAR_REF), seed=s) for s in range(20)]
    inf_err = np.array([r["fd_inf"] for r in runs]) - TRUE_FD
    n_err = np.array([r["fd_inf_fd_at_n"] for r in runs]) - TRUE_FD
    se = inf_err.std(ddof=1) / np.sqrt(len(runs))
    assert n_err.mean() > 0.08  # the bias FD∞ exists to remove
    assert abs(inf_err.mean()) < 3 * se and abs(inf_err.mean()) < n_err.mean() / 3
    r = runs[0]
    assert (r["fd_inf_n_min"], r["fd_inf_n_max"], r["fd_inf_points"]) == (200, 1000, 15) and r["fd_inf_slope"] > 0


def test_seeded_and_linear_in_one_over_n():
    x = gaussian_samples(500, 0)
    a, b = fd_infinity(x, MU_REF, np.diag(VAR_REF), seed=3), fd_infinity(x, MU_REF, np.diag(VAR_REF), seed=3)
    assert a == b and fd_infinity(x, MU_REF, np.diag(VAR_REF), seed=4)["fd_inf"] != a["fd_inf"]
    # the fit's line passes through the FD of all N at 1/N (up to the scatter of the 15 points about it)
    assert a["fd_inf"] + a["fd_inf_slope"] / 500 == pytest.approx(a["fd_inf_fd_at_n"], abs=0.05)
    with pytest.raises(ValueError, match="N=15 is too few"):
        fd_infinity(x[:15], MU_REF, np.diag(VAR_REF))


def test_scorer_row_on_digits():
    cfg = compose("data=digits", "sampling.num_samples=300", "metric.fd_inf=true", "metric.kid=false",
                  "metric.inception_score=false")
    info = get_data_info(cfg.data)
    sc = Scorer(cfg, info)
    for b in batches(build_dataset(cfg.data, "test").x[:300]):
        sc.update(b)
    row = sc.compute()
    assert row["fd_inf_fd_at_n"] == pytest.approx(row["fid"], rel=1e-9)  # the same FD on all 300 images
    assert row["fd_inf"] < row["fid"] and row["fd_inf_n_min"] == 60 and row["feature_net"] == "digits_cnn"
    small = compose("data=digits", "sampling.num_samples=50", "metric.fd_inf=true")
    with pytest.raises(ConfigError, match=r"^metric.fd_inf=True is not allowed: at least 5 x .* = 75 images"):
        METRICS["auto"].check(small, info)
