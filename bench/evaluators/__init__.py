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

from bench.schema import ConfigError

from .clip import load_clip
from .common import (
    PINNED_SHA256,
    SHIPPED,
    EvaluatorError,
    FeatureNet,
    find_evaluator,
    one_thread,
    publish,
    verified_meta,
)
from .digits_cnn import load_digits_cnn
from .inception import load_inception

__all__ = ["FEATURE_NETS", "PINNED_SHA256", "SHIPPED", "EvaluatorError", "FeatureNet", "find_evaluator",
           "load_feature_net", "one_thread", "publish", "resolve_feature_net", "verified_meta"]

FEATURE_NETS = ("digits_cnn", "inception", "clip")


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
        return load_digits_cnn(cfg, info)
    if name == "inception":
        return load_inception(cfg)
    return load_clip(cfg, info)
