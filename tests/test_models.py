import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMPipeline, DDPMScheduler, UNet2DModel

from bench.data import build_dataset, get_data_info
from bench.keys import cell_key, model_key, model_key_config
from bench.metrics.cost import CostMeter
from bench.metrics.scorer import images_fid
from bench.models import (
    DiTDenoiser,
    LatentDenoiser,
    MLPDenoiser,
    TextUNetDenoiser,
    UNetDenoiser,
    build_model,
    num_params,
    text_encoder,
    tiny,
)
from bench.sampling import build_sampler, sample
from bench.schema import ConfigError
from bench.training import load_or_train, load_or_train_vae
from bench.validate import validate
from test_run import bench, rows

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


# ---------------------------------------------------------------- DiT (model=dit)

TINY_DIT = ("model=dit", "model.num_layers=2", "model.num_attention_heads=2", "model.attention_head_dim=8",
            "trainer.accelerator=cpu", "device=cpu")


def test_dit_interface_null_class_and_seeded_label_dropout(compose_cfg):
    cfg = compose_cfg("model=dit")  # the real conf/model/dit.yaml on digits 8x8
    model = build_model(cfg.model, get_data_info(cfg.data))
    assert isinstance(model, DiTDenoiser) and model.num_classes == 10
    c = model.dit.config
    assert (c.patch_size, c.num_layers, c.num_attention_heads * c.attention_head_dim) == (2, 4, 64)
    assert c.in_channels == c.out_channels == 1 and c.num_embeds_ada_norm == 10  # learned sigma off; + null row
    print(f"dit params: {num_params(model):,}")
    assert 300_000 < num_params(model) < 500_000
    torch.manual_seed(0)
    for p in model.parameters():  # adaLN-Zero starts as the identity: perturb so labels reach the output
        p.data.add_(0.02 * torch.randn_like(p))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 499.5, 1000.0])
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 9, 10]))
        assert out.shape == x.shape and torch.isfinite(out).all()
        null = model(x, t, torch.full((3,), 10))
        assert torch.equal(model(x, t), null)  # None = the null class
        assert not torch.allclose(model(x, t, torch.tensor([1, 1, 1])), null)
        model.train()  # diffusers' own (unseeded) label dropout is off: train-mode outputs repeat exactly
        y = torch.arange(3)
        assert all(torch.equal(model(x, t, y), model(x, t, y)) for _ in range(5))


def test_dit_unconditional_uses_one_class(compose_cfg):
    cfg = compose_cfg("model=dit", "data.class_conditional=false")
    model = build_model(cfg.model, get_data_info(cfg.data))
    assert model.num_classes == 0 and model.dit.config.num_embeds_ada_norm == 1
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 20.0])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.tensor([1, 2])))


@pytest.mark.parametrize("overrides, match", [
    (["model.patch_size=3"], r"^model\.patch_size=3 is not allowed: a divisor of the image size 8 \(data digits"),
    (["model.attention_head_dim=3", "model.num_attention_heads=2"],
     r"^model\.attention_head_dim=3 is not allowed: .*a multiple of 4 \(width 6"),
    (["data=toy2d"], r"^model='dit' is not allowed: model=mlp for data=toy2d$"),
    (["model.num_layers=0"], r"^model\.num_layers=0 is not allowed: an integer in \[1, inf\)$"),
])
def test_dit_bad_config_is_one_line_before_any_work(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        validate(compose_cfg("model=dit", *overrides))
    assert "\n" not in str(err.value)


def test_dit_keys_and_unet_keys_unchanged(compose_cfg):
    """dit is its own model key; its keys at their defaults leave every UNet key as it was before they existed."""
    unet = model_key_config(compose_cfg())["model"]
    assert not {"patch_size", "num_layers", "num_attention_heads"} & set(unet)
    base = model_key(compose_cfg("model=dit"))
    assert base != model_key(compose_cfg())
    for other in ("model.patch_size=4", "model.num_layers=2", "model.num_attention_heads=2",
                  "model.attention_head_dim=8"):
        assert model_key(compose_cfg("model=dit", other)) != base, other


@pytest.mark.parametrize("objective", ["eps", "v", "x0", "flow"])
def test_dit_trains_samples_and_reloads_bit_exactly(compose_cfg, bench_cache, objective):
    """Every objective: a few Lightning steps through the real (smoke) config lower the loss, the cached EMA model
    reloads bit for bit, and the one sampling loop draws the same finite images from both."""
    sampler = "flow_euler" if objective == "flow" else "ddim"
    cfg = compose_cfg(*TINY_DIT, f"objective={objective}", f"sampler={sampler}", "train.max_steps=40",
                      "train.batch_size=32", "train.lr=3e-3")
    model, info = load_or_train(cfg)
    assert info["cached"] is False and info["train_steps"] == 40 and isinstance(model, DiTDenoiser)
    curve = json.loads((bench_cache / "models" / info["model_key"] / "meta.json").read_text())["loss_curve"]
    print(f"dit {objective}: loss {sum(curve[:5]) / 5:.3f} -> {sum(curve[-5:]) / 5:.3f}")
    assert sum(curve[-5:]) < 0.8 * sum(curve[:5])
    model2, info2 = load_or_train(cfg)
    assert info2["cached"] is True and info2["model_key"] == info["model_key"]
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    runs = []
    for m in (model, model2):
        scheduler = build_sampler(cfg.sampler, cfg.schedule, objective)
        batches = list(sample(m, scheduler, shape=(1, 8, 8), num_samples=6, batch_size=6, seed=0,
                              num_inference_steps=3, guidance_scale=2.0, num_classes=10, device="cpu",
                              cost=CostMeter("cpu", 0), progress=False))
        runs.append(torch.cat([b.x for b in batches]))
    assert runs[0].shape == (6, 1, 8, 8) and torch.isfinite(runs[0]).all()
    assert torch.equal(runs[0], runs[1])


def test_dit_smoke_cell_through_the_cli(tmp_path):
    """`bench experiment=smoke model=dit`: one scored row from the real CLI, marked as the dit family."""
    bench(tmp_path, "experiment=smoke", "model=dit", "model.num_layers=2", "tracker=none", "sampling.num_samples=32",
          "sampling.num_inference_steps=2", "sampling.guidance_scale=2")
    (row,) = rows(tmp_path / "runs" / "smoke" / "results.jsonl")
    assert row["status"] == "ok" and row["model"] == "dit" and row["nfe"] == 4  # CFG doubles the model calls
    assert row["fid"] > 0 and row["num_params"] > 100_000


# ---------------------------------------------------------------- latent diffusion (model=latent_unet / latent_dit)

TINY_VAE = ("model.vae_block_out_channels=[8,16]", "model.vae_max_steps=40", "trainer.accelerator=cpu", "device=cpu")
TINY_LATENT = {"latent_unet": ("model=latent_unet", "model.block_out_channels=[16,32]",
                               "model.down_block_types=[DownBlock2D,DownBlock2D]",
                               "model.up_block_types=[UpBlock2D,UpBlock2D]", *TINY_VAE),
               "latent_dit": ("model=latent_dit", "model.num_layers=2", "model.num_attention_heads=2",
                              "model.attention_head_dim=8", *TINY_VAE)}


@pytest.mark.parametrize("family", ["latent_unet", "latent_dit"])
def test_latent_family_interface(compose_cfg, family):
    cfg = compose_cfg(f"model={family}")  # the real YAML: a 2-level VAE, 8x8 digits -> 4x4x4 latents
    model = build_model(cfg.model, get_data_info(cfg.data))
    assert isinstance(model, LatentDenoiser) and model.latent_shape == (4, 4, 4) and model.num_classes == 10
    assert isinstance(model.denoiser, UNetDenoiser if family == "latent_unet" else DiTDenoiser)
    assert not any(p.requires_grad for p in model.vae.parameters())  # the first stage is frozen
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        z = model.encode(x, torch.Generator().manual_seed(0))
        assert z.shape == (3, 4, 4, 4) and model.decode(z).shape == x.shape
        assert model(z, torch.tensor([1.0, 500.0, 999.0]), torch.tensor([0, 9, 10])).shape == z.shape


@pytest.mark.parametrize("overrides, match", [
    (["model=latent_unet", "model.vae_block_out_channels=[8,8,8,8,8]"],
     r"^model\.vae_block_out_channels=\[8, 8, 8, 8, 8\] is not allowed: at most the levels that halve the image "
     r"size 8 evenly \(a 16x downsampling VAE\)$"),
    (["model=latent_unet", "model.vae_block_out_channels=[8,8,8]", "model.block_out_channels=[8,16,32]",
      "model.down_block_types=[DownBlock2D,DownBlock2D,DownBlock2D]",
      "model.up_block_types=[UpBlock2D,UpBlock2D,UpBlock2D]"],
     r"^model\.block_out_channels=\[8, 16, 32\] is not allowed: levels that halve the 2x2 latent evenly$"),
    (["model=latent_dit", "model.patch_size=8"],
     r"^model\.patch_size=8 is not allowed: a divisor of the image size 4 "),
    (["model=latent_unet", "model.vae_block_out_channels=[12,16]"],
     r"^model\.vae_block_out_channels=\[12, 16\] is not allowed: a non-empty list of multiples of "
     r"model\.norm_num_groups=8$"),
    (["model=latent_unet", "model.vae=/nowhere"], r"^model\.vae='/nowhere' is not allowed: a local directory saved "
                                                  r"with AutoencoderKL\.save_pretrained\(\) \(no such directory\)$"),
    (["model=latent_dit", "sampling.classifier_scale=1", "classifier.block_out_channels=[8,8,8,8]"],  # on latents
     r"^classifier\.block_out_channels=\[8, 8, 8, 8\] is not allowed: at most 3 levels for the image size 4 "),
    (["model=latent_unet", "model.vae_kl_weight=-1"], r"^model\.vae_kl_weight=-1\.0 is not allowed: a number in"),
])
def test_latent_bad_config_is_one_line_before_any_work(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        validate(compose_cfg(*overrides))
    assert "\n" not in str(err.value)


def test_pretrained_vae_with_other_channels_is_one_line(compose_cfg, tmp_path):
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(tmp_path / "vae3")
    with pytest.raises(ConfigError, match=r"^model\.vae='.*vae3' is not allowed: a VAE with 1 in/out channels for "
                                          r"data digits-8px-c1 \(it has 3/3\)$"):
        validate(compose_cfg("model=latent_unet", f"model.vae={tmp_path / 'vae3'}"))


@pytest.mark.parametrize("family", ["latent_unet", "latent_dit"])
def test_latent_family_trains_vae_then_denoiser_and_reloads_bit_exactly(compose_cfg, bench_cache, family):
    """The VAE is trained and cached first (its own key, sha256-checked), the scaling factor makes the training
    latents unit-variance, its held-out PSNR beats a blank reconstruction; then the denoiser trains on the scaled
    latents, reloads bit for bit with its VAE, and the loop samples latents and decodes them to finite images."""
    cfg = compose_cfg(*TINY_LATENT[family], "train.max_steps=30", "train.batch_size=32")
    vae, vinfo = load_or_train_vae(cfg)
    assert vinfo["vae_train_steps"] == 40 and len(vinfo["vae_key"]) == 16
    test_x = torch.stack([x for x, _ in build_dataset(cfg.data, "test")])
    blank_psnr = 10 * np.log10(4 / test_x.double().pow(2).mean().item())
    print(f"{family}: vae psnr {vinfo['vae_psnr']:.2f} dB (blank {blank_psnr:.2f}), "
          f"scale {vinfo['vae_scaling_factor']:.3f}")
    assert vinfo["vae_psnr"] > blank_psnr + 1
    model, info = load_or_train(cfg)
    assert info["cached"] is False and isinstance(model, LatentDenoiser)
    train_x = torch.stack([x for x, _ in build_dataset(cfg.data, "train")])
    z = model.encode(train_x, torch.Generator().manual_seed(0))
    assert float(model.scaling_factor) == pytest.approx(vinfo["vae_scaling_factor"])
    assert z.std().item() == pytest.approx(1.0, abs=0.03)  # unit-variance latents, as the factor promises
    for (k, a), (_, b) in zip(vae.state_dict().items(), model.vae.state_dict().items()):
        assert torch.equal(a, b), k  # the denoiser carries the trained VAE, unchanged by its training
    model2, info2 = load_or_train(cfg)
    assert info2["cached"] is True
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    runs = []
    for m in (model, model2):
        batches = list(sample(m, build_sampler(cfg.sampler, cfg.schedule, "eps"), shape=(1, 8, 8), num_samples=4,
                              batch_size=4, seed=0, num_inference_steps=3, guidance_scale=2.0, num_classes=10,
                              device="cpu", cost=CostMeter("cpu", 0), progress=False))
        runs.append(torch.cat([b.x for b in batches]))
    assert runs[0].shape == (4, 1, 8, 8) and torch.isfinite(runs[0]).all() and torch.equal(runs[0], runs[1])
    assert model_key(compose_cfg(*TINY_LATENT[family], "train.max_steps=30", "train.batch_size=32",
                                 "model.vae_kl_weight=1e-3")) != info["model_key"]  # another VAE, another model


def test_latent_smoke_cell_through_the_cli(tmp_path, compose_cfg):
    """`bench experiment=smoke model=latent_unet`: the row records the latent shape, its VAE's key and PSNR."""
    bench(tmp_path, "experiment=smoke", *TINY_LATENT["latent_unet"][:-2], "tracker=none", "sampling.num_samples=32",
          "sampling.num_inference_steps=2")
    (row,) = rows(tmp_path / "runs" / "smoke" / "results.jsonl")
    assert row["status"] == "ok" and row["model"] == "latent_unet" and row["latent_shape"] == [4, 4, 4]
    assert len(row["vae_key"]) == 16 and row["vae_psnr"] > 5 and row["vae_train_steps"] == 40 and row["fid"] > 0
    # the first stage's own cost: FID of its reconstructions of the held-out split beside those images' own FID
    held_out = len(build_dataset(compose_cfg().data, "test"))
    assert row["vae_rfid_n"] == held_out and 0 < row["real_fid"] < row["vae_rfid"]


def test_images_fid_of_the_reference_images_is_zero(compose_cfg):
    """images_fid (what vae_rfid / real_fid use) against the cell's reference statistics: the reference split's own
    images give FID ~ 0, the held-out split more, noise far more."""
    cfg = compose_cfg()
    info = get_data_info(cfg.data)
    batches = lambda split: [x for x, _ in torch.utils.data.DataLoader(build_dataset(cfg.data, split),  # noqa: E731
                                                                         batch_size=256)]
    got = images_fid(cfg, info, {"train": batches("train"), "test": batches("test"),
                                 "noise": [torch.rand(360, 1, 8, 8) * 2 - 1]})
    assert abs(got["train"]) < 1e-6 and 0.05 < got["test"] < 5 < got["noise"]


# ---------------------------------------------------------------- text-conditioned UNet (model=text_unet)

SHAPES = ("data=shapes", "data.num_train=256", "model=text_unet", "trainer.accelerator=cpu", "device=cpu")


def test_text_unet_conditions_on_caption_tokens_with_the_empty_prompt_as_null(compose_cfg):
    cfg = compose_cfg(*SHAPES)
    info = get_data_info(cfg.data)
    model = build_model(cfg.model, info)
    assert isinstance(model, TextUNetDenoiser) and model.num_classes == 48 and model.text_states.shape == (49, 12, 64)
    clip = text_encoder()
    torch.testing.assert_close(model.text_states[-1:], clip.encode_text_tokens([""]))  # the null class: ""
    torch.testing.assert_close(model.text_states[3:4], clip.encode_text_tokens([info.class_names[3]]))
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1.0, 400.0, 999.0])
    with torch.no_grad():
        null = model(x, t, torch.full((3,), 48))
        assert torch.equal(model(x, t), null) and null.shape == x.shape
        assert not torch.allclose(model(x, t, torch.tensor([0, 1, 2])), null)  # the caption reaches the output
    assert model_key_config(cfg)["model"]["text_encoder"] == clip.weights_hash  # the tower's weights are in the key


@pytest.mark.parametrize("overrides, match", [
    (["data=digits", "data.class_conditional=false"],
     r"^model\.name='text_unet' is not allowed: a data set with captions \(data=shapes, class_conditional\) \(data "
     r"digits-8px-c1-n256 has no class captions to prompt with\)$"),
    (["data=toy2d"], r"^model='text_unet' is not allowed: model=mlp for data=toy2d$"),
    (["model.norm_num_groups=5"], r"^model\.norm_num_groups=5 is not allowed: a divisor of every block_out_channels"),
    (["model.text_encoder=/nowhere"], r"^model\.text_encoder='/nowhere' is not allowed: a local open_clip model "
     r"directory .* \(no such directory; this harness never downloads\)$"),
])
def test_text_unet_bad_config_is_one_line(compose_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        validate(compose_cfg(*SHAPES, *overrides))
    assert "\n" not in str(err.value)


def test_text_unet_trains_reloads_bit_exactly_and_samples_with_cfg(compose_cfg, bench_cache):
    cfg = compose_cfg(*SHAPES, "model.block_out_channels=[16,32]", "train.max_steps=30", "train.batch_size=32")
    model, info = load_or_train(cfg)
    assert info["cached"] is False and isinstance(model, TextUNetDenoiser)
    curve = json.loads((bench_cache / "models" / info["model_key"] / "meta.json").read_text())["loss_curve"]
    assert sum(curve[-5:]) < 0.8 * sum(curve[:5])
    model2, info2 = load_or_train(cfg)
    assert info2["cached"] is True
    for (k, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(a, b), k
    meter = CostMeter("cpu", 0)
    x = torch.cat([b.x for b in sample(model, build_sampler(cfg.sampler, cfg.schedule, "eps"), shape=(3, 16, 16),
                                       num_samples=4, batch_size=4, seed=0, num_inference_steps=3, guidance_scale=3.0,
                                       num_classes=48, device="cpu", cost=meter, progress=False)])
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all() and meter.summary()["nfe"] == 6  # CFG: 2 per step


def test_text_unet_takes_a_local_text_tower_by_path(compose_cfg, bench_cache, tmp_path):
    """model.text_encoder=<dir>: a transformers CLIPTextModel (a diffusers pipeline directory or its text_encoder/)
    or an open_clip local-dir model conditions the UNet through its own token states; the tower's content is in the
    model key and the cell key, so new weights under the same path are another model; a bad layout is one line."""
    sd = tiny.save("sd", tmp_path / "sd")
    oc = shutil.copytree(text_encoder().meta["path"], tmp_path / "open_clip")  # the offline CLIP, as a local dir
    for path, shape in [(sd, (49, 77, 32)), (sd / "text_encoder", (49, 77, 32)), (oc, (49, 12, 64))]:
        cfg = compose_cfg(*SHAPES, f"model.text_encoder={path}")
        info = validate(cfg)
        model = build_model(cfg.model, info)
        tower = text_encoder(str(path))
        assert model.text_states.shape == shape and model.text_encoder_id.endswith(tower.weights_hash)
        torch.testing.assert_close(model.text_states[3:4], tower.encode_text_tokens([info.class_names[3]]))
    torch.testing.assert_close(text_encoder(str(oc)).encode_text_tokens(["", "a red circle at the top left"]),
                               text_encoder().encode_text_tokens(["", "a red circle at the top left"]))
    cfg = compose_cfg(*SHAPES, f"model.text_encoder={sd}", "model.block_out_channels=[16,32]", "train.max_steps=3",
                      "train.batch_size=16")
    keys = model_key(cfg), cell_key(cfg)
    assert keys[0] != model_key(compose_cfg(*SHAPES, "model.block_out_channels=[16,32]", "train.max_steps=3",
                                            "train.batch_size=16"))
    model, _ = load_or_train(cfg)
    x = torch.cat([b.x for b in sample(model, build_sampler(cfg.sampler, cfg.schedule, "eps"), shape=(3, 16, 16),
                                       num_samples=2, batch_size=2, seed=0, num_inference_steps=2, guidance_scale=2.0,
                                       num_classes=48, device="cpu", cost=CostMeter("cpu", 0), progress=False)])
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    weights = sd / "text_encoder" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4)  # 4 bytes of the last weight zeroed, same path and size
    weights.write_bytes(bytes(data))
    assert model_key(cfg) != keys[0] and cell_key(cfg) != keys[1]
    assert not torch.equal(build_model(cfg.model, info).text_states, model.text_states)  # read again, not cached
    (tmp_path / "bad" / "text_encoder").mkdir(parents=True)
    (tmp_path / "bad" / "text_encoder" / "config.json").write_text('{"architectures": ["BertModel"]}')
    with pytest.raises(ConfigError, match=r"^model\.text_encoder=.* is not allowed: .*config\.json is a BertModel, "
                                          r"not a CLIP text model\)$"):
        validate(compose_cfg(*SHAPES, f"model.text_encoder={tmp_path / 'bad'}"))


def test_text_unet_smoke_cell_on_shapes_through_the_cli(tmp_path):
    """`bench experiment=smoke data=shapes model=text_unet`: FID and CLIP score (captions of the sampled classes)."""
    bench(tmp_path, "experiment=smoke", *SHAPES[:3], "tracker=none", "sampling.num_samples=32",
          "sampling.num_inference_steps=2", "sampling.guidance_scale=3", "metric.num_reference=256")
    (row,) = rows(tmp_path / "runs" / "smoke" / "results.jsonl")
    assert row["status"] == "ok" and row["model"] == "text_unet" and row["nfe"] == 4
    assert row["fid"] > 0 and 0 <= row["clip_score"] <= 100


def test_pretrained_vae_is_loaded_measured_and_keyed_by_content(compose_cfg, bench_cache, tmp_path):
    """model.vae=<dir>: that AutoencoderKL, not trained (vae_train_steps 0), its scaling factor and PSNR measured on
    the data once and cached; new weights under the same path are a new VAE key and a new model key."""
    vae = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae.save_pretrained(tmp_path / "vae")
    cfg = compose_cfg(*TINY_LATENT["latent_unet"], f"model.vae={tmp_path / 'vae'}")
    validate(cfg)
    loaded, vinfo = load_or_train_vae(cfg)
    assert vinfo["vae_train_steps"] == 0 and vinfo["vae_scaling_factor"] > 0 and np.isfinite(vinfo["vae_psnr"])
    for (k, a), (_, b) in zip(vae.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    key, mkey, ckey = vinfo["vae_key"], model_key(cfg), cell_key(cfg)
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(0.5)
    vae.save_pretrained(tmp_path / "vae")
    assert load_or_train_vae(cfg)[1]["vae_key"] != key and model_key(cfg) != mkey and cell_key(cfg) != ckey
