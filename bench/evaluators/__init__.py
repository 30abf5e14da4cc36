"""Feature networks for the scores: one forward pass gives features (FID/KID) and logits (IS).

Every network takes uint8 NCHW images (the quantised samples, as a saved PNG would hold them) and reports its
provenance: ``name``, ``weights_hash`` (sha256 prefix of its weights file), ``resize`` (what happens to the
pixels before the network) — recorded beside every score. :func:`load_feature_net` picks one from the config.

- ``digits_cnn``, ``mnist_cnn``, ``fashion_mnist_cnn``, ``cifar10_cnn``: small CNN the harness trains on that data
  set's train split (offline). Its FID is "digits-FID", "mnist-FID", ...: comparable between runs of this harness,
  not to Inception FID in papers.
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
from .digits_cnn import CNN_SPECS, cnn_name, load_digits_cnn
from .inception import load_inception

__all__ = ["FEATURE_NETS", "PINNED_SHA256", "SHIPPED", "EvaluatorError", "FeatureNet", "find_evaluator",
           "load_feature_net", "one_thread", "publish", "resolve_feature_net", "verified_meta"]

CNNS = {cnn_name(data): data for data in CNN_SPECS}  # feature net -> the data set it is trained on
FEATURE_NETS = ("digits_cnn", "inception", "clip", *(n for n in CNNS if n != "digits_cnn"))


def resolve_feature_net(cfg) -> str:
    """metric.feature_net, with "auto" chosen by the data set: digits, mnist, fashion_mnist, cifar10 -> their own
    CNN (<set>_cnn), shapes -> clip, else inception."""
    name = cfg.metric.feature_net
    if name == "auto":
        if cfg.metric.name == "inception":
            return "inception"
        if cfg.data.name in CNN_SPECS:
            return cnn_name(cfg.data.name)
        return {"shapes": "clip"}.get(cfg.data.name, "inception")
    if name not in FEATURE_NETS:
        raise ConfigError("metric.feature_net", name, "auto | " + " | ".join(FEATURE_NETS))
    if name in CNNS and cfg.data.name != CNNS[name]:
        raise ConfigError("metric.feature_net", name, f"{name} only with data={CNNS[name]} (it is trained on "
                          f"{CNNS[name]})", f"data={cfg.data.name}")
    return name


def load_feature_net(cfg, info) -> FeatureNet:
    name = resolve_feature_net(cfg)
    if name in CNNS:
        return load_digits_cnn(cfg, info)
    if name == "inception":
        return load_inception(cfg)
    return load_clip(cfg, info)
