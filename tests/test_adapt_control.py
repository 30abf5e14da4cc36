"""Control adapters (bench/adapt/control.py) and masks as controls (bench/data/masks.py): the shapes annotator finds
the drawn masks, IoU/F1 by hand, ControlNet's zero convolutions leave the base model exactly unchanged, the
T2I-Adapter meets the UNet's features, the control reaches both branches of CFG in the one loop."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bench.adapt.control import ControlledUNet, controlnet, t2i_adapter, t2i_adapter_shapes, t2i_feature_shapes
from bench.data import build_dataset, get_data_info
from bench.data.masks import control_masks, extract_masks, iou_f1
from bench.data.shapes import SHAPES_POSITIONS, shapes_class
from bench.metrics.cost import CostMeter
from bench.models import build_model
from bench.sampling import build_sampler, sample

pytestmark = pytest.mark.usefixtures("one_thread")

SD_LAYOUT = ("model.down_block_types=[CrossAttnDownBlock2D,DownBlock2D]",
             "model.up_block_types=[UpBlock2D,CrossAttnUpBlock2D]")  # cross-attention at full resolution, as SD 1.x
CONF = Path(__file__).resolve().parent.parent / "conf"
ADAPTER = OmegaConf.create({"embedding_channels": 8, "num_res_blocks": 1, "conditioning_scale": 1.0})


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=g)
    t = torch.tensor([10.0, 300.0, 700.0, 999.0])
    y = torch.tensor([0, 7, 47, 48])  # 48: the null class
    return x, t, y, (torch.rand(4, 1, 16, 16, generator=g) > 0.5).float()


def test_annotator_finds_the_drawn_masks(compose_cfg):
    """On the data set's items, RGB and grey, the re-extracted mask IS the drawn one (every pixel, pixels covered
    exactly half included); a background-only image has an empty mask."""
    for channels in (3, 1):
        items = build_dataset(compose_cfg("data=shapes", "data.num_train=960", f"data.channels={channels}").data,
                              "train")
        iou, f1 = iou_f1(items.masks, extract_masks(items.x))
        assert iou.min() == 1.0 and f1.min() == 1.0 and 0.08 < float(items.masks.float().mean()) < 0.2
    rgb = build_dataset(compose_cfg("data=shapes", "data.num_train=48").data, "train")
    background = rgb.x[:2].clone()
    background[:] = rgb.x[0, :, 0, 0].view(1, 3, 1, 1)  # the corner pixel: no shape there
    assert not extract_masks(background).any()


def test_iou_and_f1_by_hand():
    a = torch.zeros(3, 1, 4, 4)
    b = torch.zeros(3, 1, 4, 4)
    a[0, 0, :2, :2] = 1  # 4 pixels
    b[0, 0, :2, :3] = 1  # 6 pixels, 4 shared: IoU 4/6, F1 8/10
    a[1, 0, 0, 0] = 1  # disjoint: 0, 0
    b[1, 0, 3, 3] = 1
    iou, f1 = iou_f1(a, b)  # image 2: both empty: 1, 1
    np.testing.assert_allclose(iou.numpy(), [4 / 6, 0, 1])
    np.testing.assert_allclose(f1.numpy(), [0.8, 0, 1])


def test_control_masks_follow_the_class_and_the_seed(compose_cfg):
    data = compose_cfg("data=shapes").data
    labels, seeds = torch.arange(48), torch.arange(100, 148)
    m = control_masks(data, labels, seeds)
    assert m.shape == (48, 1, 16, 16) and set(m.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(m, control_masks(data, labels, seeds))  # a pure function of (class, seed)
    assert not torch.equal(m, control_masks(data, labels, seeds + 1))
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    cy, cx = ((m[:, 0] * rows).sum((1, 2)) / m.sum((1, 2, 3)), (m[:, 0] * cols).sum((1, 2)) / m.sum((1, 2, 3)))
    pos = torch.tensor([SHAPES_POSITIONS.index(shapes_class(k)[2]) for k in range(48)])
    assert torch.equal(cy < 8, (pos < 2)) and torch.equal(cx < 8, (pos % 2 == 0))  # in its caption's quadrant


def test_controlnet_zero_convolutions_leave_the_base_model_unchanged(compose_cfg, inputs):
    """At initialisation every ControlNet residual passes a zero convolution: the output is the base model's, bit for
    bit, for any control, on both UNet layouts; the T2I-Adapter (no zero init) moves it, unless its scale is 0."""
    x, t, y, control = inputs
    cfg = compose_cfg("data=shapes", "model=text_unet")
    info = get_data_info(cfg.data)
    for overrides in ((), SD_LAYOUT):
        torch.manual_seed(0)
        base = build_model(compose_cfg("data=shapes", "model=text_unet", *overrides).model, info).eval()
        with torch.no_grad():
            want = base(x, t, y)
            model = controlnet(ADAPTER, copy.deepcopy(base)).eval()
            assert torch.equal(model(x, t, y, control=control), want)
            assert torch.equal(model(x, t, y, control=1 - control), want)
            zero = model.adapter.net.controlnet_down_blocks[0].weight
            assert zero.abs().max() == 0 and all(p.requires_grad for p in model.adapter.parameters())
            assert not any(p.requires_grad for p in model.base.parameters())
    with torch.no_grad():
        model = t2i_adapter(ADAPTER, copy.deepcopy(base)).eval()
        assert float((model(x, t, y, control=control) - want).abs().max()) > 1e-3
        model.conditioning_scale = 0.0
        assert torch.equal(model(x, t, y, control=control), want)
        with pytest.raises(ValueError, match="control="):
            model(x, t, y)


def test_t2i_adapter_features_meet_the_unet(compose_cfg):
    """diffusers adds a T2I feature inside a cross-attention down block (before its downsampler) but after a plain
    one: the adapter's pyramid (downscale_factor=1) fits the SD layout, not a plain block first."""
    info = get_data_info(compose_cfg("data=shapes").data)
    sd = build_model(compose_cfg("data=shapes", "model=text_unet", *SD_LAYOUT).model, info).unet
    plain_first = build_model(compose_cfg("data=shapes", "model=text_unet").model, info).unet
    assert t2i_feature_shapes(sd.config.down_block_types, [16, 32], 16) == [(16, 16), (32, 8)]
    assert t2i_adapter_shapes([16, 32], 16) == [(16, 16), (32, 8)]
    assert t2i_feature_shapes(plain_first.config.down_block_types, [16, 32], 16) == [(16, 8), (32, 8)]


def test_the_loop_gives_the_control_to_both_cfg_branches(compose_cfg, inputs):
    """Under CFG (guidance 3: one 2B forward) and unguided (0), each image's control reaches the model and comes
    back in its batch: the samples equal a loop over the model with that control bound by hand."""
    cfg = compose_cfg("data=shapes", "model=text_unet", *SD_LAYOUT)
    info = get_data_info(cfg.data)
    torch.manual_seed(0)
    model = t2i_adapter(ADAPTER, build_model(cfg.model, info)).eval()
    sched = build_sampler(cfg.sampler, cfg.schedule, "eps")
    seen = []

    def control(labels, seeds):
        seen.append((labels.clone(), seeds.clone()))
        return control_masks(cfg.data, labels, seeds)

    for g in (3.0, 0.0):
        seen.clear()
        kw = dict(shape=(3, 16, 16), num_samples=3, batch_size=2, seed=5, num_inference_steps=3, guidance_scale=g,
                  num_classes=48, device="cpu", progress=False)
        got = list(sample(model, sched, cost=CostMeter("cpu"), control=control, **kw))
        assert [s.tolist() for _, s in seen] == [[5, 6], [7]]  # seed + i
        assert [lab.tolist() for lab, _ in seen] == [[0, 1], [2]]  # i % 48, unguided too
        masks = control_masks(cfg.data, torch.arange(3), torch.arange(5, 8))
        assert torch.equal(torch.cat([b.control for b in got]), masks)
        for b in got:  # the same images with the control bound to the model by hand
            bound = _Bound(model, masks[b.index])
            want = next(sample(bound, sched, cost=CostMeter("cpu"), **{**kw, "num_samples": len(b.index)},
                               start=int(b.index[0])))
            assert torch.equal(want.x, b.x), g


class _Bound(torch.nn.Module):
    def __init__(self, model: ControlledUNet, control):
        super().__init__()
        self.model, self.control = model, control

    def forward(self, x, t, class_labels=None):
        reps = x.shape[0] // self.control.shape[0]  # CFG's 2B rows: the control twice
        return self.model(x, t, class_labels, control=self.control.repeat(reps, 1, 1, 1))


# ----------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("overrides,fragments", [
    (("adapter=controlnet",), ("adapter.kind='controlnet' is not allowed: a data set drawn with masks (data=shapes)",
                               "data=digits has no masks")),
    (("adapter=t2i_adapter", "data=shapes", "model=unet"), ("model='unet' is not allowed: text_unet",)),
    (("adapter=t2i_adapter", "data=shapes", "model=text_unet"),
     ("model.down_block_types=['DownBlock2D', 'CrossAttnDownBlock2D'] is not allowed", "[(16, 8), (32, 8)]",
      "[(16, 16), (32, 8)]")),
    (("adapter=controlnet", "data=shapes", "model=text_unet", "adapter.conditioning_scale=-1"),
     ("adapter.conditioning_scale=-1",)),
    (("adapter=controlnet", "data=shapes", "model=text_unet", "adapter.path=/tmp/x"),
     ("adapter.path='/tmp/x' is not allowed: null with model=text_unet",)),
])
def test_bad_control_settings_are_one_line(compose_cfg, overrides, fragments):
    from bench.schema import ConfigError
    from bench.validate import validate

    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*overrides))
    msg = str(e.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg


def test_a_control_on_data_without_masks_through_the_cli(tmp_path, capsys, monkeypatch, bench_cache):
    from cli_runner import in_process

    out = tmp_path / "runs"
    code, err = in_process(capsys, monkeypatch, "experiment=smoke", "tracker=none", "adapter=controlnet",
                           f"out_dir={out}")
    assert code == 2 and sum(line.startswith("bench: error:") for line in err) == 1, err
    assert err[-1].startswith("bench: error: adapter.kind='controlnet' is not allowed: a data set drawn with masks")
    assert not list(bench_cache.rglob("*.safetensors")) and not list(out.rglob("results.jsonl"))


def test_settings_of_other_kinds_have_no_effect(compose_cfg):
    """conditioning_scale is LoRA's no-op, lora_scale the ControlNet's: normalised away, no key moves."""
    from bench import keys

    lora = compose_cfg("adapter=lora")
    assert keys.cell_key(keys.normalise(compose_cfg("adapter=lora", "adapter.conditioning_scale=2"))) == \
        keys.cell_key(lora)
    cn = compose_cfg("data=shapes", "model=text_unet", "adapter=controlnet")
    assert keys.cell_key(keys.normalise(compose_cfg("data=shapes", "model=text_unet", "adapter=controlnet",
                                                    "adapter.num_res_blocks=5"))) == keys.cell_key(cn)
    assert keys.cell_key(compose_cfg("data=shapes", "model=text_unet", "adapter=controlnet",
                                     "adapter.conditioning_scale=2")) != keys.cell_key(cn)


# ------------------------------------------------------------------------------------ trained, cached, scored

@pytest.fixture(scope="module")
def controlled_rows(tmp_path_factory):
    """A base text UNet (SD layout) on shapes; a ControlNet and a T2I-Adapter trained on it through the runner and
    the cache; rows of the base, the ControlNet at scales 0 and 1, and the T2I-Adapter at 1."""
    from hydra import compose, initialize_config_dir

    from bench.cell import run_cell
    from bench.schema import register

    register()
    root = tmp_path_factory.mktemp("control")
    common = ["experiment=smoke", "tracker=none", f"out_dir={root}/runs", f"cache_dir={root}/cache", "data=shapes",
              "data.num_train=480", "model=text_unet", *SD_LAYOUT, "train.max_steps=12", "train.batch_size=32",
              "sampling.num_samples=32", "sampling.batch_size=32", "sampling.num_inference_steps=3",
              "metric.kid_subset_size=16"]
    small = ["adapter.max_steps=4", "adapter.batch_size=16", "adapter.warmup_steps=1", "adapter.embedding_channels=8",
             "adapter.num_res_blocks=1"]

    def run(*overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return run_cell(compose("bench", overrides=[*common, *overrides]))

    return {"base": run(), "cn0": run("adapter=controlnet", *small, "adapter.conditioning_scale=0"),
            "cn1": run("adapter=controlnet", *small), "t2i": run("adapter=t2i_adapter", *small), "root": root}


def test_conditioning_scale_zero_samples_the_base_model(controlled_rows):
    """Residuals x 0: the base model's images, so its scores to the last bit, with control fidelity beside them."""
    base, zero, one = controlled_rows["base"], controlled_rows["cn0"], controlled_rows["cn1"]
    assert zero["fid"] == base["fid"] and zero["kid"] == base["kid"] and zero["clip_score"] == base["clip_score"]
    assert "control_iou" not in base and 0 <= zero["control_iou"] <= 1 and 0 <= zero["control_f1"] <= 1
    assert zero["control_iou"] <= zero["control_f1"]  # F1 = 2 IoU / (1 + IoU) per image
    assert one["fid"] != base["fid"] and one["cell_key"] != zero["cell_key"]
    assert (zero["conditioning_scale"], one["conditioning_scale"]) == (0.0, 1.0)


def test_a_control_adapter_is_trained_cached_and_keyed_on_its_base(controlled_rows):
    from safetensors.torch import load_file

    base, zero, one, t2i = (controlled_rows[k] for k in ("base", "cn0", "cn1", "t2i"))
    assert one["adapter_key"] == zero["adapter_key"] == one["model_key"] != t2i["adapter_key"]  # scale: cell only
    assert one["base_model_key"] == t2i["base_model_key"] == base["model_key"] and one["train_steps"] == 12
    for row, prefix in ((one, "adapter.net."), (t2i, "adapter.net.")):
        path = controlled_rows["root"] / "cache" / "models" / row["adapter_key"] / "model.safetensors"
        state = load_file(path)
        assert all(k.startswith(prefix) for k in state)  # the adapter's weights only, not the base's
        assert sum(v.numel() for v in state.values()) == row["adapter_trainable_params"]
        assert row["adapter_bytes"] == path.stat().st_size and row["adapter_train_steps"] == 4
        assert row["adapter_train_seconds"] > 0 and row["nfe"] == 3
    zero_convs = load_file(controlled_rows["root"] / "cache" / "models" / one["adapter_key"] / "model.safetensors")
    assert float(zero_convs["adapter.net.controlnet_mid_block.weight"].abs().max()) > 0  # trained off zero
    assert one["adapter"] == "controlnet" and t2i["adapter"] == "t2i_adapter" and "adapter_rank" not in t2i


# ------------------------------------------------------------------------- a given ControlNet on a pipeline

@pytest.fixture(scope="module")
def tiny_sd_controlnet(tmp_path_factory):
    """The tiny random-weight Stable Diffusion pipeline (built offline) and a ControlNet for it: from_unet with a
    two-level embedding (16 px control -> the 8 x 8 latents), its zero convolutions made random so it steers."""
    from diffusers import ControlNetModel, StableDiffusionPipeline

    from bench.models import tiny

    root = tmp_path_factory.mktemp("pipeline_controlnet")
    path = tiny.save("sd", root / "sd")
    net = ControlNetModel.from_unet(StableDiffusionPipeline.from_pretrained(path).unet,
                                    conditioning_embedding_out_channels=(8, 16))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "controlnet_" in name and "cond_embedding" not in name or "conv_out" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    net.save_pretrained(root / "controlnet")
    return path, root / "controlnet", sum(p.numel() for p in net.parameters())


def test_a_controlnet_directory_on_a_pipeline(tiny_sd_controlnet, pipeline_run):
    """StableDiffusionControlNetPipeline through the harness: at scale 0 the pipeline's own images, at scale 1 other
    ones equal to the pipeline's own __call__ one image at a time (generator seed + i, that image's mask); the row
    names the ControlNet (parameters, bytes, scale) and a key of the pipeline and the directory."""
    from bench.sampling import diffusers_pipeline as pipelines

    path, net_dir, params = tiny_sd_controlnet
    plain = pipeline_run(path).x
    zero = pipeline_run(path, "adapter=controlnet", f"adapter.path={net_dir}", "adapter.conditioning_scale=0").x
    run = pipeline_run(path, "adapter=controlnet", f"adapter.path={net_dir}")
    cfg, subject, train_info, one, batches = run.cfg, run.subject, run.train_info, run.x, run.batches
    assert float((zero - plain).abs().max()) <= 1e-5 and float((one - plain).abs().max()) > 1e-3
    p = subject.prompts
    masks = control_masks(cfg.data, torch.as_tensor([p.labels[p.of(i)] for i in range(3)]), torch.arange(3))
    assert torch.equal(torch.cat([b.control for b in batches]), masks)  # scored against these (IoU, F1)
    own = []
    for i in range(3):  # the pipeline's own __call__, as a diffusers user would run it
        kw = pipelines.call_kwargs(subject, range(i, i + 1), num_inference_steps=2, guidance_scale=1.0, eta=0.0,
                                   size=16, gens=[torch.Generator().manual_seed(i)], control=masks[i:i + 1])
        own.append(pipelines.to_model_space(subject.pipe(**kw).images))
    assert type(subject.pipe).__name__ == "StableDiffusionControlNetPipeline"
    assert float((torch.cat(own) - one).abs().max()) <= 1e-4
    cols = run.columns
    assert cols["adapter"] == "controlnet" and cols["conditioning_scale"] == 1.0
    assert cols["adapter_trainable_params"] == params
    assert cols["adapter_bytes"] == sum(f.stat().st_size for f in net_dir.iterdir())
    assert cols["base_model_key"] != train_info["model_key"] == cols["adapter_key"]


@pytest.mark.parametrize("overrides,fragment", [
    (("adapter=controlnet",), "adapter.path=None is not allowed: a ControlNet directory"),
    (("adapter=controlnet", "adapter.path=/nonexistent/cn"), "no such directory"),
    (("adapter=t2i_adapter",), "adapter.kind='t2i_adapter' is not allowed: controlnet"),
    (("adapter=controlnet", "adapter.path=NET", "prompts=file", "prompts.path=P", "metric=none"),
     "prompts='file' is not allowed: shapes with adapter=controlnet"),
])
def test_bad_pipeline_controls_are_one_line(tiny_sd_controlnet, compose_cfg, tmp_path, overrides, fragment):
    from bench.schema import ConfigError
    from bench.validate import validate

    path, net_dir, _ = tiny_sd_controlnet
    (tmp_path / "p.txt").write_text("a red circle\n")
    overrides = [o.replace("NET", str(net_dir)).replace("=P", f"={tmp_path / 'p.txt'}") for o in overrides]
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg("data=shapes", "model=pipeline", f"model.path={path}", "prompts=shapes", *overrides))
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_control_study_expands_and_validates():
    """sweeps/control.yaml: two kinds x five scales on one base (one model key), every cell valid before any work."""
    from bench import keys
    from bench.preflight import compose_cfg, expand
    from bench.validate import validate

    cells = [compose_cfg(c) for c in expand(["-m", "sweep=control"])]
    assert sorted((c.adapter.kind, float(c.adapter.conditioning_scale)) for c in cells) == sorted(
        (k, s) for k in ("controlnet", "t2i_adapter") for s in (0.0, 0.25, 0.5, 1.0, 2.0))
    assert len({keys.model_key(c) for c in cells}) == 1 and len({keys.cell_key(c) for c in cells}) == 10
    for c in cells[:1] + cells[-1:]:
        assert validate(c).id == "shapes-16px-c3-n6000"
