"""What every feature network shares: its error, its protocol, one-thread training and the atomic cache publish."""
from __future__ import annotations

import contextlib
import json
import shutil
from typing import Optional, Protocol

import torch

from bench.utils import atomic_write_json, file_sha256


class EvaluatorError(RuntimeError):
    """An evaluator cannot be loaded or trained. ``str(err)`` is the one line shown to the user."""


class FeatureNet(Protocol):
    name: str
    weights_hash: str
    resize: str
    dim: int
    meta: dict  # extra provenance (accuracy of an offline evaluator, weights path, ...)

    def __call__(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
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


def verified_meta(path, weights: str) -> dict:
    """The cached evaluator's meta, after checking its weights file against the sha256 recorded at publish time."""
    meta = json.loads((path / "meta.json").read_text())
    digest = file_sha256(path / weights)
    if digest != meta["weights_sha256"]:
        raise EvaluatorError(f"{path / weights} has sha256 {digest[:16]}…, expected "
                             f"{meta['weights_sha256'][:16]}… (corrupt cache: delete {path} to retrain)")
    return meta
