"""Text-conditioned UNet: diffusers ``UNet2DConditionModel`` with cross-attention on the per-token states of a frozen
CLIP text tower (the latent-diffusion / Stable Diffusion conditioning, Rombach et al. 2022 §3.3), here the harness's
offline open_clip trained on the captioned shapes set (shipped, sha256-pinned), or a local CLIP text tower by path
(``model.text_encoder``): an open_clip model directory, a transformers ``CLIPTextModel`` directory with its tokenizer,
or a diffusers pipeline directory (its ``text_encoder/`` and ``tokenizer/``)."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from omegaconf import OmegaConf
from torch import nn

from bench.evaluators.clip import load_offline_clip, load_open_clip_dir
from bench.schema import ConfigError
from bench.utils import files_fingerprint

from .unet import check_unet


def text_encoder(path: str | None = None):
    """The frozen text tower: ``encode_text_tokens(texts)`` → per-token states (B, tokens, width), ``label`` and
    ``weights_hash``. ``path`` None: the shipped offline CLIP of the default shapes split (a ClipFeatureNet); else
    the tower at ``path`` (:func:`text_encoder_kind` says which layouts), read again when its files change."""
    if path is None:
        return _offline_tower()
    kind, enc_dir, tok_dir = text_encoder_kind(path)
    return _load_tower(kind, enc_dir, tok_dir, _fingerprint(enc_dir, tok_dir))


def text_encoder_fingerprint(path: str) -> str:
    """What a model key holds for a local tower: the content of every file it loads (weights, config, tokenizer)."""
    return _fingerprint(*text_encoder_kind(path)[1:])


def _fingerprint(enc_dir: Path, tok_dir: Path) -> str:
    dirs = enumerate(sorted({enc_dir, tok_dir}))
    return files_fingerprint([(f"{i}/{f.relative_to(d).as_posix()}", f) for i, d in dirs
                              for f in sorted(d.rglob("*")) if f.is_file()])[:16]


@functools.lru_cache(maxsize=1)  # read once per process: every model key of a text_unet sweep asks for its hash
def _offline_tower():
    # data None = the default split, whose CLIP is shipped (cache_dir is only used if the package lost it)
    return load_offline_clip(OmegaConf.create({"data": None, "cache_dir": os.environ.get("BENCH_CACHE",
                                                                                          ".cache/bench")}))


@functools.lru_cache(maxsize=4)  # keyed by the files' fingerprint: changed files are a new entry
def _load_tower(kind: str, enc_dir: Path, tok_dir: Path, digest: str):
    return load_open_clip_dir(enc_dir, digest) if kind == "open_clip" else HFTextTower(enc_dir, tok_dir, digest)


def text_encoder_kind(path: str) -> tuple[str, Path, Path]:
    """(kind, encoder dir, tokenizer dir) of a local text tower, or a one-line ConfigError on ``model.text_encoder``:
    ``open_clip`` (open_clip's local-dir layout: open_clip_config.json + weights), ``transformers`` (config.json of
    a CLIP text model, tokenizer files beside it or in ../tokenizer), or a diffusers pipeline directory (its
    text_encoder/ and tokenizer/ subfolders)."""
    p = Path(str(path)).expanduser()
    allowed = ("a local open_clip model directory (open_clip_config.json), a transformers CLIPTextModel directory "
               "with its tokenizer, or a diffusers pipeline directory with text_encoder/ and tokenizer/")
    if not p.is_dir():
        raise ConfigError("model.text_encoder", path, allowed, "no such directory; this harness never downloads")
    if (p / "open_clip_config.json").is_file():
        return "open_clip", p, p
    if (p / "text_encoder" / "config.json").is_file():
        return _checked_hf(path, p / "text_encoder", p / "tokenizer", allowed)
    if (p / "config.json").is_file():
        tok = p if any((p / f).is_file() for f in ("vocab.json", "tokenizer.json")) else p.parent / "tokenizer"
        return _checked_hf(path, p, tok, allowed)
    raise ConfigError("model.text_encoder", path, allowed, "it has neither open_clip_config.json nor config.json")


def _checked_hf(path, enc: Path, tok: Path, allowed: str) -> tuple[str, Path, Path]:
    c = json.loads((enc / "config.json").read_text())
    arch = c.get("architectures") or [c.get("_class_name", "model of no known class")]
    if not str(arch[0]).startswith("CLIPTextModel"):
        raise ConfigError("model.text_encoder", path, allowed, f"{enc}/config.json is a {arch[0]}, not a CLIP text "
                          "model")
    if not any((tok / f).is_file() for f in ("vocab.json", "tokenizer.json")):
        raise ConfigError("model.text_encoder", path, allowed, f"no tokenizer (vocab.json) beside {enc} or in {tok}")
    return "transformers", enc, tok


class HFTextTower:
    """A transformers CLIP text model as the frozen text tower: ``last_hidden_state`` of the prompt padded to the
    tokenizer's max length (what Stable Diffusion's pipelines pass as ``encoder_hidden_states``)."""

    def __init__(self, enc_dir: Path, tok_dir: Path, weights_hash: str):
        from transformers import CLIPTextModel, CLIPTokenizer  # lazy: only for a transformers text tower

        self.model = CLIPTextModel.from_pretrained(enc_dir, local_files_only=True).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
        self.length = int(min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings))
        self.label, self.weights_hash = f"transformers:{enc_dir.name}", weights_hash

    @torch.no_grad()
    def encode_text_tokens(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.length, truncation=True,
                             return_tensors="pt").input_ids
        return self.model(ids).last_hidden_state.float()


def check_text_unet(model_cfg, info) -> None:
    """Captions to condition on: labelled data whose class names are the prompts (shapes: "a red circle at the top
    left"); the UNet's own checks (:func:`check_unet`). Each a one-line ConfigError."""
    if not info.num_classes or not info.class_names:
        raise ConfigError("model.name", model_cfg.name, "a data set with captions (data=shapes, class_conditional)",
                          f"data {info.id} has no class captions to prompt with")
    if model_cfg.text_encoder:
        text_encoder_kind(model_cfg.text_encoder)
    check_unet(model_cfg, info)


class TextUNetDenoiser(nn.Module):
    """``forward(x, t, class_labels)``: the UNet with ``encoder_hidden_states`` = the text tower's token states of
    class k's caption; the null class (index num_classes, or None) is the empty prompt "", so CFG is the usual
    out_u + s (out_c - out_u) with the empty prompt as the unconditional branch (as in Stable Diffusion), and CFG
    label dropout trains it. The captions' states are computed once at build time and kept as a buffer, so a cached
    model carries the exact context it was trained with."""

    def __init__(self, unet: UNet2DConditionModel, text_states: torch.Tensor, text_encoder_id: str = ""):
        super().__init__()
        self.unet = unet
        self.num_classes = text_states.shape[0] - 1
        self.text_encoder_id = text_encoder_id
        self.register_buffer("text_states", text_states)  # (num_classes + 1, tokens, width); last row: ""

    @classmethod
    def from_config(cls, model_cfg, info) -> TextUNetDenoiser:
        check_text_unet(model_cfg, info)
        clip = text_encoder(model_cfg.text_encoder or None)
        states = clip.encode_text_tokens(list(info.class_names)[: info.num_classes] + [""])
        ch, size = info.shape[0], info.shape[-1]
        unet = UNet2DConditionModel(sample_size=size, in_channels=ch, out_channels=ch,
                                    block_out_channels=tuple(model_cfg.block_out_channels),
                                    layers_per_block=model_cfg.layers_per_block,
                                    down_block_types=tuple(model_cfg.down_block_types),
                                    up_block_types=tuple(model_cfg.up_block_types),
                                    norm_num_groups=model_cfg.norm_num_groups,
                                    attention_head_dim=model_cfg.attention_head_dim,
                                    cross_attention_dim=states.shape[-1])
        return cls(unet, states, f"{clip.label}#{clip.weights_hash}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t, states = self.condition(x, t, class_labels)
        return self.unet(x, t, encoder_hidden_states=states).sample

    def condition(self, x: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The UNet's timestep (B,) and ``encoder_hidden_states`` for ``x`` (also what an adapter on it is fed)."""
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
        return t, self.text_states[class_labels].to(x.dtype)
