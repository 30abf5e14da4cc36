"""task=invert (bench/tasks/invert.py) and the task group: validation, keys, the inversion path against diffusers'
own inverse-scheduler test, reconstruction error against the step count and guidance, null-text inversion."""
from __future__ import annotations

import pytest

from bench.schema import ConfigError


def _validate(cfg):
    from bench.keys import normalise
    from bench.validate import validate

    return validate(normalise(cfg))


# --------------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, match", [
    (("experiment=toy2d", "task=invert"), r"^task='invert' is not allowed: generate for data=toy2d"),
    (("task=invert", "data.class_conditional=false", "task.method=null_text"),
     r"^task\.method='null_text' is not allowed: plain for model=unet .*unconditional"),
    (("task=invert", "sampler=dpmpp"), r"^sampler='dpmpp' is not allowed: ddim with task=invert"),
    (("task=invert", "sampler.eta=0.5"), r"^sampler\.eta=0\.5 is not allowed: 0 with task=invert"),
    (("task=invert", "sampler.timestep_spacing=linspace"), r"^sampler\.timestep_spacing='linspace'"),
    (("task=invert", "task.method=exact"), r"^task\.method='exact' is not allowed: plain \| null_text"),
    (("task=invert", "task.num_images=100000"), r"^task\.num_images=100000 is not allowed: at most 360"),
    (("task=invert", "task.split=val"), r"^task\.split='val' is not allowed: test \| train"),
    (("task=invert", "task.num_images=0"), r"^task\.num_images=0 is not allowed: an integer in \[1, inf\)"),
    (("task=invert", "sampling.devices=2", "device=cpu"), r"^sampling\.devices=2 is not allowed: 1 with task=invert"),
    (("task=invert", "metric.repeats=2"), r"^metric\.repeats=2 is not allowed: 1 with task=invert"),
    (("task=invert", "metric.prdc=true"), r"^metric\.prdc=True is not allowed: false with task=invert"),
    (("task=invert", "task.method=null_text", "sampling.guidance_scale=3", "task.null_lr=0"),
     r"^task\.null_lr=0\.0 is not allowed: a number in \(0, inf\)"),
    (("task=bogus",), None),  # an unknown option: Hydra's own error at composition
])
def test_bad_task_settings_are_one_line_errors(compose_cfg, overrides, match):
    if match is None:
        from hydra.errors import MissingConfigException

        with pytest.raises(MissingConfigException):
            compose_cfg(*overrides)
        return
    with pytest.raises(ConfigError, match=match):
        _validate(compose_cfg(*overrides))


def test_strength_outside_0_1_is_refused(compose_cfg):
    """Edit's strength: (0, 1] whatever the task (its range is the schema's)."""
    from bench.validate import check_bounds

    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"^task\.strength=.* is not allowed: a number in \(0, 1\]"):
            check_bounds(compose_cfg(f"task.strength={bad}"))
    check_bounds(compose_cfg("task.strength=1"))


def test_an_edit_target_needs_that_condition(compose_cfg):
    from bench.data import get_data_info
    from bench.tasks.common import check_target

    uncond = compose_cfg("data.class_conditional=false", "task.target=3")
    with pytest.raises(ConfigError, match=r"^task\.target='3' is not allowed: same for model=unet .*unconditional"):
        check_target(uncond, get_data_info(uncond.data))
    cond = compose_cfg("task.target=12")
    with pytest.raises(ConfigError, match=r"^task\.target='12' is not allowed: same or a class index 0\.\.9"):
        check_target(cond, get_data_info(cond.data))
    ok = compose_cfg("task.target=3")
    check_target(ok, get_data_info(ok.data))


# --------------------------------------------------------------------------------------------------------- keys

def test_generate_keeps_its_keys_and_task_settings_enter_only_where_they_act(compose_cfg):
    """At task=generate the task group adds nothing to the cell key (committed keys hold: tests/test_keys.py); a task's
    own settings enter its key; settings without effect are normalised out (null-text at guidance 1 is plain)."""
    from bench.keys import cell_config, cell_key, normalise

    base = compose_cfg()
    assert "task" not in cell_config(base)
    assert cell_key(normalise(compose_cfg("task.strength=0.9", "task.method=null_text"))) == cell_key(base)
    inv = compose_cfg("task=invert")
    assert cell_config(inv)["task"] == {"name": "invert"}
    assert cell_key(normalise(compose_cfg("task=invert", "sampling.num_samples=7"))) == cell_key(inv)
    assert cell_key(normalise(compose_cfg("task=invert", "task.method=null_text"))) == cell_key(inv)  # w = 1
    w3 = compose_cfg("task=invert", "sampling.guidance_scale=3")
    null3 = normalise(compose_cfg("task=invert", "sampling.guidance_scale=3", "task.method=null_text"))
    assert cell_key(null3) != cell_key(w3)
    assert cell_config(null3)["task"] == {"name": "invert", "method": "null_text"}
    assert cell_key(compose_cfg("task=invert", "task.num_images=8")) != cell_key(inv)


# ------------------------------------------------------------------------------------------------------ anchors

class _DummyModel:
    """diffusers' scheduler-test dummy model (tests/schedulers/test_schedulers.py: sample * t / (t + 1)) as a
    Predictor: unconditional, pixel space."""

    num_classes = 0

    def encode(self, x):
        return x

    def decode(self, z):
        return z

    def condition(self, labels, captions):
        return None

    def null(self, cond):
        return []

    def output(self, x, t, cond, guidance_scale, meter, null=None):
        with meter.call(len(x)):
            t = t.reshape(-1, *([1] * (x.dim() - 1)))
            return x * t / (t + 1)


def test_the_inversion_path_reproduces_diffusers_inverse_scheduler_test():
    """diffusers' tests/schedulers/test_scheduler_ddim_inverse.py full loop (10 steps, its dummy model and sample;
    config: linear betas 1e-4..0.02, clip_sample=True) gives sum |x| = 671.6816, mean 0.8746: the same loop through
    bench.tasks.invert (the inverse built from a forward DDIMScheduler of that config) gives the same numbers."""
    import torch
    from diffusers import DDIMScheduler

    from bench.metrics.cost import CostMeter
    from bench.tasks.invert import ddim_invert, inverse_scheduler

    forward = DDIMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                            clip_sample=True)
    n = 4 * 3 * 8 * 8
    sample = (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)  # diffusers' dummy_sample_deter
    meter = CostMeter("cpu")
    with meter.batch(4):
        traj = ddim_invert(_DummyModel(), inverse_scheduler(forward), sample, 10, None, 1.0, meter)
    x = traj[-1]
    assert abs(x.abs().sum().item() - 671.6816) < 1e-2 and abs(x.abs().mean().item() - 0.8746) < 1e-3
    assert len(traj) == 11 and meter.summary()["nfe"] == 10  # S steps, S model calls per image


def test_the_inverse_scheduler_is_the_forward_samplers_own(compose_cfg):
    """DDIMInverseScheduler()'s defaults clip x0 and differ from the harness's DDIM: the inverse is built from the
    sampler's config, and its grid is the forward grid reversed (S steps each way, the first from abar = 1)."""
    from diffusers import DDIMInverseScheduler

    from bench.sampling import build_sampler
    from bench.tasks.invert import inverse_scheduler

    assert DDIMInverseScheduler().config.clip_sample is True  # the trap
    cfg = compose_cfg("task=invert")
    forward = build_sampler(cfg.sampler, cfg.schedule, cfg.objective.name)
    inverse = inverse_scheduler(forward)
    for k in ("clip_sample", "set_alpha_to_one", "timestep_spacing", "prediction_type", "beta_start", "beta_end"):
        assert inverse.config[k] == forward.config[k], k
    assert inverse.config.clip_sample is False
    for s in (7, 10, 20):
        forward.set_timesteps(s)
        inverse.set_timesteps(s)
        assert inverse.timesteps.tolist() == forward.timesteps.flip(0).tolist()
    assert float(inverse.initial_alpha_cumprod) == float(forward.final_alpha_cumprod) == 1.0


# ------------------------------------------------------------------------------- the smoke digits model, inverted

@pytest.fixture(scope="module")
def digits():
    """The smoke digits UNet (class-conditional, 30 training steps; cached like any model) as a cell of task=invert
    loads it: (cfg, info, subject)."""
    from hydra import compose, initialize_config_dir

    from bench.keys import normalise
    from bench.schema import register
    from bench.subjects import load_subject
    from bench.validate import validate
    from conftest import CONF_DIR

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = normalise(compose("bench", overrides=["experiment=smoke", "tracker=none", "device=cpu", "task=invert",
                                                    "task.num_images=8"]))
    info = validate(cfg)
    subject, _ = load_subject(cfg, info, "cpu")
    return cfg, info, subject


def _psnr(digits, steps: int, w: float, method: str = "plain", null_lr: float = 0.1, batch_size: int = 8) -> float:
    """Mean PSNR (dB) of the 8 held-out images inverted and reconstructed in ``steps`` steps at guidance ``w``."""
    import torch
    from omegaconf import OmegaConf

    from bench.metrics.cost import CostMeter
    from bench.tasks import held_out
    from bench.tasks.invert import ddim_invert, ddim_sample, inverse_scheduler, null_text, pixel_scores

    cfg, info, subject = digits
    pred, forward = subject.predictor(), subject.scheduler
    task = OmegaConf.merge(cfg.task, {"method": method, "null_lr": null_lr})
    meter, out = CostMeter("cpu"), []
    for b in held_out(cfg, info, batch_size):
        cond = pred.condition(b.labels, b.captions)
        traj = ddim_invert(pred, inverse_scheduler(forward), pred.encode(b.x), steps, cond,
                           1.0 if method == "null_text" else w, meter)
        nulls = null_text(pred, forward, traj, cond, w, task, meter)[0] if method == "null_text" else None
        out.append(pixel_scores(b.x, pred.decode(ddim_sample(pred, forward, traj[-1], steps, cond, w, meter, nulls))))
    return float(torch.cat([o["psnr"] for o in out]).mean())


def test_reconstruction_improves_with_the_step_count_at_guidance_1(digits, one_thread):
    """DDIM §5.4: the inversion's error comes from evaluating the model at the next timestep's latent; it shrinks
    with the step size, so the reconstruction PSNR rises with S."""
    psnr = [_psnr(digits, s, 1.0) for s in (2, 5, 20)]
    assert psnr[0] + 3 < psnr[1] and psnr[1] + 3 < psnr[2], psnr


def test_guidance_breaks_plain_inversion_and_null_text_recovers_it(digits, one_thread):
    """Mokady et al. 2023: inverting and reconstructing under CFG (w = 3) loses the image; null-text inversion (the
    pivot at w = 1, the null condition optimised per step) brings the w = 3 reconstruction back to the w = 1 one
    (here: 17.2 dB at w = 1, 9.9 at w = 3, 17.5 with null-text). The class-embedding null of this model moves the
    output far less than a text embedding does: lr 0.1, not 0.01."""
    w1, w3 = _psnr(digits, 10, 1.0), _psnr(digits, 10, 3.0)
    null = _psnr(digits, 10, 3.0, "null_text")
    assert w3 + 4 < w1 and null > w3 + 5 and null > w1 - 0.5, (w1, w3, null)


def test_an_inversion_cell_writes_its_row_and_does_not_depend_on_the_batch_size(compose_cfg, tmp_path, digits,
                                                                                 one_thread):
    """The cell path end to end (null-text, S = 4, w = 3): one row with the task's columns, NFE 2 S doubled under CFG
    (the pivot is inverted at w = 1: S + 2 S), the optimisation's calls apart; the same numbers with another batch
    size (each image has its own null condition and early stop); a second run resumes (skips the cell)."""
    import json

    from bench.cell import run_cell

    args = ("task=invert", "task.num_images=6", "task.method=null_text", "task.null_lr=0.1", "device=cpu",
            "sampling.num_inference_steps=4", "sampling.guidance_scale=3", f"out_dir={tmp_path}")
    row = run_cell(compose_cfg(*args, "sampling.batch_size=6"))
    assert row["status"] == "ok" and row["task"] == "invert" and row["num_real_images"] == row["num_samples"] == 6
    assert (row["nfe_inversion"], row["nfe_reconstruction"], row["nfe"]) == (4.0, 8.0, 12.0)
    assert row["inversion_method"] == "null_text" and row["nfe_null_text"] > 4 * 2 and row["null_text_s"] > 0
    assert row["key_settings"]["task.method"] == "null_text" and row["key_settings"]["task.num_images"] == 6
    assert 0 < row["recon_mse"] < 1 and 0 < row["recon_ssim"] <= 1 and row["recon_fid"] > 0
    assert (tmp_path / "smoke" / row["cell_dir"] / "grid.png").is_file()
    assert run_cell(compose_cfg(*args, "sampling.batch_size=6")) is None  # resumed
    other = run_cell(compose_cfg(*args, "sampling.batch_size=4", f"out_dir={tmp_path / 'b4'}"))
    assert other["cell_key"] == row["cell_key"]
    for k in ("recon_psnr", "recon_ssim", "recon_mse", "null_text_inner_steps"):
        assert abs(other[k] - row[k]) < 1e-4 * max(1.0, abs(row[k])), (k, other[k], row[k])
    assert len((tmp_path / "smoke" / "results.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "smoke" / "results.jsonl").read_text())["cell_key"] == row["cell_key"]


@pytest.mark.parametrize("overrides, tables", [
    (("model=unet",), 1), (("model=dit", "model.num_layers=2"), 2), (("model=latent_unet",), 1),
    (("model=text_unet", "data=shapes"), 1)])
def test_every_conditional_family_exposes_its_null_condition(compose_cfg, overrides, tables, one_thread):
    """Null-text inversion optimises the tables a family embeds the null class with (random weights suffice): the
    found tables, at their own null rows, give exactly the model's null-class output, and each of them moves it."""
    import torch

    from bench.data import get_data_info
    from bench.models import build_model
    from bench.sampling.predictor import OwnModelPredictor, null_tables

    cfg = compose_cfg(*overrides)
    info = get_data_info(cfg.data)
    model = build_model(cfg.model, info).eval()
    pred = OwnModelPredictor(model, info.num_classes)
    assert len(null_tables(model, info.num_classes)) == tables
    g = torch.Generator().manual_seed(0)
    shape = getattr(model, "latent_shape", info.shape)
    x, t = torch.randn(3, *shape, generator=g), torch.tensor([10.0, 500.0, 900.0])
    cond = torch.tensor([0, 1, 2])
    null = pred.null(cond)
    with torch.no_grad():
        want = model(x, t, class_labels=torch.full_like(cond, info.num_classes))
        assert torch.allclose(pred._null_output(x, t, null), want, atol=1e-5)
        for k in range(len(null)):
            moved = [v + (1.0 if j == k else 0.0) for j, v in enumerate(null)]
            assert (pred._null_output(x, t, moved) - want).abs().max() > 1e-4, k


def test_a_diffusers_pipeline_is_inverted_through_its_own_components(compose_cfg, tmp_path, one_thread):
    """model=pipeline: an unconditional DDPM pipeline (UNet2DModel, pixels) and a text-to-image one (its VAE, its
    text encoder's prompt embeddings, the null condition the empty prompt's), on their own scheduler configs: the row
    counts S model calls per image each way (CFG: 2 rows per call), null-text's apart. Random weights: the path,
    not the quality, is what is checked."""
    from bench.cell import run_cell
    from bench.models import tiny

    base = ("task=invert", "task.num_images=2", "data=shapes", "model=pipeline", "device=cpu", "metric=none",
            "sampling.num_inference_steps=3", f"out_dir={tmp_path}")
    ddpm = run_cell(compose_cfg(*base, f"model.path={tiny.save('ddpm', tmp_path / 'ddpm')}"))
    assert (ddpm["nfe_inversion"], ddpm["nfe_reconstruction"], ddpm["task"]) == (3.0, 3.0, "invert")
    assert ddpm["nfe_null_text"] == ddpm["null_text_s"] == 0 and "null_text_inner_steps" not in ddpm
    sd = run_cell(compose_cfg(*base, f"model.path={tiny.save('sd', tmp_path / 'sd')}", "prompts=shapes",
                              "sampling.guidance_scale=3", "task.method=null_text"))
    assert (sd["nfe_inversion"], sd["nfe_reconstruction"]) == (3.0, 6.0) and sd["nfe_null_text"] >= 3 * 3
    for row in (ddpm, sd):
        assert row["status"] == "ok" and 0 < row["recon_mse"] < 4 and row["recon_psnr"] > 0
