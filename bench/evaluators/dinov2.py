"""DINOv2 (Oquab et al. 2023) image features for FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model
evaluation metrics and their unfair treatment of diffusion models"), with dgm-eval's preprocessing.

- Weights: Meta's backbone checkpoint (``dinov2_vitl14_pretrain.pth``, ``dinov2_vitb14_pretrain.pth``: what
  ``torch.hub.load("facebookresearch/dinov2", ...)`` in dgm-eval loads) from a local file
  (``metric.dinov2_weights``), never downloaded; its sha256 must equal ``metric.dinov2_sha256`` before use.
- Loader: timm's ``vit_{base,large}_patch14_dinov2`` built for 224x224 input. The checkpoint's 37x37 position
  embedding is resampled once at load time exactly as the torch.hub model does it on every forward at 224
  (``interpolate_pos_encoding``: bicubic, scale factor (16 + 0.1) / 37, no antialias).
- Preprocessing (dgm-eval's ``DINOv2Encoder.transform``): RGB (grey repeated), PIL bicubic resize to 224x224,
  /255, ImageNet mean/std. Features: the CLS token after the final norm (the hub model's output).

DINOv2 sees 14x14 patches of a 224 image: an image far smaller than that is upsampled into blur it never saw in
training, so images under ``MIN_SIZE`` are refused unless ``metric.dinov2_small_images=true``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.utils import file_sha256

from .common import EvaluatorError

SIZE = 224
MIN_SIZE = 56  # a quarter of the input: below this a 14x14 patch holds less than 3.5 source pixels
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INTERPOLATE_OFFSET = 0.1  # the torch.hub DINOv2's interpolate_offset (interpolate_antialias=False)
# metric.dinov2_model -> (timm architecture, Meta's file name, timm keyword arguments)
ARCHS = {"vitb14": ("vit_base_patch14_dinov2", "dinov2_vitb14_pretrain.pth", {}),
         "vitl14": ("vit_large_patch14_dinov2", "dinov2_vitl14_pretrain.pth", {})}
RESIZE = (f"RGB, PIL bicubic to {SIZE}x{SIZE}, /255, ImageNet mean/std (dgm-eval); timm ViT at {SIZE}, pos-embed "
          f"resampled as torch.hub DINOv2 (bicubic, offset {INTERPOLATE_OFFSET}, no antialias)")


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1 + M², d) -> (1, 1 + grid², d): DINOv2's ``interpolate_pos_encoding`` for a grid x grid input."""
    cls, patch = pos_embed[:, :1], pos_embed[:, 1:].float()
    m, dim = int(round(patch.shape[1] ** 0.5)), patch.shape[2]
    if m == grid:
        return pos_embed
    scale = (grid + INTERPOLATE_OFFSET) / m
    out = F.interpolate(patch.reshape(1, m, m, dim).permute(0, 3, 1, 2), scale_factor=(scale, scale), mode="bicubic",
                        antialias=False)
    if out.shape[-2:] != (grid, grid):
        raise EvaluatorError(f"DINOv2 position embedding resampled to {tuple(out.shape[-2:])}, expected {grid}x{grid}")
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)], dim=1)


class DinoV2FeatureNet:
    def __init__(self, model, arch: str, digest: str, meta: dict):
        self.model, self.meta = model.eval(), meta
        self.name, self.weights_hash, self.resize, self.dim = f"dinov2-{arch}", digest[:16], RESIZE, model.num_features
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @staticmethod
    def pixels(images_uint8: torch.Tensor) -> torch.Tensor:
        """dgm-eval's transform: PIL bicubic to 224x224 on the uint8 RGB image, then ToTensor (/255)."""
        x = images_uint8.repeat(1, 3, 1, 1) if images_uint8.shape[1] == 1 else images_uint8
        arrays = [np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((SIZE, SIZE), Image.BICUBIC))
                  for img in x.cpu()]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor):
        x = (self.pixels(images_uint8) - self.mean) / self.std
        return self.model(x).float(), None


def load_dinov2(cfg) -> DinoV2FeatureNet:
    """``metric.dinov2_model`` from ``metric.dinov2_weights`` (Meta's checkpoint), checked against
    ``metric.dinov2_sha256``."""
    import timm  # lazy: only FD-DINOv2 needs it

    m = cfg.metric
    if m.dinov2_model not in ARCHS:
        raise EvaluatorError(f"metric.dinov2_model={m.dinov2_model!r} is not allowed: {' | '.join(ARCHS)}")
    timm_name, official, kwargs = ARCHS[m.dinov2_model]
    path = Path(m.dinov2_weights).expanduser() if m.dinov2_weights else None
    if path is None or not path.is_file():
        raise EvaluatorError(f"metric.dinov2_weights={m.dinov2_weights!r}: FD-DINOv2 needs Meta's {official} on this "
                             f"machine ({'file not found' if path else 'not set'}; never downloaded) and its sha256 in "
                             f"metric.dinov2_sha256")
    digest = file_sha256(path)
    if not m.dinov2_sha256 or digest != str(m.dinov2_sha256).lower():
        raise EvaluatorError(f"metric.dinov2_weights={path} has sha256 {digest}, but metric.dinov2_sha256="
                             f"{m.dinov2_sha256!r}: pin the file you mean to score with")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if k != "mask_token"}  # masked-image training only
    state["pos_embed"] = resample_pos_embed(state["pos_embed"], SIZE // 14)
    model = timm.create_model(timm_name, pretrained=False, img_size=SIZE, num_classes=0, **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EvaluatorError(f"metric.dinov2_weights={path} is not a {m.dinov2_model} DINOv2 backbone checkpoint "
                             f"({str(e).splitlines()[0][:200]})") from None
    return DinoV2FeatureNet(model, m.dinov2_model, digest, {"path": str(path), "sha256": digest, "loader": "timm "
                                                           f"{timm.__version__} {timm_name}"})
