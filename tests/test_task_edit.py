"""task=edit (SDEdit): diffusers' img2img truncation, the forward noising, targets, the scores, and the task end to
end through the real CLI (smoke model), with its bad inputs."""
import types

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

from bench.data import get_data_info, shapes_caption
from bench.sampling.img2img import img2img_timesteps, noise_to
from bench.schema import ConfigError
from bench.tasks import edit
from bench.tasks.common import PSNR_MAX_DB


@pytest.mark.parametrize("cls", [DDIMScheduler, EulerDiscreteScheduler])
@pytest.mark.parametrize("steps,strength", [(20, 0.5), (20, 0.33), (10, 1.0), (7, 0.75)])
def test_timesteps_are_diffusers_img2img(cls, steps, strength):
    ours, theirs = cls(timestep_spacing="trailing"), cls(timestep_spacing="trailing")
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    want, n = StableDiffusionImg2ImgPipeline.get_timesteps(types.SimpleNamespace(scheduler=theirs), steps, strength,
                                                          "cpu")
    got = img2img_timesteps(ours, steps, strength)
    assert torch.equal(got, want) and len(got) == n == edit.strength_steps(steps, strength)
    assert getattr(ours, "begin_index", None) == getattr(theirs, "begin_index", None)


def test_noise_to_is_the_forward_process():
    s = DDIMScheduler(timestep_spacing="trailing")
    s.set_timesteps(10)
    x0, eps = torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    t = img2img_timesteps(s, 10, 0.6)[0]
    abar = s.alphas_cumprod[int(t)]
    assert int(t) == 599  # trailing: 999, 899, ...; 6 of 10 steps run
    assert torch.allclose(noise_to(s, x0, eps, t), abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-6)


def _validate(cfg):
    from bench.keys import normalise
    from bench.validate import validate

    return validate(normalise(cfg))


def test_targets(compose_cfg):
    digits = get_data_info(compose_cfg().data)
    shapes = get_data_info(compose_cfg("data=shapes").data)
    labels = torch.tensor([0, 3, 7])
    assert edit.target_labels("3", labels, digits).tolist() == [3, 3, 3]
    assert edit.target_labels("same", labels, digits).tolist() == [0, 3, 7]
    blue_square = next(k for k in range(48) if shapes_caption(k) == "a blue square at the top right")
    red = edit.target_labels("red", torch.tensor([blue_square]), shapes)
    assert shapes_caption(int(red[0])) == "a red square at the top right"
    circle = edit.target_labels("circle", torch.tensor([blue_square]), shapes)
    assert shapes_caption(int(circle[0])) == "a blue circle at the top right"
    caption = edit.target_labels("a red square at the top right", torch.tensor([blue_square]), shapes)
    assert caption.tolist() == red.tolist()


@pytest.mark.parametrize("overrides, match", [
    (("task.target=10",), r"^task\.target='10' is not allowed: same or a class index 0\.\.9"),
    (("task.target=red",), r"^task\.target='red' is not allowed: an attribute value on captioned shapes"),
    (("data=shapes", "task.target=pink"), r"^task\.target='pink' is not allowed: same, a caption of .* red \| green"),
    (("data=shapes", "model=text_unet", "task.target=a pink cube"), r"^task\.target='a pink cube' is not allowed"),
    (("data.class_conditional=false", "task.target=3"), r"^task\.target='3' is not allowed: same for model=unet"),
    (("sampling.num_inference_steps=4", "task.strength=0.2"), r"^task\.strength=0\.2 is not allowed: >= 1/"),
    (("task.strength=1.5",), r"^task\.strength=1\.5 is not allowed: a number in \(0, 1\]"),
    (("data=shapes", "metric.cmmd=true"),
     r"^metric\.cmmd=True is not allowed: false with task=edit \(it computes prdc, fd_inf\)"),
    (("metric.fd_inf=true", "task.num_images=48"),
     r"^metric\.fd_inf=True is not allowed: at least 5 x metric\.fd_inf_points = 75 edited images"),
])
def test_bad_edit_settings_are_one_line_errors(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _validate(compose_cfg("task=edit", *overrides))


# ---------------------------------------------------------------------------- a diffusers pipeline's own components

@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """The tiny random-weight StableDiffusionPipeline (bench.models.tiny, as the inversion tests use it), saved."""
    from bench.models import tiny

    return tiny.save("sd", tmp_path_factory.mktemp("edit-pipeline") / "sd")


def _pipeline_args(path, *extra):
    return ("task=edit", "data=shapes", "model=pipeline", f"model.path={path}", "prompts=shapes", "device=cpu",
            "sampler=ddim", *extra)


@pytest.mark.parametrize("target, match", [
    ("3", r"^task\.target='3' is not allowed: same, a caption of .* or an attribute value"),
    ("a pink cube", r"^task\.target='a pink cube' is not allowed: same, a caption of"),
])
def test_a_prompt_pipeline_edits_towards_captions_only(compose_cfg, tiny_sd, target, match):
    with pytest.raises(ConfigError, match=match):
        _validate(compose_cfg(*_pipeline_args(tiny_sd, f"task.target={target}")))
    _validate(compose_cfg(*_pipeline_args(tiny_sd, "task.target=red")))


def test_a_pipeline_edit_is_diffusers_img2img(compose_cfg, tiny_sd, one_thread):
    """model=pipeline edits through its own unet, VAE and text encoder on its scheduler config with the configured
    sampler: on the same images, target captions, strength and per-image generators (seed + i), the edits equal
    diffusers' own StableDiffusionImg2ImgPipeline built from the same components and scheduler config, and the run
    makes int(S · s) UNet calls per image, twice that under CFG."""
    import dataclasses

    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

    from bench.keys import normalise
    from bench.metrics.cost import CostMeter
    from bench.sampling.rng import image_generators
    from bench.sampling.subject import sampling_call
    from bench.subjects import load_subject
    from bench.tasks import held_out, task_call
    from bench.validate import validate

    S, s, w, n = 10, 0.6, 3.0, 3
    cfg = normalise(compose_cfg(*_pipeline_args(tiny_sd, "task.target=red", f"task.num_images={n}",
                                                f"task.strength={s}", f"sampling.num_inference_steps={S}",
                                                f"sampling.guidance_scale={w}")))
    info = validate(cfg)
    subject, _ = load_subject(cfg, info, "cpu")
    assert isinstance(subject.scheduler, DDIMScheduler)
    real = next(held_out(cfg, info, n))
    target = edit.target_labels("red", real.labels, info)
    captions = [info.class_names[k] for k in target.tolist()]
    call = dataclasses.replace(task_call(sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model,
                                                       info, "cpu"), cfg), init=real.x, strength=s)
    meter = CostMeter("cpu")
    ours = torch.cat([b.x for b in edit.pipeline_edits(subject, call, captions, meter)])
    assert meter.summary()["nfe"] == 2 * int(S * s) == 12

    pipe = StableDiffusionImg2ImgPipeline(**subject.pipe.components)
    pipe.scheduler = DDIMScheduler.from_config(subject.scheduler.config)
    theirs = pipe(prompt=captions, image=(real.x + 1) / 2, strength=s, num_inference_steps=S, guidance_scale=w, eta=0.0,
                  generator=image_generators(int(cfg.sampling.seed), 0, n), output_type="pt").images
    err = float(((ours + 1) / 2 - theirs).abs().max())
    assert err < 1e-5, err
    assert float((ours - real.x).abs().mean()) > 1e-3  # an edit, not the input handed back


def test_a_pixel_pipeline_edit_is_the_img2img_loop(compose_cfg, tmp_path, one_thread):
    """An unconditional pixel pipeline (DDPMPipeline: UNet2DModel, no VAE): target ``same`` only, and its edit is
    the img2img loop written out here on its unet and scheduler (x_t = add_noise(x0, eps_i, t_start), eps_i from
    generator seed + i, then DDIM on the last int(S · s) timesteps)."""
    import dataclasses

    from bench.keys import normalise
    from bench.metrics.cost import CostMeter
    from bench.models import tiny
    from bench.sampling.rng import image_generators, initial_noise
    from bench.sampling.subject import sampling_call
    from bench.subjects import load_subject
    from bench.tasks import held_out, task_call
    from bench.validate import validate

    path = tiny.save("ddpm", tmp_path / "ddpm")
    args = ("task=edit", "data=shapes", "model=pipeline", f"model.path={path}", "device=cpu", "sampler=ddim")
    with pytest.raises(ConfigError, match=r"^task\.target='3' is not allowed: same for model=pipeline"):
        _validate(compose_cfg(*args, "task.target=3"))
    S, s, n = 10, 0.5, 2
    cfg = normalise(compose_cfg(*args, f"task.num_images={n}", f"task.strength={s}",
                                f"sampling.num_inference_steps={S}"))
    info = validate(cfg)
    subject, _ = load_subject(cfg, info, "cpu")
    x0 = next(held_out(cfg, info, n)).x
    call = dataclasses.replace(task_call(sampling_call(cfg.sampling, cfg.sampler, cfg.cost, cfg.metric, cfg.model,
                                                       info, "cpu"), cfg), init=x0, strength=s)
    meter = CostMeter("cpu")
    ours = torch.cat([b.x for b in edit.pipeline_edits(subject, call, None, meter)])
    assert meter.summary()["nfe"] == int(S * s)

    sched, unet = DDIMScheduler.from_config(subject.scheduler.config), subject.pipe.unet
    sched.set_timesteps(S)
    ts = sched.timesteps[S - int(S * s):]
    x = sched.add_noise(x0, initial_noise(image_generators(int(cfg.sampling.seed), 0, n), x0.shape[1:]), ts[:1])
    with torch.no_grad():
        for t in ts:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    assert len(ts) == 5 and float((ours - x.clamp(-1, 1)).abs().max()) < 1e-5


def test_a_pipeline_edit_cell_writes_its_row(compose_cfg, tiny_sd, tmp_path, one_thread):
    """The cell path end to end on the tiny pipeline: one row with the task's columns, NFE int(S · s) per image
    doubled under CFG, the faithfulness scores."""
    from bench.cell import run_cell

    row = run_cell(compose_cfg(*_pipeline_args(tiny_sd, "task.target=red", "task.num_images=4",
                                               "task.strength=0.5", "sampling.num_inference_steps=4",
                                               "sampling.guidance_scale=3", f"out_dir={tmp_path}")))
    assert row["status"] == "ok" and row["task"] == "edit" and row["num_real_images"] == row["n_gen"] == 4
    assert row["nfe"] == 2 * int(4 * 0.5) and row["key_settings"]["task.target"] == "red"
    assert row["edit_l2"] > 0 and 0 < row["edit_psnr"] < PSNR_MAX_DB and -1 <= row["edit_ssim"] <= 1


def test_faithfulness_scores():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8)
    same = edit.faithfulness(a, a)
    assert same["l2"].tolist() == [0] * 4 and same["psnr"].tolist() == [PSNR_MAX_DB] * 4
    assert torch.allclose(same["ssim"], torch.ones(4, dtype=torch.float64))
    b = (a.int() + 10).clamp(0, 255).to(torch.uint8)
    f = edit.faithfulness(b, a)
    mse = ((b.double() - a.double()) / 255).pow(2).flatten(1).mean(1)
    assert torch.allclose(f["psnr"], -10 * mse.log10()) and torch.allclose(f["l2"], (mse * 3 * 16 * 16).sqrt())
    assert (f["ssim"] < 1).all() and (f["ssim"] > 0.5).all()




# ------------------------------------------------------------------------------------------ end to end (the CLI)

@pytest.fixture(scope="module")
def sdedit_rows(tmp_path_factory):
    """Two strengths towards class 3 on the smoke digits model (the shared test model cache), each cell run as the CLI
    runs it: (rows by strength, results root)."""
    from hydra import compose, initialize_config_dir

    from bench.cell import run_cell
    from conftest import CONF_DIR

    out = tmp_path_factory.mktemp("sdedit")
    rows = {}
    for s in (0.2, 1.0):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("bench", overrides=[
                "experiment=smoke", "tracker=none", "task=edit", "task.target=3", f"task.strength={s}",
                "task.num_images=48", "sampling.num_inference_steps=10", "sampling.batch_size=16", f"out_dir={out}",
                "metric.prdc=true", "metric.fd_inf=true", "metric.fd_inf_points=5"])
        rows[s] = run_cell(cfg)
    return rows, out / "smoke"


def test_edit_rows(sdedit_rows, compose_cfg):
    from bench.data import build_dataset

    by, _ = sdedit_rows
    assert sorted(by) == [0.2, 1.0] and all(r["status"] == "ok" for r in by.values())
    low, high = by[0.2], by[1.0]
    assert (low["nfe"], high["nfe"]) == (2, 10)  # int(S · s) of S = 10 steps: diffusers' img2img
    assert low["task"] == "edit" and low["num_real_images"] == low["n_gen"] == 48 and low["real_split"] == "test"
    assert low["key_settings"]["task.target"] == "3" and low["cell_key"] != high["cell_key"]
    # realism against the 3s of the reference split only
    threes = int((build_dataset(compose_cfg().data, "train").y == 3).sum())
    assert low["ref_id"].endswith(":classes=3") and low["n_ref"] == threes
    # faithfulness falls with the strength: the weakly noised edit stays near its input
    assert low["edit_l2"] < high["edit_l2"] and low["edit_psnr"] > high["edit_psnr"] > 0
    assert 0 < high["edit_ssim"] < low["edit_ssim"] <= 1
    assert low["edit_source_accuracy"] > 0.9  # the digits CNN on the unedited held-out inputs
    assert 0 <= low["edit_accuracy"] <= 1 and low["fid"] > 0 and "clip_direction" not in low
    # beyond FID, on the same edits against the same reference: precision/recall, density/coverage, FD∞
    for r in (low, high):
        assert (r["prdc_n_gen"], r["prdc_n_ref"]) == (48, threes) and (r["pr_k"], r["dc_k"]) == (3, 5)
        assert all(0 <= r[k] <= 1 for k in ("precision", "recall", "coverage")) and r["density"] >= 0
        assert np.isfinite(r["fd_inf"]) and r["fd_inf_n_max"] == 48 and r["fd_inf_points"] == 5


def test_edit_report_draws_the_tradeoff(sdedit_rows, tmp_path):
    from bench.report import build_report

    _, root = sdedit_rows
    report, out = build_report([str(root)], str(tmp_path / "report"))
    assert report.title.endswith("SDEdit strength × target")
    assert (out / "plots" / "tradeoff.png").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "Pareto front: FID against L2 to the input" in md and "| strength" in md


def test_edit_scores_on_real_images(compose_cfg):
    """The scorer against real images standing in for edits (no model): held-out shapes 'recoloured red' by real red
    shapes of each target caption score high success, a positive CLIP direction and a lower FID against the red
    reference than the unedited inputs, which are perfectly faithful and fail the edit."""
    from bench.data import build_dataset

    cfg = compose_cfg("data=shapes", "data.num_train=600", "task=edit", "task.target=red")
    info = get_data_info(cfg.data)
    ds = build_dataset(cfg.data, "test")
    source = ds.y[:48]
    target = edit.target_labels("red", source, info)
    edits = torch.stack([ds.x[int((ds.y == k).nonzero()[0])] for k in target.tolist()])
    scores = {}
    for name, x in (("edited", edits), ("unedited", ds.x[:48])):
        scorer = edit.EditScorer(cfg, info, sorted(set(target.tolist())))
        scorer.update(x, ds.x[:48], source, target)
        scores[name] = scorer.compute()
    done, none = scores["edited"], scores["unedited"]
    red = int((build_dataset(cfg.data, "train").y < 12).sum())  # classes 0..11: the red captions
    assert done["ref_id"].endswith(":classes=0,1,2,3,4,5,6,7,8,9,10,11") and done["n_ref"] == red > 100
    assert none["edit_l2"] == 0 and none["edit_psnr"] == PSNR_MAX_DB and none["edit_ssim"] == pytest.approx(1)
    assert done["edit_accuracy"] > 0.8 and none["edit_accuracy"] < 0.3  # 12 of the 48 inputs are red already
    assert done["clip_direction"] > 0.1 and none["clip_direction"] == 0
    assert done["clip_score"] > none["clip_score"] and done["fid"] < none["fid"]
