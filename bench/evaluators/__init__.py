"""Feature networks for the scores: one forward pass gives features (FID/KID) and logits (IS).

Every network takes uint8 NCHW images (the quantised samples, as a saved PNG would hold them) and reports its
provenance: ``name``, ``weights_hash`` (sha256 prefix of its weights file), ``resize`` (what happens to the
pixels before the network) — recorded beside every score. :func:`load_feature_net` picks one from the config.

- ``digits_cnn``: small CNN the harness trains on the digits train split (offline). Its FID is "digits-FID":
  comparable between runs of this harness, not to Inception FID in papers.
- ``inception``: Inception-v3 (the FID/IS standard) from a local, checksum-verified weights file.
- ``clip``: open_clip model (local checkpoint) or the offline CLIP the harness trains on ``data=shapes``.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Protocol

import torch

from bench.schema import ConfigError

FEATURE_NETS = ("digits_cnn", "inception", "clip")


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
    import shutil

    from bench.utils import atomic_write_json, file_sha256

    meta.update(weights_sha256=file_sha256(tmp / weights))
    atomic_write_json(tmp / "meta.json", meta)
    try:
        tmp.rename(path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def verified_meta(path, weights: str) -> dict:
    """The cached evaluator's meta, after checking its weights file against the sha256 recorded at publish time."""
    import json

    from bench.utils import file_sha256

    meta = json.loads((path / "meta.json").read_text())
    digest = file_sha256(path / weights)
    if digest != meta["weights_sha256"]:
        raise EvaluatorError(f"{path / weights} has sha256 {digest[:16]}…, expected "
                             f"{meta['weights_sha256'][:16]}… (corrupt cache: delete {path} to retrain)")
    return meta


def resolve_feature_net(cfg) -> str:
    """metric.feature_net, with "auto" chosen by the data set: digits -> digits_cnn, shapes -> clip, else inception."""
    name = cfg.metric.feature_net
    if name == "auto":
        if cfg.metric.name == "inception":
            return "inception"
        return {"digits": "digits_cnn", "shapes": "clip"}.get(cfg.data.name, "inception")
    if name not in FEATURE_NETS:
        raise ConfigError("metric.feature_net", name, "auto | " + " | ".join(FEATURE_NETS))
    if name == "digits_cnn" and cfg.data.name != "digits":
        raise ConfigError("metric.feature_net", name, "digits_cnn only with data=digits (it is trained on digits)",
                          f"data={cfg.data.name}")
    return name


def load_feature_net(cfg, info) -> FeatureNet:
    name = resolve_feature_net(cfg)
    if name == "digits_cnn":
        from .digits_cnn import load_digits_cnn

        return load_digits_cnn(cfg, info)
    if name == "inception":
        from .inception import load_inception

        return load_inception(cfg)
    from .clip import load_clip

    return load_clip(cfg, info)
