"""Classifier guidance (Dhariwal & Nichol 2021) in the one sampling loop: checked against a 2-D Gaussian mixture whose
guided score is known in closed form (bench.sampling.oracles.GMMOracle: exact denoiser and exact noise-aware
classifier), then with the classifier the harness trains and caches, through the real (smoke) config and CLI."""
import json

import numpy as np
import pytest
import torch

from bench.data import build_dataset, get_data_info
from bench.keys import classifier_key
from bench.metrics.cost import CostMeter
from bench.models.classifier import NoisyClassifier
from bench.sampling import ClassifierGuidance, build_sampler, classifier_guided, sample
from bench.sampling.oracles import GMMClassifier, GMMOracle
from bench.schema import ConfigError
from bench.training import load_or_train_classifier, objectives as obj
from bench.validate import validate
from test_run import bench, rows

pytestmark = pytest.mark.usefixtures("one_thread")

MEANS, STD = [[-1.0, 0.0], [1.0, 0.5]], 0.6  # two overlapping classes: p(y | x) is far from 0/1 between them
OBJECTIVES = ("eps", "v", "x0", "flow")


def _toy(compose_cfg, objective):
    return compose_cfg("data=toy2d", "model=mlp", f"objective={objective}",
                       *(["sampler=flow_euler"] if objective == "flow" else []))


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_guided_output_is_that_of_p_x_times_posterior_to_the_scale(compose_cfg, objective, scale):
    """p(x_t) p(y|x_t)^k ∝ p(x_t)^(1-k) p(x_t|y)^k, whose score is (1-k) ∇log p(x_t) + k ∇log p(x_t|y). Every
    objective's output is affine in eps at fixed x_t, so classifier guidance at scale k with the exact classifier must
    give out_u + k (out_c - out_u) with the exact unconditional / class-conditional outputs: at k = 1 the class-
    conditional oracle itself. Float64, at integer and fractional timesteps near both ends of the path."""
    cfg = _toy(compose_cfg, objective)
    oracle = GMMOracle(cfg, MEANS, STD)
    guide = ClassifierGuidance.from_config(GMMClassifier(oracle), cfg, scale)
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1.0, 10.5, 250.0, 600.25, 990.0]).repeat(40)
    x = (torch.randn(len(t), 2, generator=g) * 1.5).double()
    y = torch.randint(0, 2, (len(t),), generator=g)
    out_u, out_c = oracle(x, t), oracle(x, t, y)
    meter = CostMeter()
    got = classifier_guided(out_u, x, t, y, guide, meter)
    want = out_u + scale * (out_c - out_u)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    assert (want - out_u).abs().max() > 0.05  # the guidance moves the output: the check has teeth
    assert meter.classifier_rows == len(t)


@pytest.mark.parametrize("objective, sampler", [("eps", "ddim"), ("v", "dpmpp"), ("x0", "euler"),
                                                ("flow", "flow_euler")])
def test_loop_samples_the_class_at_scale_1_and_sharpens_it_beyond(compose_cfg, objective, sampler):
    """The unconditional exact model + the exact classifier through the loop: at scale 1 the samples of class y are
    those of the exact class-conditional model, sample for sample (p(x_t) p(y|x_t) = p(x_t|y) p(y) at every t), near
    N(μ_y, τ²), and their mean posterior p(y|x0) is that of true class-y points; scale 0 gives the mixture (mean
    posterior of the class 1/2); scale 4 sharpens the class posterior beyond scale 1, as the p(y|x)^s tilt predicts.
    nfe_classifier: one classifier call per model call."""
    cfg = compose_cfg("data=toy2d", "model=mlp", f"objective={objective}", f"sampler={sampler}")
    oracle = GMMOracle(cfg, MEANS, STD)
    n, steps = 2000, 40
    rng = np.random.default_rng(0)
    true1 = torch.from_numpy(np.asarray(MEANS[1]) + STD * rng.standard_normal((20000, 2)))
    zero = torch.zeros(len(true1))
    want_post = torch.softmax(oracle.logits(true1, zero), -1)[:, 1].mean().item()  # E_{x ~ p(x|y=1)} p(y=1|x)
    mean_post = {}

    def draw(guidance_scale, guide, meter):
        return torch.cat([b.x for b in sample(
            oracle, build_sampler(cfg.sampler, cfg.schedule, objective), shape=(2,), num_samples=n, batch_size=n,
            seed=0, num_inference_steps=steps, guidance_scale=guidance_scale, num_classes=2, device="cpu", cost=meter,
            class_labels=[1] * n, progress=False, classifier_guidance=guide)]).double()

    conditional = draw(1.0, None, CostMeter())  # the exact class-conditional model, same seeds
    for scale in (0.0, 1.0, 4.0):
        meter = CostMeter()
        x = draw(0.0, ClassifierGuidance.from_config(GMMClassifier(oracle), cfg, scale) if scale else None, meter)
        post = torch.softmax(oracle.logits(x, torch.zeros(n)), -1)[:, 1]
        mean_post[scale] = post.mean().item()
        summary = meter.summary()
        assert summary["nfe"] == steps and summary.get("nfe_classifier", 0) == (steps if scale else 0)
        if scale == 1.0:
            print(f"{objective}/{sampler} scale 1: mean {x.mean(0).tolist()}, std {x.std(0).tolist()}, max |guided - "
                  f"conditional| {(x - conditional).abs().max().item():.2e}")
            # sample for sample; flow's first step at σ = 1 (alpha = 0) is unguided (x0' is undefined there, see
            # classifier_guided), so its samples differ from the conditional model's by that one step's guidance
            torch.testing.assert_close(x, conditional, atol=0.03 if objective == "flow" else 2e-4, rtol=0)
            # and both near N(μ_1, τ²) up to the sampler's discretisation (DDIM-40 narrows τ by ~7 %)
            torch.testing.assert_close(x.mean(0), torch.tensor(MEANS[1]).double(), atol=0.06, rtol=0)
            torch.testing.assert_close(x.std(0), torch.full((2,), STD).double(), atol=0.06, rtol=0)
    print(f"{objective}/{sampler}: mean p(y|x0) by scale {mean_post}; true class-1 points {want_post:.3f}")
    assert mean_post[0.0] == pytest.approx(0.5, abs=0.04)
    assert mean_post[1.0] == pytest.approx(want_post, abs=0.03)
    assert mean_post[4.0] > mean_post[1.0] + 0.03


CLASSIFIER = ("trainer.accelerator=cpu", "device=cpu", "classifier.max_steps=60", "classifier.batch_size=64",
              "classifier.block_out_channels=[16,32]", "classifier.lr=3e-3")


def test_harness_classifier_trains_caches_and_reloads_bit_exactly(compose_cfg, bench_cache):
    """The noise-aware classifier is trained on noised digits through the Lightning runner and cached in the model
    cache under its own key: it reloads bit for bit, beats chance on held-out images at low noise and is near chance
    at pure noise (it is timestep-aware); its key follows the data, schedule and classifier.*, not the denoiser."""
    cfg = compose_cfg(*CLASSIFIER, "sampling.classifier_scale=1")
    clf, info = load_or_train_classifier(cfg)
    assert info["cached"] is False and info["train_steps"] == 60 and isinstance(clf, NoisyClassifier)
    meta = json.loads((bench_cache / "models" / info["classifier_key"] / "meta.json").read_text())
    assert meta["network"] == "noisy_classifier" and len(meta["weights_sha256"]) == 64
    clf2, info2 = load_or_train_classifier(cfg)
    assert info2["cached"] is True
    for (k, a), (_, b) in zip(clf.state_dict().items(), clf2.state_dict().items()):
        assert torch.equal(a, b), k
    data = get_data_info(cfg.data)
    test = build_dataset(cfg.data, "test")
    x0, y = (torch.stack(v) for v in zip(*[test[i] for i in range(min(len(test), 300))]))
    ac = obj.alphas_cumprod(cfg.schedule)
    acc = {}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in (20, 999):
            eps = torch.randn(x0.shape, generator=g)
            a, s = ac[t].sqrt().expand(len(x0)), (1 - ac[t]).sqrt().expand(len(x0))
            logits = clf(obj.add_noise(x0, eps, a, s), torch.full((len(x0),), float(t)))
            acc[t] = (logits.argmax(-1) == y).float().mean().item()
    print(f"classifier accuracy on held-out {data.id} at t=20: {acc[20]:.3f}, t=999: {acc[999]:.3f}")
    assert acc[20] > 0.5 and acc[999] < 0.25
    assert classifier_key(compose_cfg(*CLASSIFIER, "model=dit")) == info["classifier_key"]
    assert classifier_key(compose_cfg(*CLASSIFIER, "schedule=cosine")) != info["classifier_key"]
    assert classifier_key(compose_cfg(*CLASSIFIER, "classifier.seed=1")) != info["classifier_key"]


@pytest.mark.parametrize("overrides, match", [
    (["sampling.classifier_scale=2", "data.class_conditional=false", "sampling.guidance_scale=1"],
     r"^sampling\.classifier_scale=2\.0 is not allowed: 0 for unlabelled data \(a classifier needs class labels"),
    (["sampling.classifier_scale=2", "classifier.block_out_channels=[12,16]"],
     r"^classifier\.block_out_channels=\[12, 16\] is not allowed: a non-empty list of multiples of "
     r"classifier\.norm_num_groups=8$"),
    (["sampling.classifier_scale=2", "classifier.block_out_channels=[8,8,8,8,8]"],
     r"^classifier\.block_out_channels=.* is not allowed: at most 4 levels for the image size 8 \(5 levels "),
    (["sampling.classifier_scale=-1"], r"^sampling\.classifier_scale=-1\.0 is not allowed: a number in \[0, inf\)$"),
    (["classifier.ema_decay=1"], r"^classifier\.ema_decay=1\.0 is not allowed: a number in \[0, 1\)$"),
])
def test_bad_classifier_guidance_config_is_one_line(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        validate(compose_cfg(*overrides))
    assert "\n" not in str(err.value)


def test_classifier_guided_cell_through_the_cli(tmp_path):
    """`bench experiment=smoke sampling.classifier_scale=2`: the row counts the classifier's calls apart from the
    model's and names the classifier; scale 0 keeps the row (and cell key) of a run without the feature."""
    common = ["experiment=smoke", "tracker=none", "sampling.num_samples=32", "sampling.num_inference_steps=3",
              *CLASSIFIER[2:]]
    bench(tmp_path, *common, "-m", "sampling.classifier_scale=2,0", "sampling.guidance_scale=0")  # 2 cells, 1 process
    guided, plain = rows(tmp_path / "runs" / "smoke" / "results.jsonl")
    assert guided["status"] == "ok" and guided["nfe"] == 3 and guided["nfe_classifier"] == 3
    assert guided["classifier_scale"] == 2.0 and len(guided["classifier_key"]) == 16
    assert guided["classifier_train_steps"] == 60 and guided["fid"] > 0
    assert plain["status"] == "ok" and plain["classifier_scale"] == 0.0 and plain["nfe_classifier"] == 0.0
    assert "classifier_key" not in plain
    assert guided["cell_key"] != plain["cell_key"]


def test_latent_family_is_guided_by_a_classifier_on_its_latents(tmp_path, compose_cfg, bench_cache):
    """model=latent_unet with sampling.classifier_scale: the classifier is trained on the noised scaled latents of
    the family's cached VAE (4 channels, 4x4), keyed by that VAE too, and guides the latent sampler; the row counts
    its calls apart."""
    latent = ["model=latent_unet", "model.block_out_channels=[16,32]", "model.vae_max_steps=20",
              "model.vae_block_out_channels=[8,16]", "classifier.max_steps=20", "classifier.block_out_channels=[8,16]"]
    cfg = compose_cfg(*latent, "sampling.classifier_scale=2", "device=cpu")
    validate(cfg)
    clf, info = load_or_train_classifier(cfg)
    assert clf.conv_in.in_channels == 4 and info["train_steps"] == 20
    out = clf(torch.randn(3, 4, 4, 4), torch.tensor([1.0, 500.0, 999.0]))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    pixel = compose_cfg(*latent[4:], "sampling.classifier_scale=2")
    assert classifier_key(cfg) != classifier_key(pixel)  # another input space, another classifier
    assert classifier_key(cfg) != classifier_key(compose_cfg(*latent, "sampling.classifier_scale=2",
                                                             "model.vae_kl_weight=1e-3"))  # another VAE, too
    common = ["experiment=smoke", "tracker=none", "sampling.num_samples=32", "sampling.num_inference_steps=3",
              "sampling.guidance_scale=0", *latent]
    bench(tmp_path, *common, "-m", "sampling.classifier_scale=2,0")  # guided and plain: 2 cells, 1 process
    guided, plain = rows(tmp_path / "runs" / "smoke" / "results.jsonl")
    assert guided["status"] == "ok" and guided["nfe"] == 3 and guided["nfe_classifier"] == 3
    assert guided["vae_key"] == plain["vae_key"] and guided["fid"] != plain["fid"]
