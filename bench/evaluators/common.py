"""What every feature network shares: its error, its protocol, one-thread training and the atomic cache publish."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Protocol

import torch

from bench.utils import atomic_write_json, file_sha256

# Frozen evaluators and reference statistics shipped in the package (clean-fid / torch-fidelity pin one network
# file the same way): a retrained evaluator differs in its last bits from machine to machine, and a score is only
# comparable with scores from the same weights. `bench-evaluator train NAME` re-trains one and compares it with
# the shipped file. Each directory is laid out like a cache entry; its weights' sha256 is pinned here as well, so a
# meta.json edited together with the weights is still caught.
SHIPPED = Path(__file__).resolve().parent / "shipped"
PINNED_SHA256 = {
    "digits_cnn-ff8f887cde6bdaaf": "67456300435702434fe906378aa82256973ace0a91d4d734fb61edcb5eac84fe",
    "tiny_clip-4f3496fabba231ed": "72d2d0a9b297e504e1c13e3a7bb1289b01f93675af424af2a7da26625b9c86c6",
}

class EvaluatorError(RuntimeError):
    """An evaluator cannot be loaded or trained. ``str(err)`` is the one line shown to the user."""


class FeatureNet(Protocol):
    name: str
    weights_hash: str
    resize: str
    dim: int
    meta: dict  # extra provenance (accuracy of an offline evaluator, weights path, ...)

    def __call__(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features (B, dim), logits (B, K) or None)."""


@contextlib.contextmanager
def one_thread():
    """Train the tiny evaluators on one CPU thread: on a small shared machine, intra-op threads of a tiny model
    spin against each other (measured: 43 ms/step on 1 thread vs 780 ms on 2 threads for the tiny CLIP)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def publish(tmp, path, weights: str, meta: dict) -> None:
    """Record the weights' sha256 in ``tmp/meta.json`` and rename ``tmp`` into the cache at ``path`` (atomic: a
    reader sees a whole evaluator or none). If another process published first, keep theirs."""
    meta.update(weights_sha256=file_sha256(tmp / weights))
    atomic_write_json(tmp / "meta.json", meta)
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def find_evaluator(cache_dir, name: str, shipped: bool = True) -> Path | None:
    """The directory holding evaluator ``name`` (e.g. ``digits_cnn-<key>``): the shipped copy when the package
    has one for this key, else the cache entry if it was trained before, else None (train it)."""
    if shipped and (SHIPPED / name / "meta.json").is_file():
        return SHIPPED / name
    cached = Path(cache_dir) / "evaluators" / name
    return cached if (cached / "meta.json").exists() else None


def verified_meta(path, weights: str) -> dict:
    """The cached evaluator's meta, after checking its weights file against the sha256 recorded at publish time."""
    meta = json.loads((path / "meta.json").read_text())
    digest = file_sha256(path / weights)
    if digest != meta["weights_sha256"]:
        raise EvaluatorError(f"{path / weights} has sha256 {digest[:16]}…, expected "
                             f"{meta['weights_sha256'][:16]}… (corrupt cache: delete {path} to retrain)")
    pinned = PINNED_SHA256.get(Path(path).name)
    if Path(path).parent == SHIPPED and digest != pinned:
        raise EvaluatorError(f"{path / weights} has sha256 {digest[:16]}…, but bench pins {str(pinned)[:16]}… for "
                             "this shipped evaluator (the installed package is modified: reinstall bench)")
    return meta
