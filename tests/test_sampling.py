"""The sampling loop: equality with diffusers' DDIMPipeline, per-image seeding, CFG cost, NaN detection, cost meter."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, UNet2DModel
from hydra import compose, initialize_config_dir

from bench.metrics.cost import CostMeter, counting
from bench.sampling import Batch, NonFiniteError, build_scheduler, image_generators, sample, scheduler_config
from bench.schema import register

CONF = str(Path(__file__).resolve().parents[1] / "conf")
SHAPE = (1, 8, 8)


def make_cfg(*overrides):
    register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("bench", overrides=["experiment=smoke", *overrides])


def tiny_unet(num_class_embeds=None):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8, num_class_embeds=num_class_embeds).eval()


class Wrapped(torch.nn.Module):
    """UNet2DModel -> the bench model signature model(x, t, class_labels=None) -> Tensor."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, class_labels=None):
        return self.unet(x, t, class_labels=class_labels).sample


class TinyMLP(torch.nn.Module):
    """2-D denoiser with a class embedding (null class = num_classes) for CFG tests."""

    def __init__(self, num_classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(num_classes + 1, 16)
        self.net = torch.nn.Sequential(torch.nn.Linear(2 + 1 + 16, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

    def forward(self, x, t, class_labels=None):
        e = self.emb(class_labels) if class_labels is not None else torch.zeros(len(x), 16)
        return self.net(torch.cat([x, t[:, None] / 1000, e], 1))


def collect(model, scheduler, n, batch_size, steps, meter=None, **kw):
    kw = {"seed": 0, "guidance_scale": 1.0, "num_classes": 0, "shape": SHAPE, **kw}
    return list(sample(model, scheduler, num_samples=n, batch_size=batch_size, num_inference_steps=steps,
                       device="cpu", cost=meter or CostMeter("cpu"), progress=False, **kw))


def test_matches_diffusers_ddim_pipeline():
    unet = tiny_unet()
    scheduler = build_scheduler(make_cfg("sampler=ddim"))
    n, seed, steps = 3, 7, 10
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=n, generator=[torch.Generator().manual_seed(seed + i) for i in range(n)],
               num_inference_steps=steps, eta=0.0, output_type="np").images
    (batch,) = collect(Wrapped(unet), scheduler, n, n, steps, seed=seed)
    ours = (batch.x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # the pipeline's output mapping
    assert np.abs(ours - ref).max() == 0.0


def test_image_batches_and_batch_size_invariance_unet():
    model = Wrapped(tiny_unet())
    scheduler = build_scheduler(make_cfg("sampler=ddim", "sampler.eta=1.0"))
    outs = {}
    for bs in (1, 4, 7):
        batches = collect(model, scheduler, 7, bs, 5, eta=1.0)
        assert all(isinstance(b, Batch) and b.labels is None for b in batches)
        assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(7))
        assert [len(b.x) for b in batches] == {1: [1] * 7, 4: [4, 3], 7: [7]}[bs]
        outs[bs] = torch.cat([b.x for b in batches])
    # Exact equality holds for any per-row model (tests/test_schedulers.py checks every sampler with torch.equal).
    # A conv net is not bitwise batch-invariant on CPU: the UNet forward itself differs by ~1e-6 between batch 1
    # and 7 (conv / GroupNorm reduction order), and DDIM's x0 = (x - sqrt(1-abar) eps) / sqrt(abar) amplifies that
    # ~157x at t=999 under this untrained UNet. So compare relative to the sample scale (|x| ~ 500 here); a seeding
    # error would differ by O(1) relative.
    with torch.no_grad():
        x, t = torch.randn(7, *SHAPE), torch.full((7,), 999.0)
        per_row = torch.cat([model(x[i:i + 1], t[i:i + 1]) for i in range(7)])
        assert (model(x, t) - per_row).abs().max().item() <= 1e-5
    scale = outs[1].abs().max().item()
    for bs in (4, 7):
        assert (outs[bs] - outs[1]).abs().max().item() <= 1e-5 * scale
    assert outs[1].dtype == torch.float32 and outs[1].device.type == "cpu"


@pytest.mark.parametrize("sampler,guidance_scale,expected",
                         [("ddim", 3.0, 20), ("ddim", 1.0, 10), ("ddim", 0.0, 10), ("heun", 3.0, 38),
                          ("dpmpp", 1.0, 10), ("lcm", 2.0, 20)])
def test_cfg_nfe_and_labels(sampler, guidance_scale, expected):
    meter = CostMeter("cpu")
    batches = collect(TinyMLP(3), build_scheduler(make_cfg(f"sampler={sampler}")), 5, 2, 10, meter=meter,
                      shape=(2,), guidance_scale=guidance_scale, num_classes=3)
    assert meter.summary()["nfe"] == expected
    assert meter.calls == 3 * expected // (2 if guidance_scale not in (0, 1) else 1)  # 3 batches, 2B rows for CFG
    labels = torch.cat([b.labels for b in batches]) if guidance_scale > 0 else None
    assert guidance_scale == 0 and all(b.labels is None for b in batches) or labels.tolist() == [0, 1, 2, 0, 1]


def test_cfg_combination_and_given_labels():
    """Guided output = out_u + s (out_c - out_u) from one 2B forward; explicit class_labels are used."""
    from bench.sampling.loop import guided

    model = TinyMLP(3)
    x, t, y = torch.randn(4, 2), torch.full((4,), 500.0), torch.tensor([0, 2, 1, 1])
    out_c, out_u = model(x, t, y), model(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(guided(model, x, t, y, 2.5, 3), out_u + 2.5 * (out_c - out_u))
    (batch,) = collect(model, build_scheduler(make_cfg("sampler=ddim")), 3, 3, 4, shape=(2,), num_classes=3,
                       class_labels=[2, 2, 0])
    assert batch.labels.tolist() == [2, 2, 0]


def test_non_finite_error_names_the_step():
    class NaNAt(torch.nn.Module):
        calls = 0

        def forward(self, x, t, class_labels=None):
            self.calls += 1
            return torch.full_like(x, float("nan")) if self.calls == 4 else torch.zeros_like(x)

    scheduler = build_scheduler(make_cfg("sampler=ddim"))
    with pytest.raises(NonFiniteError) as err:
        collect(NaNAt(), scheduler, 2, 2, 10, shape=(2,))
    assert err.value.step == 3 and isinstance(err.value, RuntimeError)
    assert "step 3/10" in str(err.value) and "timestep 699" in str(err.value)


def test_image_generators_and_seed_convention():
    gens = image_generators(10, 2, 5)
    assert len(gens) == 3
    assert torch.equal(torch.randn(4, generator=gens[0]), torch.randn(4, generator=torch.Generator().manual_seed(12)))


def test_cost_meter_summary_and_counting():
    meter = CostMeter("cpu")
    model = counting(TinyMLP(3), meter)
    for n in (4, 2):
        with meter.batch(n):
            model(torch.zeros(n, 2), torch.zeros(n))
            model(torch.zeros(2 * n, 2), torch.zeros(2 * n))
    s = meter.summary()
    assert meter.calls == 4 and s["nfe"] == 3.0  # (4 + 8 + 2 + 4) rows / 6 images
    assert set(s) == {"nfe", "latency_p50", "latency_p95", "images_per_s", "peak_mem_mb", "mem_kind", "wall_s",
                      "latency_iqr", "latency_batches", "latency_warmup_batches", "per_call_s", "sample_s",
                      "num_threads", "load_before", "load_after", "cost_under_load"}
    assert s["mem_kind"] == "rss" and s["peak_mem_mb"] > 10
    assert 0 < s["latency_p50"] <= s["latency_p95"] and s["wall_s"] > 0
    assert s["images_per_s"] == pytest.approx(6 / s["wall_s"])
    assert s["latency_batches"] == 2 and s["latency_warmup_batches"] == 0 and s["num_threads"] >= 1
    assert 0 < s["per_call_s"] < s["latency_p95"]  # one image-forward is cheaper than 3 of them


def test_cost_meter_warmup_batches_are_not_timed():
    """Latency is the median over the timed batches: the first warmup_batches are produced but excluded."""
    import time

    meter = CostMeter("cpu", warmup_batches=1)
    for n, sleep in ((2, 0.2), (2, 0.002), (2, 0.004), (2, 0.006)):
        with meter.batch(n):
            time.sleep(sleep)
    s = meter.summary()
    assert s["latency_batches"] == 3 and s["latency_warmup_batches"] == 1 and s["nfe"] == 0
    assert s["latency_p50"] < 0.05 / 2  # the 0.2 s warm-up batch would dominate the p95 if it were counted
    assert s["latency_iqr"] >= 0 and s["images_per_s"] > 2 / 0.05
    one = CostMeter("cpu", warmup_batches=1)  # a single batch: nothing left after the warm-up -> it is timed
    with one.batch(3):
        pass
    assert one.summary()["latency_batches"] == 1 and one.summary()["latency_warmup_batches"] == 0


def test_scheduler_config_is_saveable():
    import json

    cfg = scheduler_config(build_scheduler(make_cfg("sampler=euler", "schedule=cosine")))
    assert cfg["_class_name"] == "EulerDiscreteScheduler" and cfg["num_train_timesteps"] == 996
    json.dumps(cfg)
