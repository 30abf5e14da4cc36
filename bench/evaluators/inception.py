"""Inception-v3, the standard FID / IS network (Szegedy et al. 2016; as used by Heusel et al. 2017 and Salimans
et al. 2016), from a local weights file whose sha256 is verified before use.

The architecture and the TF-1.x-compatible bilinear resize to 299x299 are torch-fidelity's
``FeatureExtractorInceptionV3`` — the network torchmetrics' FID/KID/IS use — with the official weights converted
from TensorFlow (``weights-inception-2015-12-05-6726825d.pth``). One forward gives pool3 features (2048-d, for
FID/KID) and ``logits_unbiased`` (1008, for IS). This harness never downloads it: point ``metric.inception_weights``
or ``$BENCH_INCEPTION_WEIGHTS`` at the file. A file with another checksum is refused unless
``metric.inception_sha256`` names it; such a network is recorded as ``inception-custom`` (its FID is not the
published Inception FID, and published reference statistics are not used with it).
"""
from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import torch

from bench.utils import file_sha256

from .common import EvaluatorError

ENV_VAR = "BENCH_INCEPTION_WEIGHTS"
OFFICIAL_FILE = "weights-inception-2015-12-05-6726825d.pth"
OFFICIAL_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{OFFICIAL_FILE}"
# Full sha256 of OFFICIAL_FILE (95,628,359 bytes); its first 8 hex digits are the file name's suffix (torch.hub).
OFFICIAL_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
RESIZE = "torch-fidelity tf1x-bilinear to 299x299 (grey repeated to RGB)"
FEATURES = ["2048", "logits_unbiased"]


class InceptionFeatureNet:
    def __init__(self, model, name: str, weights_hash: str, meta: dict):
        self.model, self.name, self.weights_hash, self.meta = model.eval(), name, weights_hash, meta
        self.resize, self.dim = RESIZE, 2048

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor):
        x = images_uint8
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        feats, logits = self.model(x)
        return feats, logits


def missing_weights_message(given) -> str:
    where = f"{given} does not exist" if given else "no weights file given"
    return (f"Inception-v3 weights needed ({where}): {OFFICIAL_FILE} (sha256 {OFFICIAL_SHA256}, from {OFFICIAL_URL}); "
            f"this harness never downloads it: copy it to this machine and set metric.inception_weights=/path/to/"
            f"{OFFICIAL_FILE} or {ENV_VAR}=/path/to/{OFFICIAL_FILE}")


def weights_file(cfg) -> tuple[str | None, Path | None]:
    """(what was given: metric.inception_weights, else $BENCH_INCEPTION_WEIGHTS; its path if that file exists)."""
    given = cfg.metric.inception_weights or os.environ.get(ENV_VAR)
    path = Path(given).expanduser() if given else None
    return given, path if path is not None and path.is_file() else None


def load_inception(cfg) -> InceptionFeatureNet:
    from torch_fidelity import feature_extractor_inceptionv3 as fe  # lazy: optional; only Inception scores need it

    given, path = weights_file(cfg)
    if path is None:
        raise EvaluatorError(missing_weights_message(given))
    digest = file_sha256(path)
    expected = (cfg.metric.inception_sha256 or OFFICIAL_SHA256).lower()
    if digest != expected:
        hint = ("the official file" if expected == OFFICIAL_SHA256
                else "metric.inception_sha256")
        raise EvaluatorError(f"metric.inception_weights={path} has sha256 {digest}, expected {expected} ({hint}); "
                             f"for other weights set metric.inception_sha256={digest}")
    try:
        # torch-fidelity loads the file with weights_only=False, unpickling anything a custom file holds:
        # load tensors only here and hand them over through the hook it uses for downloaded weights
        state = torch.load(path, map_location="cpu", weights_only=True)
        with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: state):
            model = fe.FeatureExtractorInceptionV3("inception-v3-compat", FEATURES)
    except Exception as e:  # a state dict of another architecture
        raise EvaluatorError(f"metric.inception_weights={path} is not a torch-fidelity Inception-v3 state dict "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    name = "inception" if digest == OFFICIAL_SHA256 else "inception-custom"
    return InceptionFeatureNet(model, name, digest[:16], {"path": str(path), "sha256": digest})


SFID_CHANNELS = 7  # ADM's evaluator keeps mixed_6/conv[..., :7]: 17 x 17 x 7 = 2023 features


class InceptionSpatialNet:
    """sFID features (Nash et al. 2021, "Generating images with sparse representations"; the ADM evaluator of
    Dhariwal & Nichol 2021): the first 7 channels of ``Mixed_6d.branch1x1`` (TF graph ``mixed_6/conv``, after its
    ReLU), 17x17 at the 299x299 input, flattened in TF's NHWC order as ADM does. Same weights and resize as FID."""

    def __init__(self, inception: InceptionFeatureNet):
        self.model, self.weights_hash, self.resize = inception.model, inception.weights_hash, inception.resize
        self.name, self.meta, self.dim = f"{inception.name}-mixed_6-conv", inception.meta, 17 * 17 * SFID_CHANNELS

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor):
        x = images_uint8.repeat(1, 3, 1, 1) if images_uint8.shape[1] == 1 else images_uint8
        out = []
        hook = self.model.Mixed_6d.branch1x1.register_forward_hook(lambda mod, inp, y: out.append(y))
        try:
            self.model(x)
        finally:
            hook.remove()
        spatial = out[0][:, :SFID_CHANNELS].permute(0, 2, 3, 1)  # N x 17 x 17 x 7 (NHWC, as the TF graph)
        return spatial.reshape(len(x), -1).float(), None


def load_inception_spatial(cfg) -> InceptionSpatialNet:
    return InceptionSpatialNet(load_inception(cfg))


def save_random_inception_weights(path, seed: int = 0) -> str:
    """A randomly initialised torch-fidelity Inception-v3 state dict, for testing the loading path only (its
    'FID' means nothing). Returns the file's sha256."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe  # lazy: optional; only Inception scores need it

    torch.manual_seed(seed)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", FEATURES)
    torch.save(model.state_dict(), path)
    return file_sha256(path)
