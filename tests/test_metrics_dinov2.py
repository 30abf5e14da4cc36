"""FD-DINOv2 with a tiny random-weight ViT saved in Meta's checkpoint layout (no weights can be fetched): the
position-embedding resampling of the torch.hub model, dgm-eval's transform, the sha256 pin, the small-image
refusal and the row."""
import math

import pytest
import torch
import torchvision.transforms as TF
from PIL import Image

from bench.data import build_dataset, get_data_info
from bench.evaluators import EvaluatorError, dinov2
from bench.metrics.scorer import METRICS, Scorer
from bench.schema import ConfigError
from bench.utils import file_sha256
from metrics_helpers import batches, compose

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A DINOv2-layout checkpoint (518 px: 37x37 position embedding, mask_token) of a 2-block, 32-wide ViT/14."""
    import timm

    monkeypatch.setitem(dinov2.ARCHS, "tiny", ("vit_small_patch14_dinov2", "tiny.pth", TINY))
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518, num_classes=0, **TINY)
    state = dict(model.state_dict(), mask_token=torch.zeros(1, 32))
    state["pos_embed"] = torch.randn_like(state["pos_embed"])  # not smooth: the resampling is visible
    path = tmp_path / "tiny.pth"
    torch.save(state, path)
    return path, file_sha256(path), state


def hub_interpolate_pos_encoding(pos_embed, w, h, patch_size=14, offset=0.1):
    """facebookresearch/dinov2 ``DinoVisionTransformer.interpolate_pos_encoding`` (interpolate_antialias=False)."""
    N = pos_embed.shape[1] - 1
    class_pos_embed, patch_pos_embed = pos_embed[:, 0], pos_embed[:, 1:]
    dim, w0, h0, M = pos_embed.shape[-1], w // patch_size, h // patch_size, int(math.sqrt(N))
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=False,
        scale_factor=(float(w0 + offset) / M, float(h0 + offset) / M))
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


def cfg_for(path, digest, *more):
    return compose("data=digits", "metric.fd_dinov2=true", "metric.dinov2_model=tiny", f"metric.dinov2_weights={path}",
                   f"metric.dinov2_sha256={digest}", *more)


def test_loads_meta_layout_with_hub_pos_embed_and_dgm_eval_transform(tiny):
    path, digest, state = tiny
    net = dinov2.load_dinov2(cfg_for(path, digest))
    assert net.name == "dinov2-tiny" and net.dim == 32 and net.weights_hash == digest[:16]
    assert torch.equal(net.model.pos_embed, hub_interpolate_pos_encoding(state["pos_embed"], 224, 224))
    assert net.model.pos_embed.shape == (1, 1 + 16 * 16, 32)
    x = torch.randint(0, 256, (2, 3, 20, 28), dtype=torch.uint8)
    # dgm-eval DINOv2Encoder.transform (clean_resize=False) on the PIL image
    dgm = TF.Compose([TF.Resize((224, 224), TF.InterpolationMode.BICUBIC), TF.ToTensor(),
                      TF.Normalize(dinov2.IMAGENET_MEAN, dinov2.IMAGENET_STD)])
    expect = torch.stack([dgm(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in x])
    pixels = (net.pixels(x) - net.mean) / net.std
    assert torch.allclose(pixels, expect, atol=1e-6)
    feats, logits = net(x)
    tokens = net.model.forward_features(pixels)  # (B, 1 + 256, 32), after the final norm
    assert logits is None and feats.shape == (2, 32) and torch.allclose(feats, tokens[:, 0], atol=1e-6)
    grey = torch.randint(0, 256, (1, 1, 20, 20), dtype=torch.uint8)
    assert torch.equal(net(grey)[0], net(grey.repeat(1, 3, 1, 1))[0])  # grey as RGB, as PIL's convert("RGB")


def test_sha256_pinned(tiny):
    path, digest, _ = tiny
    with pytest.raises(EvaluatorError, match=f"has sha256 {digest}, but metric.dinov2_sha256='0+'"):
        dinov2.load_dinov2(cfg_for(path, "0" * 64))
    with pytest.raises(EvaluatorError, match="metric.dinov2_weights=None: FD-DINOv2 needs Meta's"):
        dinov2.load_dinov2(compose("data=digits", "metric.fd_dinov2=true"))


def test_small_images_refused_unless_asked_and_the_row(tiny, tmp_path):
    path, digest, _ = tiny
    info = get_data_info(compose("data=digits").data)
    with pytest.raises(ConfigError, match=r"^metric.fd_dinov2=True is not allowed: images of at least 56px.*8x8"):
        METRICS["auto"].check(cfg_for(path, digest), info)
    cfg = cfg_for(path, digest, "metric.dinov2_small_images=true", "sampling.num_samples=16", "metric.kid=false",
                  "metric.inception_score=false", "metric.num_reference=16", f"cache_dir={tmp_path / 'cache'}")
    METRICS["auto"].check(cfg, info)
    sc = Scorer(cfg, info)
    for b in batches(build_dataset(cfg.data, "test").x[:16], batch_size=8):
        sc.update(b)
    row = sc.compute()
    gen = sc.own_space_features("fd_dinov2")
    assert gen.shape == (16, 32) and row["fd_dinov2_dim"] == 32 and row["fd_dinov2_n_ref"] == 16
    assert row["fd_dinov2_net"] == "dinov2-tiny" and "PIL bicubic to 224x224" in row["fd_dinov2_resize"]
    assert row["fd_dinov2"] > 0 and row["fd_dinov2_net_hash"] == digest[:16]
    assert row["fd_dinov2_loader"].startswith("timm ") and row["fd_dinov2_loader"].endswith("vit_small_patch14_dinov2")
    with pytest.raises(ConfigError, match=r"^metric.dinov2_model=.vitg14. is not allowed: vitb14 \| vitl14"):
        METRICS["auto"].check(cfg_for(path, digest, "metric.dinov2_model=vitg14"), info)
