"""The one image quantiser: samples are scored, fed to evaluators and saved exactly as a PNG would hold them."""
from __future__ import annotations

import numpy as np
import torch

QUANTIZE = "uint8"  # recorded beside every score: images are scored as a saved PNG would be


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-space images in [-1, 1] -> uint8 [0, 255] (NCHW), also what bench.artifacts saves as PNG."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW floats -> uint8 NHWC numpy (image-file layout), quantised exactly as the scorer sees them."""
    return quantize_uint8(x).permute(0, 2, 3, 1).cpu().numpy()
