"""Control adapters (bench/adapt/control.py) and masks as controls (bench/data/masks.py): the shapes annotator finds
the drawn masks, IoU/F1 by hand, ControlNet's zero convolutions leave the base model exactly unchanged, the
T2I-Adapter meets the UNet's features, the control reaches both branches of CFG in the one loop."""
import copy

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
    assert t2i_feature_shapes(sd, 16) == t2i_adapter_shapes([16, 32], 16) == [(16, 16), (32, 8)]
    assert t2i_feature_shapes(plain_first, 16) == [(16, 8), (32, 8)]


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
