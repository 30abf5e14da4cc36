"""CLIP evaluators (open_clip): image embeddings for FID/KID, zero-shot logits over the captions for IS, and the
image-text cosine for CLIPScore (Hessel et al. 2021).

Two sources, chosen by ``metric.clip_model``:
- ``offline`` (default): a tiny CLIP — open_clip's own ``CLIP`` model (a 2-layer ViT on 16x16 images with 4x4
  patches, a 2-layer text transformer, open_clip's tokenizer) trained with open_clip's ``ClipLoss`` (Radford et al.
  2021) by the harness on the ``shapes`` train split (600 steps, ~30 s on one CPU thread). Its held-out image->text
  top-1 retrieval over the 48 captions must reach ``MIN_RETRIEVAL``. Cached under ``<cache_dir>/evaluators/`` as an
  open_clip ``local-dir:`` model (``open_clip_config.json`` + ``open_clip_model.safetensors``) with its sha256.
  Scores with it are "shapes-CLIP" scores: meaningful within this harness only.
- an open_clip model name (``ViT-B-32``...) with ``metric.clip_pretrained`` = a local checkpoint file (or a
  pretrained tag, which needs a model hub this machine does not have: a clear error then).

FID features are sqrt(d) · normalise(image embedding): unit-free, and KID's kernel sees x·y/d = cos(x, y).
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save_file

from bench.data import build_dataset, get_data_info
from bench.images import quantize_uint8
from bench.schema import DataConfig
from bench.utils import config_hash, file_sha256, umask_mode

from .common import EvaluatorError, find_evaluator, one_thread, publish, verified_meta

log = logging.getLogger("bench")

MIN_RETRIEVAL = 0.80
TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 16, "patch_size": 4, "layers": 2, "width": 64, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2, "mlp_ratio": 2.0},
}
# [-1, 1] inputs: (u8/255 - 0.5) / 0.5, the same formula open_clip's transforms use with these mean/std
TINY_PREPROCESS = {"size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}
TRAIN = {"version": 3, "steps": 600, "lr": 2e-3, "weight_decay": 0.05, "warmup": 100, "seed": 0, "num_train": 6000}


class ClipFeatureNet:
    """open_clip model as a FeatureNet: uint8 images -> (sqrt(d)·unit image embeddings, zero-shot logits)."""

    name = "clip"

    def __init__(self, model, tokenizer, class_names, weights_hash: str, label: str, meta: dict):
        self.model, self.tokenizer, self.weights_hash, self.meta = model.eval(), tokenizer, weights_hash, meta
        self.label = label  # e.g. "offline-tiny-clip" or "ViT-B-32"
        pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = model.visual.image_size
        self.size = size[0] if isinstance(size, (tuple, list)) else int(size)
        self.mean = torch.tensor(pcfg.get("mean", TINY_PREPROCESS["mean"])).view(1, 3, 1, 1)
        self.std = torch.tensor(pcfg.get("std", TINY_PREPROCESS["std"])).view(1, 3, 1, 1)
        self.resize = f"{label}: bicubic-antialias to {self.size}x{self.size} unless equal, open_clip mean/std"
        self.dim = int(model.text_projection.shape[1] if model.text_projection is not None else TINY_CLIP["embed_dim"])
        self.class_embeds = self.encode_text(list(class_names)) if class_names else None

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts)).float()

    @torch.no_grad()
    def encode_text_tokens(self, texts: list[str]) -> torch.Tensor:
        """Per-token states (B, context_length, width) of the text tower after ``ln_final``, before pooling: the
        cross-attention context of a text-conditioned UNet (what SD takes from CLIPTextModel.last_hidden_state)."""
        m = self.model
        x = m.token_embedding(self.tokenizer(texts)) + m.positional_embedding
        return m.ln_final(m.transformer(x, attn_mask=m.attn_mask)).float()

    def _pixels(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float() / 255.0
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_image(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self._pixels(images_uint8)).float()

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor):
        img = F.normalize(self.encode_image(images_uint8), dim=-1)
        logits = None
        if self.class_embeds is not None:
            logits = self.model.logit_scale.exp() * img @ F.normalize(self.class_embeds, dim=-1).T
        return img * math.sqrt(img.shape[1]), logits


def _shapes_cfg(data_cfg):
    """The offline CLIP's data: canonical 16px RGB shapes, split like the run's data when that is shapes."""
    same = data_cfg is not None and data_cfg.name == "shapes"
    return OmegaConf.structured(DataConfig(name="shapes", image_size=16, channels=3, num_train=TRAIN["num_train"],
                                           test_fraction=float(data_cfg.test_fraction) if same else 0.2,
                                           split_seed=int(data_cfg.split_seed) if same else 0))


def _create(model_dir: Path):
    import open_clip  # lazy: an optional extra, needed only for CLIP scores

    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # "no weights found" on a fresh dir
    try:
        model = open_clip.create_model(f"local-dir:{model_dir}", output_dict=True)
    finally:
        logging.getLogger().disabled = was
    return model, open_clip.get_tokenizer(f"local-dir:{model_dir}")


@torch.no_grad()
def retrieval_accuracy(net: ClipFeatureNet, data_cfg, split: str = "test") -> float:
    """Image -> text top-1 over all class captions on ``split`` (the zero-shot logits' argmax)."""
    ds = build_dataset(data_cfg, split)
    correct = 0
    for s in range(0, len(ds), 500):
        _, logits = net(quantize_uint8(ds.x[s:s + 500]))
        correct += int((logits.argmax(1) == ds.y[s:s + 500]).sum())
    return correct / len(ds)


def train_offline_clip(data_cfg, model_dir: Path) -> dict:
    """Train the tiny CLIP with open_clip's ClipLoss; each batch holds one image of every caption (no duplicate
    captions, so the contrastive targets are exact). Writes the weights into ``model_dir``."""
    from open_clip.loss import ClipLoss  # lazy: open_clip is an optional extra, needed only for CLIP scores

    torch.manual_seed(TRAIN["seed"])
    g = torch.Generator().manual_seed(TRAIN["seed"])
    model, tokenizer = _create(model_dir)
    ds = build_dataset(data_cfg, "train")
    captions = get_data_info(data_cfg).class_names
    x = quantize_uint8(ds.x).float() / 127.5 - 1.0  # what a saved PNG holds, as at scoring time
    tokens = tokenizer(captions)
    by_class = [torch.nonzero(ds.y == k).flatten() for k in range(len(captions))]
    loss_fn = ClipLoss()
    # The token embedding (49408 x 64, open_clip's full BPE vocabulary) stays at its seeded random init: our
    # captions use ~20 tokens, and skipping its dense gradient / AdamW update makes a step several times cheaper.
    model.token_embedding.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=TRAIN["lr"],
                            weight_decay=TRAIN["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / TRAIN["warmup"]) * 0.5 * (
        1 + math.cos(math.pi * min(s, TRAIN["steps"]) / TRAIN["steps"])))
    t0 = time.time()
    model.train()
    for _ in range(TRAIN["steps"]):
        pick = torch.stack([c[torch.randint(len(c), (1,), generator=g)] for c in by_class]).flatten()
        out = model(x[pick], tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    model.eval()
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(model_dir / "open_clip_model.safetensors"))
    return {"train_seconds": round(time.time() - t0, 1), "final_loss": float(loss.detach()), "n_train": len(ds)}


def load_offline_clip(cfg, info=None, use_shipped: bool = True) -> ClipFeatureNet:
    """The offline CLIP for this split convention: shipped (default split), cached, or trained on first use."""
    data_cfg = _shapes_cfg(cfg.data)
    key = config_hash({"model": TINY_CLIP, "pre": TINY_PREPROCESS, "train": TRAIN,
                       "split_seed": data_cfg.split_seed, "test_fraction": data_cfg.test_fraction})
    root = Path(cfg.cache_dir) / "evaluators"
    path = find_evaluator(cfg.cache_dir, f"tiny_clip-{key}", use_shipped)  # shipped (the default split) or cached
    captions = list(info.class_names) if info is not None and info.class_names else None
    if path is None:
        path = root / f"tiny_clip-{key}"
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tiny_clip-{key}."))
        umask_mode(tmp)
        (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP,
                                                               "preprocess_cfg": TINY_PREPROCESS}, indent=2))
        log.info("training the offline CLIP evaluator on captioned shapes (once; cached at %s, a few minutes)", path)
        with one_thread():
            meta = train_offline_clip(data_cfg, tmp)
        model, tok = _create(tmp)
        net = ClipFeatureNet(model, tok, get_data_info(data_cfg).class_names, "", "offline-tiny-clip", {})
        meta["test_retrieval_top1"] = retrieval_accuracy(net, data_cfg, "test")
        if meta["test_retrieval_top1"] < MIN_RETRIEVAL:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EvaluatorError(f"offline CLIP reached held-out image->text top-1 {meta['test_retrieval_top1']:.3f}"
                                 f" < {MIN_RETRIEVAL} required; not cached (training config {TRAIN})")
        publish(tmp, path, "open_clip_model.safetensors", {**meta, "key": key, "train": TRAIN})
    meta = verified_meta(path, "open_clip_model.safetensors")
    model, tok = _create(path)
    if captions is None:
        captions = get_data_info(data_cfg).class_names
    return ClipFeatureNet(model, tok, captions, meta["weights_sha256"][:16], "offline-tiny-clip",
                          {"test_retrieval_top1": meta["test_retrieval_top1"], "path": str(path)})


def load_open_clip_dir(path: Path, weights_hash: str) -> ClipFeatureNet:
    """An open_clip model saved in its local-dir layout (open_clip_config.json + weights), e.g. the offline CLIP's
    cache entry: a text tower for model=text_unet. Its text tower must be open_clip's own (token_embedding +
    transformer), whose per-token states :meth:`ClipFeatureNet.encode_text_tokens` reads."""
    try:
        model, tok = _create(Path(path))
    except Exception as e:
        raise EvaluatorError(f"model.text_encoder={str(path)!r} could not be loaded as an open_clip local-dir model "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    if not hasattr(model, "token_embedding"):
        raise EvaluatorError(f"model.text_encoder={str(path)!r} is an open_clip model with a {type(model).__name__} "
                             "text tower; per-token states are read from open_clip's own CLIP text transformer")
    return ClipFeatureNet(model, tok, [], weights_hash, f"open_clip:{Path(path).name}", {"path": str(path)})


def load_clip(cfg, info=None) -> ClipFeatureNet:
    """``metric.clip_model``: ``offline`` or an open_clip model name with ``metric.clip_pretrained``."""
    name, pretrained = cfg.metric.clip_model, cfg.metric.clip_pretrained
    if name == "offline":
        return load_offline_clip(cfg, info)
    return load_open_clip(name, pretrained, info)


def load_cmmd_clip(cfg, info=None) -> ClipFeatureNet:
    """The CLIP of CMMD: the offline CLIP on ``data=shapes``, else ``metric.cmmd_clip_model`` (ViT-L-14-336, the
    paper's) from the local checkpoint ``metric.cmmd_clip_weights``."""
    if cfg.data.name == "shapes":
        return load_offline_clip(cfg, info)
    weights = cfg.metric.cmmd_clip_weights
    if not weights or not Path(weights).expanduser().is_file():
        raise EvaluatorError(cmmd_weights_message(cfg))
    return load_open_clip(cfg.metric.cmmd_clip_model, weights, info,
                          ("metric.cmmd_clip_model", "metric.cmmd_clip_weights"))


def cmmd_weights_message(cfg) -> str:
    given = cfg.metric.cmmd_clip_weights
    return (f"metric.cmmd_clip_weights={given!r}: CMMD on data={cfg.data.name} needs a local open_clip checkpoint "
            f"of metric.cmmd_clip_model={cfg.metric.cmmd_clip_model} ({'file not found' if given else 'not set'}; "
            f"this machine cannot download one)")


def load_open_clip(name, pretrained, info=None, keys=("metric.clip_model", "metric.clip_pretrained")):
    """open_clip model ``name`` with weights ``pretrained`` (a local checkpoint file, or a tag, which needs a hub);
    ``keys`` name the config keys the two came from, for the errors."""
    import open_clip  # lazy: an optional extra, needed only for CLIP scores

    if name not in open_clip.list_models():
        raise EvaluatorError(f"{keys[0]}={name!r} is not an open_clip model: offline | one of "
                             f"open_clip.list_models() (e.g. ViT-B-32)")
    if not pretrained:
        raise EvaluatorError(f"{keys[0]}={name} needs {keys[1]}=/path/to/checkpoint "
                             f"(a local open_clip checkpoint; this machine cannot download one)")
    is_file = Path(str(pretrained)).expanduser().is_file()
    try:
        model = open_clip.create_model(name, pretrained=str(Path(pretrained).expanduser()) if is_file else pretrained)
    except Exception as e:
        raise EvaluatorError(f"{keys[1]}={pretrained!r} for {keys[0]}={name} could not be loaded "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); download the checkpoint on a "
                             f"machine with internet and set {keys[1]}=/path/to/checkpoint") from None
    digest = file_sha256(Path(pretrained).expanduser()) if is_file else f"tag:{pretrained}"
    captions = list(info.class_names) if info is not None and info.class_names else []
    return ClipFeatureNet(model, open_clip.get_tokenizer(name), captions, digest[:16], name,
                          {"pretrained": str(pretrained)})
