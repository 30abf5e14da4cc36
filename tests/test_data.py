import re

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import (
    SHAPES_COLOURS,
    SHAPES_KINDS,
    SHAPES_POSITIONS,
    BenchDataModule,
    MirroredDataset,
    StepBatchSampler,
    build_dataset,
    get_data_info,
    render_shape,
    sample_true,
    shapes_caption,
    shapes_class,
)
from bench.schema import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def _xs(ds):
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.stack([ds[i][1] for i in range(len(ds))])


def test_digits_split_sizes_range_labels_and_determinism(compose_cfg):
    cfg = compose_cfg()  # data=digits is the default
    info = get_data_info(cfg.data)
    assert (info.kind, info.shape, info.num_classes, info.id) == ("images", (1, 8, 8), 10, "digits-8px-c1")
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    assert (len(train), len(test)) == (1437, 360)  # 1797 split 80/20
    xtr, ytr = _xs(train)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert xtr.min() == -1 and xtr.max() == 1
    assert np.bincount(test.y.numpy()).min() >= 35  # stratified: ~36 per class
    # disjoint: no test image equals a train image of the same split (digits has few exact duplicates)
    same = (xtr.flatten(1)[:, None] == test.x.flatten(1)[None]).all(-1)
    assert same.any(1).sum() <= 5
    again = build_dataset(cfg.data, "train")
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)
    other = build_dataset(compose_cfg("data.split_seed=1").data, "train")
    assert not torch.equal(other.x, train.x)
    assert get_data_info(compose_cfg("data.split_seed=1").data).id != info.id


def test_digits_resize_cap_and_unconditional(compose_cfg):
    cfg = compose_cfg("data.image_size=16", "data.num_train=100", "data.class_conditional=false")
    ds = build_dataset(cfg.data, "train")
    assert len(ds) == 100 and ds[0][0].shape == (1, 16, 16)
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    info = get_data_info(cfg.data)
    assert info.num_classes == 0 and len(info.class_names) == 10 and info.id == "digits-16px-c1-n100"
    assert ds[0][1] >= 0  # labels stay in the data; the model just is not conditioned on them


def test_toy2d_true_distribution_and_splits(compose_cfg):
    cfg = compose_cfg("data=toy2d", "model=mlp", "data.num_train=1000")
    info = get_data_info(cfg.data)
    assert (info.kind, info.shape, info.num_classes, info.id) == ("points", (2,), 0, "toy2d-moons")
    p = sample_true(cfg.data, 50_000, seed=0)
    assert p.shape == (50_000, 2)
    np.testing.assert_allclose(p.mean(0), 0, atol=0.02)
    np.testing.assert_allclose(p.std(0), 1, atol=0.02)
    np.testing.assert_array_equal(p, sample_true(cfg.data, 50_000, seed=0))
    assert not np.allclose(p[:100], sample_true(cfg.data, 100, seed=1))
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    assert (len(train), len(test)) == (1000, 200) and train[0][1] == -1
    assert not torch.allclose(train.x[:200], test.x)
    gmm = compose_cfg("data=toy2d", "model=mlp", "data.toy=gmm").data
    q = sample_true(gmm, 20_000, seed=1)
    angles = 2 * np.pi * np.arange(8) / 8
    centres = np.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], 1)
    d = np.linalg.norm(q[:, None] - centres[None], axis=-1)
    assert d.min(1).max() < 0.6  # every point near a mode
    np.testing.assert_allclose(np.bincount(d.argmin(1)) / len(q), 1 / 8, atol=0.015)
    np.testing.assert_allclose(q.std(0), np.sqrt(1.01), atol=0.03)


def test_shapes_captions_and_classes_are_visually_distinct(compose_cfg):
    cfg = compose_cfg("data=shapes", "data.num_train=480")
    info = get_data_info(cfg.data)
    assert (info.shape, info.num_classes, len(info.class_names)) == ((3, 16, 16), 48, 48)
    assert info.class_names[0] == shapes_caption(0) == "a red circle at the top left"
    assert info.class_names[47] == "a yellow triangle at the bottom right"
    assert len(set(info.class_names)) == 48 and len(SHAPES_COLOURS) * len(SHAPES_KINDS) * len(SHAPES_POSITIONS) == 48
    ds = build_dataset(cfg.data, "train")
    x, y = ds.x, ds.y
    assert len(ds) == 480 and x.min() >= -1 and x.max() <= 1 and (np.bincount(y.numpy()) == 10).all()
    assert len(build_dataset(cfg.data, "test")) == 96
    colour = np.array([list(SHAPES_COLOURS).index(shapes_class(int(k))[0]) for k in y])
    fg = (x > -0.7).any(1, keepdim=True)  # foreground mask (background is ~-0.87)
    mean_rgb = np.stack([((x * fg).sum((0, 2, 3)) / fg.sum()).numpy() for x, fg in
                         [(x[colour == c], fg[colour == c]) for c in range(4)]])
    print("foreground mean RGB per colour (red, green, blue, yellow):\n", mean_rgb.round(2))
    assert mean_rgb[0].argmax() == 0 and mean_rgb[1].argmax() == 1 and mean_rgb[2].argmax() == 2
    assert mean_rgb[3, 0] > 0.2 and mean_rgb[3, 1] > 0.2 and mean_rgb[3, 2] < -0.5  # yellow = red + green
    pos = np.array([SHAPES_POSITIONS.index(shapes_class(int(k))[2]) for k in y])
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    m = fg[:, 0].float()
    cy, cx = (m * rows).sum((1, 2)) / m.sum((1, 2)), (m * cols).sum((1, 2)) / m.sum((1, 2))
    assert ((cy < 8) == np.isin(pos, [0, 1])).all() and ((cx < 8) == np.isin(pos, [0, 2])).all()
    # shape kinds: fill fraction of the bounding box, square (1) > circle (π/4) > triangle (1/2)
    fill = {}
    for kind in SHAPES_KINDS:
        img = render_shape("red", kind, "top left", 1.0, np.random.default_rng(0), 64)
        fill[kind] = (img[..., 0] > 128).mean() / 0.25
    assert fill["square"] > 0.95 and 0.72 < fill["circle"] < 0.85 and 0.42 < fill["triangle"] < 0.58, fill
    again = build_dataset(cfg.data, "train")
    assert torch.equal(again.x, ds.x)


def _write_images(root, sizes, colour):
    root.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), colour).save(root / f"img{i}.png")


def test_folder_classes_crop_and_errors(compose_cfg, tmp_path):
    _write_images(tmp_path / "imgs" / "cat", [(20, 10), (10, 10), (12, 12), (30, 20), (16, 16)], (255, 0, 0))
    _write_images(tmp_path / "imgs" / "dog", [(10, 20), (8, 8), (9, 9), (12, 12), (40, 40)], (0, 0, 255))
    cfg = compose_cfg("data=folder", f"data.path={tmp_path / 'imgs'}", "data.image_size=8")
    info = get_data_info(cfg.data)
    assert info.class_names == ["cat", "dog"] and info.num_classes == 2 and info.shape == (3, 8, 8)
    train, test = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
    assert (len(train), len(test)) == (8, 2) and sorted(test.y.tolist()) == [0, 1]
    x, y = _xs(train)
    assert x.shape == (8, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(x[y == 0][:, 0], torch.tensor(1.0)) and torch.allclose(x[y == 1][:, 2], torch.tensor(1.0))
    grey = compose_cfg("data=folder", f"data.path={tmp_path / 'imgs' / 'cat'}", "data.channels=1")
    ginfo = get_data_info(grey.data)
    assert ginfo.num_classes == 0 and build_dataset(grey.data, "train")[0][0].shape == (1, 32, 32)
    assert build_dataset(grey.data, "train")[0][1] == -1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"data.path='.*empty' is not allowed: an image folder \(\*\.png\|"
                                          r"\*\.jpg.*contains no images"):
        get_data_info(compose_cfg("data=folder", f"data.path={tmp_path / 'empty'}").data)
    with pytest.raises(ConfigError, match="data.path=.*missing.*not a directory") as err:
        build_dataset(compose_cfg("data=folder", f"data.path={tmp_path / 'missing'}").data, "train")
    assert "\n" not in str(err.value)


def test_step_batch_sampler_is_a_function_of_seed_and_step():
    s = StepBatchSampler(n=10, batch_size=4, seed=3)
    it = iter(s)
    first = [next(it) for _ in range(5)]  # 20 items = two full epochs
    assert sorted(sum(first, [])[:10]) == list(range(10)) and sorted(sum(first, [])[10:]) == list(range(10))
    resumed = iter(StepBatchSampler(n=10, batch_size=4, seed=3, start_step=3))
    assert next(resumed) == first[3] and next(resumed) == first[4]
    assert StepBatchSampler(10, 4, seed=4).batch(0) != first[0]


def test_datamodule_flip_and_batches(compose_cfg):
    cfg = compose_cfg("data.hflip=true", "train.batch_size=16")
    dm = BenchDataModule(cfg.data, cfg.train.batch_size, cfg.train.seed)
    dm.setup("fit")
    assert isinstance(dm.train_set, MirroredDataset) and len(dm.train_set) == 2 * 1437
    x, y = dm.train_set[1437 + 5]
    assert torch.equal(x, torch.flip(dm.train_set[5][0], dims=[-1])) and y == dm.train_set[5][1]
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (16, 1, 8, 8) and yb.shape == (16,)
    xb2, _ = next(iter(BenchDataModule(cfg.data, cfg.train.batch_size, cfg.train.seed).train_dataloader()))
    assert torch.equal(xb, xb2)
    # the batched fetch equals per-item reads (mirrors included)
    idx = StepBatchSampler(len(dm.train_set), 16, int(cfg.train.seed)).batch(0)
    assert any(i >= 1437 for i in idx) and any(i < 1437 for i in idx)
    assert torch.equal(xb, torch.stack([dm.train_set[i][0] for i in idx]))
    assert torch.equal(yb, torch.stack([dm.train_set[i][1] for i in idx]))


def test_bad_names_fail_in_one_line(compose_cfg):
    with pytest.raises(ConfigError, match=r"data.toy='spiral' is not allowed: moons \| gmm"):
        get_data_info(compose_cfg("data=toy2d", "data.toy=spiral").data)
    with pytest.raises(ConfigError, match="split='val'"):
        build_dataset(compose_cfg().data, "val")


def test_folder_decodes_every_pil_mode_exactly_or_refuses_by_name(tmp_path):
    """16-bit grey is scaled (not clipped to white), palettes and alpha (over white) decode as documented."""
    from PIL import Image

    from bench.data.folder import decode_image

    ramp16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040)  # 0 .. 65520
    Image.fromarray(ramp16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    got = np.asarray(decode_image(tmp_path / "g16.png", "L"), dtype=np.int64)
    assert got.min() == 0 and got.max() == 255 and np.abs(got - np.round(ramp16 / 257.0)).max() == 0
    assert (np.asarray(Image.open(tmp_path / "g16.png").convert("L")) == 255).mean() > 0.95  # PIL convert clips

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 50
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "pal.png")
    assert np.asarray(decode_image(tmp_path / "pal.png", "RGB"))[0, 0].tolist() == [200, 0, 50]

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 255, 0  # fully transparent green -> white
    rgba[0, 0] = [0, 0, 0, 255]  # opaque black stays black
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = np.asarray(decode_image(tmp_path / "rgba.png", "RGB"))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]
    la = Image.fromarray(np.stack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 128, np.uint8)], -1))
    la.save(tmp_path / "la.png")
    assert abs(int(np.asarray(decode_image(tmp_path / "la.png", "L"))[0, 0]) - 127) <= 1  # half black over white

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(np.asarray(decode_image(tmp_path / "cmyk.jpg", "RGB")).astype(int)[0, 0] - [200, 0, 50]).max() < 8

    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tiff")
    (tmp_path / "text.png").write_text("not an image")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # incompressible
    Image.fromarray(noise).save(tmp_path / "full.png")
    full = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(full[:len(full) // 2])
    for name, why in (("f.tiff", "mode F"), ("text.png", "cannot be decoded"), ("cut.png", "cannot be decoded")):
        with pytest.raises(ConfigError, match=rf"data.path=.*{name}.*\({re.escape(str(tmp_path / name))}: {why}"):
            decode_image(tmp_path / name, "RGB")


def test_folder_with_one_image_is_refused_before_any_work(compose_cfg, tmp_path):
    from PIL import Image

    (tmp_path / "one").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "one" / "a.png")
    with pytest.raises(ConfigError, match="it holds 1 image"):
        get_data_info(compose_cfg("data=folder", f"data.path={tmp_path / 'one'}").data)
