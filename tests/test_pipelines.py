"""model=pipeline: local diffusers pipelines benchmarked as saved (bench/sampling/diffusers_pipeline.py), tested with
tiny random-weight pipelines built offline (bench/models/tiny.py): DDPM (linear/eps and cosine/v), Stable Diffusion
(UNet2DConditionModel + CLIPTextModel + AutoencoderKL + a CLIP tokenizer from local vocabulary files) and SD3 (flow
matching, FlowMatchEulerDiscreteScheduler)."""
import json

import numpy as np
import pytest
import torch

from bench.data.prompts import load_prompts
from bench.metrics.cost import CostMeter
from bench.models import tiny
from bench.sampling import diffusers_pipeline as pipelines
from bench.schema import ConfigError
from bench.validate import validate

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16  # data=shapes' image size


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_pipelines")
    return {kind: tiny.save(kind, root / kind) for kind in tiny.KINDS}


def _cfg(compose_cfg, path, *overrides):
    prompts = [] if "ddpm" in str(path) else ["prompts=shapes"]
    return compose_cfg("data=shapes", "model=pipeline", f"model.path={path}", "device=cpu", *prompts, *overrides)


def _load(compose_cfg, path, *overrides):
    cfg = _cfg(compose_cfg, path, *overrides)
    info = validate(cfg)
    loaded, _ = pipelines.load(cfg, info, "cpu")
    return cfg, loaded, loaded.scheduler


def _harness(loaded, cfg, n, batch_size, guidance=1.0):
    meter = CostMeter("cpu")
    x = torch.cat([b.x for b in pipelines.sample(loaded, num_samples=n, batch_size=batch_size, seed=7,
                                                 num_inference_steps=cfg.sampling.num_inference_steps,
                                                 guidance_scale=guidance, size=SIZE, cost=meter, progress=False)])
    return x, meter


def _own_call(loaded, scheduler, cfg, n, guidance=1.0):
    """The pipeline's own __call__, one image at a time, generator seed + i: what a user of diffusers would run."""
    loaded.pipe.scheduler = scheduler
    calls = []
    den = getattr(loaded.pipe, loaded.checkpoint.denoiser)
    hook = den.register_forward_hook(lambda m, args, kwargs_out=None: calls.append(1))
    out = []
    try:
        for i in range(n):
            kw = pipelines.call_kwargs(loaded, range(i, i + 1), num_inference_steps=cfg.sampling.num_inference_steps,
                                       guidance_scale=guidance, eta=0.0, size=SIZE,
                                       gens=[torch.Generator().manual_seed(7 + i)])
            out.append(pipelines.to_model_space(loaded.pipe(**kw).images))
    finally:
        hook.remove()
    return torch.cat(out), len(calls)


@pytest.mark.parametrize("kind,sampler,guidance", [
    ("ddpm", "ddpm", 1.0), ("ddpm-cosine-v", "dpmpp", 1.0), ("sd", "ddim", 1.0), ("sd", "euler", 3.0),
    ("sd3", "flow_euler", 2.0),
])
def test_harness_equals_the_pipelines_own_call(kind, sampler, guidance, tiny_dirs, compose_cfg):
    """Batches of 3 through the harness = one image at a time through pipe(...) with generator seed + i (max abs diff
    <= 1e-4); NFE = the denoiser's counted rows per image (CFG's batched pass counts 2)."""
    cfg, loaded, scheduler = _load(compose_cfg, tiny_dirs[kind], f"sampler={sampler}",
                                   f"sampling.guidance_scale={guidance}", "sampling.num_inference_steps=4")
    got, meter = _harness(loaded, cfg, 4, 3, guidance)
    want, calls = _own_call(loaded, scheduler, cfg, 4, guidance)
    assert got.shape == (4, 3, SIZE, SIZE) and float((got - want).abs().max()) <= 1e-4
    assert float(got.std()) > 0.01  # not a constant image
    nfe = meter.summary()["nfe"]
    assert nfe == calls / 4 * (2 if guidance > 1 else 1)  # one hooked call per step (a 2-row call under CFG)
    assert nfe == 4 * (2 if guidance > 1 else 1)


def test_ddpm_pipeline_through_the_harness_loop_equals_its_own_call(tiny_dirs, compose_cfg):
    """For a local DDPMPipeline both paths agree: the harness's own loop (its UNet behind the denoiser interface, the
    checkpoint's scheduler config) and the pipeline's __call__ (clipped to [-1, 1] as the pipeline outputs)."""
    from bench.models.unet import UNetDenoiser
    from bench.sampling import sample

    cfg, loaded, scheduler = _load(compose_cfg, tiny_dirs["ddpm"], "sampler=ddpm", "sampling.num_inference_steps=5")
    assert scheduler.config.clip_sample is True  # DDPMScheduler()'s default, kept from the checkpoint
    model = UNetDenoiser(loaded.pipe.unet).eval()
    ours = torch.cat([b.x for b in sample(model, scheduler, shape=(3, SIZE, SIZE), num_samples=4, batch_size=2,
                                          seed=7, num_inference_steps=5, guidance_scale=1.0, num_classes=0,
                                          device="cpu", cost=CostMeter("cpu"), progress=False)])
    theirs, _ = _harness(loaded, cfg, 4, 4)
    assert float((ours.clamp(-1, 1) - theirs).abs().max()) <= 1e-4


def test_scheduler_comes_from_the_checkpoint(tiny_dirs, compose_cfg):
    """cosine/v checkpoint: every sampler is built with its prediction type and betas; the SD checkpoint's leading
    spacing and scaled_linear betas; SD3's shift on the flow samplers."""
    for sampler in ("ddim", "dpmpp", "euler", "heun", "unipc", "deis", "ddpm"):
        _, _, s = _load(compose_cfg, tiny_dirs["ddpm-cosine-v"], f"sampler={sampler}")
        assert (s.config.prediction_type, s.config.beta_schedule) == ("v_prediction", "squaredcos_cap_v2"), sampler
    _, _, s = _load(compose_cfg, tiny_dirs["sd"], "sampler=dpmpp")
    assert (s.config.beta_schedule, s.config.beta_start, s.config.timestep_spacing) == ("scaled_linear", 0.00085,
                                                                                        "leading")
    assert s.config.algorithm_type == "dpmsolver++"
    _, _, s = _load(compose_cfg, tiny_dirs["sd3"], "sampler=dpmpp")
    assert s.config.use_flow_sigmas and s.config.flow_shift == 3.0 and s.config.prediction_type == "flow_prediction"


@pytest.mark.parametrize("kind,overrides,fragment", [
    ("ddpm-cosine-v", ["objective=eps"], "objective='eps' is not allowed: auto or v"),
    ("ddpm-cosine-v", ["schedule=linear"], "beta_schedule=squaredcos_cap_v2"),
    ("sd", ["schedule=scaled_linear", "schedule.beta_end=0.02"], "beta_end=0.012"),
    ("sd", ["objective=flow"], "auto or eps"),
    ("sd3", ["sampler=ddim"], "one of dpmpp, unipc, flow_euler for this flow checkpoint"),
    ("sd", ["sampling.guidance_scale=0.5"], "0 (empty prompt), 1 (prompt, no CFG) or > 1"),
    ("ddpm", ["sampling.guidance_scale=2"], "1 for DDPMPipeline (it takes no guidance)"),
    ("ddpm", ["sampler=dpmpp", "sampler.eta=0.5"], "sampler.eta=0.5"),
    ("ddpm", ["prompts=shapes"], "none for DDPMPipeline"),
    ("ddpm", ["data.image_size=8"], "16 (the checkpoint's sample_size)"),
    ("ddpm", ["model.cpu_offload=true"], "model.cpu_offload=True is not allowed: false without a CUDA"),
])
def test_contradicting_config_is_refused_in_one_line(kind, overrides, fragment, tiny_dirs, compose_cfg):
    cfg = _cfg(compose_cfg, tiny_dirs[kind], *overrides)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_text_pipeline_needs_prompts_and_objective_auto_needs_a_pipeline(tiny_dirs, compose_cfg):
    validate(_cfg(compose_cfg, tiny_dirs["sd"], "schedule=scaled_linear", "objective=eps"))  # agrees: accepted
    with pytest.raises(ConfigError, match="prompts='none' is not allowed: shapes or file"):
        validate(compose_cfg("data=shapes", "model=pipeline", f"model.path={tiny_dirs['sd']}"))
    with pytest.raises(ConfigError, match="objective='auto' is not allowed"):
        validate(compose_cfg("objective=auto"))
    with pytest.raises(ConfigError, match="no such directory"):
        validate(compose_cfg("data=shapes", "model=pipeline", "model.path=/nonexistent/dir", "prompts=shapes"))
    with pytest.raises(ConfigError, match="not in the cache and this harness never downloads"):
        validate(compose_cfg("data=shapes", "model=pipeline", "model.path=nobody/no-such-pipeline",
                             "prompts=shapes"))


def test_guidance_follows_the_models_conditioning(tiny_dirs, compose_cfg):
    """Before: an unconditional pretrained UNet with data=shapes and guidance 2 was accepted, recorded guidance 2 and
    NFE 20, and its samples were bitwise those of the unguided 10-NFE loop. Shown here on the loop, then refused."""
    from bench.models import load_pretrained_unet
    from bench.sampling import build_sampler, sample

    cfg = compose_cfg("data=shapes", f"model.pretrained={tiny_dirs['ddpm']}", "sampling.guidance_scale=2")
    model = load_pretrained_unet(str(tiny_dirs["ddpm"])).eval()
    sched = build_sampler(cfg.sampler, cfg.schedule, "eps")
    runs = {}
    for g in (1.0, 2.0):
        meter = CostMeter("cpu")
        runs[g] = (torch.cat([b.x for b in sample(model, sched, shape=(3, SIZE, SIZE), num_samples=2, batch_size=2,
                                                  seed=0, num_inference_steps=10, guidance_scale=g, num_classes=48,
                                                  device="cpu", cost=meter, progress=False)]), meter.summary()["nfe"])
    a, b = runs[1.0][0], runs[2.0][0]  # the silent no-op: the same samples (up to batch-shape GEMM rounding)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max()) and (runs[1.0][1], runs[2.0][1]) == (10, 20)
    assert model.num_classes == 0  # what the run now samples with (the cell samples with the model's classes)
    with pytest.raises(ConfigError, match=r"sampling.guidance_scale=2.0 is not allowed: 1 for model.pretrained="):
        validate(cfg)


def test_pretrained_pipeline_dir_whose_scheduler_disagrees_is_refused(tiny_dirs, compose_cfg):
    cfg = compose_cfg("data=shapes", f"model.pretrained={tiny_dirs['ddpm-cosine-v']}")
    with pytest.raises(ConfigError, match=r"objective=v \(run: eps\).*use model=pipeline"):
        validate(cfg)


def test_prompt_files_subsets_and_checksums(tmp_path, compose_cfg):
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\na dog\na bird\n")
    tsv = tmp_path / "parti.tsv"
    tsv.write_text("Prompt\tCategory\na red cube\tshapes\na blue ball\tshapes\n")
    csv = tmp_path / "coco.csv"
    csv.write_text("image_id,caption\n1,a man riding a horse\n2,two dogs\n3,a kitchen\n")
    p = load_prompts(compose_cfg("prompts=file", f"prompts.path={txt}").prompts, compose_cfg().data)
    assert p.texts == ("a cat", "a dog", "a bird") and p.id == "p.txt"
    assert load_prompts(compose_cfg("prompts=file", f"prompts.path={tsv}").prompts, None).texts == ("a red cube",
                                                                                                  "a blue ball")
    sub = compose_cfg("prompts=file", f"prompts.path={csv}", "prompts.num_prompts=2", "prompts.seed=3").prompts
    a, b = load_prompts(sub, None), load_prompts(sub, None)
    assert len(a.texts) == 2 and a.texts == b.texts and set(a.texts) < {"a man riding a horse", "two dogs",
                                                                          "a kitchen"}
    full = load_prompts(compose_cfg("prompts=file", f"prompts.path={csv}").prompts, None)
    csv.write_text("image_id,caption\n1,a man riding a horse\n2,two cats\n3,a kitchen\n")
    assert load_prompts(compose_cfg("prompts=file", f"prompts.path={csv}").prompts, None).sha256 != full.sha256
    four = compose_cfg("prompts=file", f"prompts.path={txt}", "prompts.images_per_prompt=2").prompts
    assert [load_prompts(four, None).of(i) for i in range(7)] == [0, 0, 1, 1, 2, 2, 0]
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "id": 5, "caption": " A cat. "},
                                                               {"image_id": 2, "id": 6, "caption": "A dog."}]}))
    assert load_prompts(compose_cfg("prompts=file", f"prompts.path={coco}").prompts, None).texts == ("A cat.",
                                                                                                   "A dog.")
    with pytest.raises(ConfigError, match="prompts.column='nope' is not allowed: a column of coco.csv"):
        load_prompts(compose_cfg("prompts=file", f"prompts.path={csv}", "prompts.column=nope").prompts, None)
    shapes = load_prompts(compose_cfg("data=shapes", "prompts=shapes").prompts, compose_cfg("data=shapes").data)
    assert shapes.texts[0] == "a red circle at the top left" and shapes.labels[:2] == (0, 1)


def test_cli_cell_records_the_checkpoint_and_prompts(tiny_dirs, tmp_path, monkeypatch, capsys):
    """One real CLI cell on the tiny SD pipeline: an ok row with FID/KID/IS/CLIP score, the effective scheduler
    (scheduler.json), the prompt set's id and checksum, per-prompt CLIP scores; changing a weight file changes the
    cell key (the checkpoint is keyed by content)."""
    from bench.keys import cell_key
    from cli_runner import in_process

    args = ["bench", "data=shapes", "model=pipeline", f"model.path={tiny_dirs['sd']}", "prompts=shapes",
            "sampler=dpmpp", "sampling.num_inference_steps=3", "sampling.guidance_scale=2", "sampling.num_samples=8",
            "sampling.batch_size=4", "metric.kid_subset_size=4", "metric.kid_subsets=2", "metric.is_splits=1",
            "tracker=none", "device=cpu", "hydra.mode=RUN", f"out_dir={tmp_path / 'runs'}",
            f"cache_dir={tmp_path / 'cache'}", "trainer.enable_progress_bar=false"]
    code, err = in_process(capsys, monkeypatch, *args[1:])
    assert code == 0, err[-20:]
    (row,) = [json.loads(line) for line in (tmp_path / "runs" / "default" / "results.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and row["nfe"] == 6 and np.isfinite([row["fid"], row["kid"], row["is"],
                                                                      row["clip_score"]]).all()
    assert (row["pipeline_class"], row["objective"], row["schedule"], row["prompts_id"]) == (
        "StableDiffusionPipeline", "eps", "scaled_linear", "shapes")
    assert row["scheduler_class"] == "DPMSolverMultistepScheduler" and len(row["prompts_sha256"]) == 16
    assert (row["model_dtype"], row["attention_slicing"], row["compile"]) == ("float32", False, False)
    cell = tmp_path / "runs" / "default" / row["cell_dir"]
    assert json.loads((cell / "scheduler.json").read_text())["beta_schedule"] == "scaled_linear"
    per_prompt = (cell / "prompts.csv").read_text().splitlines()
    assert per_prompt[0] == "prompt,images,clip_score,clip_score_std" and len(per_prompt) == 1 + 8
    from hydra import compose, initialize_config_dir

    from conftest import CONF_DIR
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("bench", overrides=args[1:])
    before = cell_key(cfg)
    w = tiny_dirs["sd"] / "vae" / "diffusion_pytorch_model.safetensors"
    data = w.read_bytes()
    try:
        w.write_bytes(data[:-4] + bytes(4))
        from bench.utils import files_fingerprint  # memoised by stat: a same-size rewrite must still be seen
        assert cell_key(cfg) != before
    finally:
        w.write_bytes(data)
    assert files_fingerprint is not None
