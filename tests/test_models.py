import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from bench.data import get_data_info
from bench.models import MLPDenoiser, UNetDenoiser, build_model, num_params
from bench.schema import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_default_unet_size_and_interface(compose_cfg):
    cfg = compose_cfg("experiment=default")  # the real default model: block_out_channels [32, 64] on digits 8x8
    info = get_data_info(cfg.data)
    model = build_model(cfg.model, info)
    n = num_params(model)
    print(f"default unet params: {n:,}")
    assert isinstance(model, UNetDenoiser) and model.num_classes == 10
    assert 650_000 < n < 750_000
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 499.5, 1000.0])
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 9, 10]))
        assert out.shape == x.shape and torch.isfinite(out).all()
        null = model(x, t, torch.full((3,), 10))
        assert torch.equal(model(x, t), null)  # None = the null class
        assert not torch.allclose(model(x, t, torch.tensor([1, 1, 1])), null)


def test_unconditional_unet_ignores_labels(compose_cfg):
    cfg = compose_cfg("data.class_conditional=false")
    model = build_model(cfg.model, get_data_info(cfg.data))
    assert model.unet.class_embedding is None and model.num_classes == 0
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 20.0])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.tensor([1, 2])))


def test_mlp_interface(compose_cfg):
    cfg = compose_cfg("data=toy2d", "model=mlp")
    model = build_model(cfg.model, get_data_info(cfg.data))
    assert isinstance(model, MLPDenoiser) and model.class_embed is None
    out = model(torch.randn(5, 2), torch.rand(5) * 1000)
    assert out.shape == (5, 2)
    cond = MLPDenoiser(num_classes=3)
    x, t = torch.randn(4, 2), torch.full((4,), 10.0)
    assert torch.equal(cond(x, t), cond(x, t, torch.full((4,), 3)))
    assert cond(x, t, torch.tensor([0, 1, 2, 3])).shape == (4, 2)


def test_model_data_mismatch_is_one_line(compose_cfg):
    cfg = compose_cfg("data=toy2d")  # unet on points
    with pytest.raises(ConfigError, match=r"model.name='unet' is not allowed: mlp for point data"):
        build_model(cfg.model, get_data_info(cfg.data))
    cfg = compose_cfg("model.norm_num_groups=5")
    with pytest.raises(ConfigError, match="model.norm_num_groups=5"):
        build_model(cfg.model, get_data_info(cfg.data))


def _tiny_unet(num_class_embeds=11):
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=num_class_embeds)


def test_pretrained_unet_dir_and_pipeline_dir(compose_cfg, tmp_path):
    unet = _tiny_unet().eval()
    unet.save_pretrained(tmp_path / "unet_dir")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "pipe")
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 700.0]), torch.tensor([2, 10])
    with torch.no_grad():
        want = unet(x, t, class_labels=y).sample
        for path in (tmp_path / "unet_dir", tmp_path / "pipe"):
            cfg = compose_cfg(f"model.pretrained={path}")
            model = build_model(cfg.model, get_data_info(cfg.data)).eval()
            assert model.num_classes == 10
            torch.testing.assert_close(model(x, t, y), want)


def test_pretrained_mismatch_and_missing_fail_in_one_line(compose_cfg, tmp_path):
    _tiny_unet(num_class_embeds=5).save_pretrained(tmp_path / "u5")
    cfg = compose_cfg(f"model.pretrained={tmp_path / 'u5'}")
    with pytest.raises(ConfigError, match="a UNet with 10 classes"):
        build_model(cfg.model, get_data_info(cfg.data))
    cfg = compose_cfg("model.pretrained=nobody/no-such-unet")
    with pytest.raises(ConfigError, match=r"model.pretrained='nobody/no-such-unet' is not allowed: a local "
                                          r"directory saved with .*could not be loaded offline") as err:
        build_model(cfg.model, get_data_info(cfg.data))
    assert "\n" not in str(err.value)
