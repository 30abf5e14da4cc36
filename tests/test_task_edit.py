"""task=edit (SDEdit): diffusers' img2img truncation, the forward noising, targets, the scores, and the task end to
end through the real CLI (smoke model), with its bad inputs."""
import types

import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline

from bench.data import get_data_info, shapes_caption
from bench.sampling.img2img import img2img_timesteps, noise_to
from bench.schema import ConfigError
from bench.tasks import edit


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
])
def test_bad_edit_settings_are_one_line_errors(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        _validate(compose_cfg("task=edit", *overrides))


def test_a_loaded_pipeline_is_refused(compose_cfg):
    """Its own __call__ starts from noise: never a silent generation recorded as an edit."""
    cfg = compose_cfg("task=edit", "model=pipeline", "model.path=/x")
    with pytest.raises(ConfigError, match=r"^model='pipeline' is not allowed: a harness model family"):
        edit.check(cfg, get_data_info(cfg.data))


def test_faithfulness_scores():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8)
    same = edit.faithfulness(a, a)
    assert same["l2"].tolist() == [0] * 4 and same["psnr"].tolist() == [edit.PSNR_MAX_DB] * 4
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
                "task.num_images=48", "sampling.num_inference_steps=10", "sampling.batch_size=16", f"out_dir={out}"])
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
    assert none["edit_l2"] == 0 and none["edit_psnr"] == edit.PSNR_MAX_DB and none["edit_ssim"] == pytest.approx(1)
    assert done["edit_accuracy"] > 0.8 and none["edit_accuracy"] < 0.3  # 12 of the 48 inputs are red already
    assert done["clip_direction"] > 0.1 and none["clip_direction"] == 0
    assert done["clip_score"] > none["clip_score"] and done["fid"] < none["fid"]
