"""A cell's files besides its row: the sample grid (PNG; a scatter plot for 2-D points) and the samples (npz).

Every file is written atomically (temp file + rename), so a killed run leaves whole files or none.
"""
from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from bench.utils import atomic_write_bytes, atomic_write_text

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_grid(path: Path, images: np.ndarray) -> None:
    """A square-ish grid of uint8 NHWC images as PNG (nearest-neighbour upscaled so 8x8 digits are visible)."""
    n, h, w, c = images.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    pad = 1
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    scale = max(1, 256 // max(canvas.shape[:2]))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_scatter(path: Path, points: np.ndarray, reference: np.ndarray | None, title: str) -> None:
    """2-D samples (and the true distribution's, grey) as a PNG scatter plot."""
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.75", label="true")
    ax.scatter(points[:, 0], points[:, 1], s=1, c="C0", label="generated")
    ax.set_title(title, fontsize=8)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=6, markerscale=4)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def samples_digest(arrays: dict) -> str:
    """sha256 of a samples.npz's arrays (names, dtypes, shapes and bytes), independent of the file's compression."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_npz(path: Path, **arrays) -> None:
    """Compressed npz (samples.npz: uint8 NHWC images or float32 points), written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def write_prompt_scores(path: Path, prompts: list, clip_scores: list) -> None:
    """The cell's per-prompt CLIP scores (``prompts.csv``: prompt, images, mean and std of the image scores) from
    each image's prompt (image i: ``prompts[i]``) and its CLIP scores (in image order); nothing when the cell
    computed no CLIP score."""
    import pandas as pd  # lazy: only text-to-image cells write this table

    scores = np.concatenate([np.asarray(s).reshape(-1) for s in clip_scores]) if clip_scores else np.empty(0)
    if len(scores) != len(prompts):
        return
    df = pd.DataFrame({"prompt": list(prompts), "clip_score": scores.astype(np.float64)})
    table = df.groupby("prompt", sort=False)["clip_score"].agg(images="count", clip_score="mean", clip_score_std="std")
    atomic_write_text(path, table.reset_index().to_csv(index=False))
