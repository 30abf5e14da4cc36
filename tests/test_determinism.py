"""Same config + seed -> identical samples and scores (CPU); sample i does not depend on the batch size; the
`sampling.deterministic` switch. GPU caveats are documented in docs/reliability.md ("Determinism")."""
import numpy as np
import pytest
import torch

from reliability_helpers import DIGITS, TOY, compose, trained

pytestmark = pytest.mark.usefixtures("one_thread")
SCORES = ("swd", "mmd", "fid", "kid", "kid_std", "is", "is_std", "nfe")


@pytest.fixture(scope="module")
def toy_model():
    return trained(TOY)


@pytest.fixture(scope="module")
def digits_model():
    return trained(DIGITS)


def _cell(root, *overrides):
    """One cell through cell.run_cell (what `bench` runs per Hydra job); returns (row, samples array)."""
    from bench import cell

    cfg = compose(*overrides, "hydra.mode=RUN", "sampling.save_samples=true", f"out_dir={root}")
    row = cell.run_cell(cfg)
    with np.load(root / cfg.name / row["cell_dir"] / "samples.npz") as z:
        return row, z[z.files[0]]


@pytest.mark.parametrize("sampler", ["ddpm", "heun", "dpmpp"])
def test_toy2d_same_config_same_samples_and_scores(sampler, toy_model, tmp_path):
    a, xa = _cell(tmp_path / "a", *TOY, f"sampler={sampler}", "sampling.num_inference_steps=4")
    b, xb = _cell(tmp_path / "b", *TOY, f"sampler={sampler}", "sampling.num_inference_steps=4")
    c, xc = _cell(tmp_path / "c", *TOY, f"sampler={sampler}", "sampling.num_inference_steps=4",
                  "sampling.batch_size=7")  # sample i is seeded by seed + i, whatever batch it falls in
    assert a["cell_key"] == b["cell_key"] == c["cell_key"]
    assert np.array_equal(xa, xb)  # bit for bit
    for m in ("swd", "mmd", "nfe"):
        assert a[m] == b[m], m
    # another batch size: the same noise, but a batched GEMM of other shape rounds differently in the last bit of
    # float32 (BLAS kernels depend on the batch dimension), a few ulps after several steps (docs/reliability.md)
    np.testing.assert_allclose(xc, xa, rtol=1e-5, atol=1e-5 * np.abs(xa).max())
    assert c["swd"] == pytest.approx(a["swd"], rel=1e-3) and c["mmd"] == pytest.approx(a["mmd"], rel=1e-3, abs=1e-6)
    d, xd = _cell(tmp_path / "d", *TOY, f"sampler={sampler}", "sampling.num_inference_steps=4", "sampling.seed=1")
    assert not np.array_equal(xa, xd) and d["swd"] != a["swd"]  # the seed is honoured


def test_digits_same_config_same_images_and_scores(digits_model, tmp_path):
    """Images (uint8, as saved) and digits-FID/KID/IS repeat exactly; batch size 8 vs 5 gives the same uint8 images
    here (float differences of a few ulps rarely cross a quantisation step) and the same scores up to float64
    summation order of the streamed statistics."""
    a, xa = _cell(tmp_path / "a", *DIGITS, "sampler=ddpm")
    b, xb = _cell(tmp_path / "b", *DIGITS, "sampler=ddpm")
    c, xc = _cell(tmp_path / "c", *DIGITS, "sampler=ddpm", "sampling.batch_size=5")
    assert np.array_equal(xa, xb) and np.array_equal(xa, xc) and xa.shape == (24, 8, 8, 1)
    for m in ("fid", "kid", "kid_std", "is", "is_std"):
        assert a[m] == b[m], m
        assert c[m] == pytest.approx(a[m], rel=1e-9, abs=1e-12), m
    assert a["ref_hash"] == b["ref_hash"] and a["feature_net_hash"] == b["feature_net_hash"]


def test_sample_i_is_independent_of_batch_size_for_stochastic_samplers(toy_model):
    """Per-image generators drive the initial noise and every step's noise (DDPM, DDIM eta=1, LCM-style)."""
    from bench.data import get_data_info
    from bench.metrics.cost import CostMeter
    from bench.sampling import build_scheduler, sample
    from bench.training import load_or_train

    for sampler, extra in (("ddpm", []), ("ddim", ["sampler.eta=1.0"]), ("euler", [])):
        cfg = compose(*TOY, "hydra.mode=RUN", f"sampler={sampler}", *extra)
        model, _ = load_or_train(cfg)
        info = get_data_info(cfg.data)
        out = {}
        for bs in (1, 4, 13):
            xs = [b.x for b in sample(model, build_scheduler(cfg), shape=info.shape, num_samples=13, batch_size=bs,
                                      seed=5, num_inference_steps=3, guidance_scale=1.0, num_classes=0, device="cpu",
                                      cost=CostMeter("cpu"), eta=cfg.sampler.eta, progress=False)]
            out[bs] = torch.cat(xs)
        for bs in (4, 13):  # equal up to float32 rounding of differently shaped GEMMs (docs/reliability.md)
            torch.testing.assert_close(out[bs], out[1], rtol=1e-5, atol=1e-5 * out[1].abs().max().item())
        again = torch.cat([b.x for b in sample(model, build_scheduler(cfg), shape=info.shape, num_samples=13,
                                               batch_size=4, seed=5, num_inference_steps=3, guidance_scale=1.0,
                                               num_classes=0, device="cpu", cost=CostMeter("cpu"),
                                               eta=cfg.sampler.eta, progress=False)])
        assert torch.equal(again, out[4]), sampler  # same batch size: bit for bit


def test_deterministic_switch(toy_model, tmp_path):
    """sampling.deterministic=true pins the algorithms (and cuDNN/TF32 on GPU); on CPU the numbers do not change."""
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        a, xa = _cell(tmp_path / "a", *TOY, "sampler=ddim", "sampling.num_inference_steps=3")
        b, xb = _cell(tmp_path / "b", *TOY, "sampler=ddim", "sampling.num_inference_steps=3",
                      "sampling.deterministic=true")
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
        assert np.array_equal(xa, xb) and (a["swd"], a["mmd"]) == (b["swd"], b["mmd"])
        assert a["cell_key"] != b["cell_key"]  # on GPU it can change the numbers, so it is part of the cell key
    finally:
        torch.use_deterministic_algorithms(flags[0])
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = flags[1:]
