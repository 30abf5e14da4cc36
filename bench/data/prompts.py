"""Prompt sets (``prompts`` config group) for text-to-image pipelines: which prompt image i of a cell gets.

- ``none``: no prompts (unconditional or class-conditional models).
- ``shapes``: the held-out captions of ``data=shapes`` ("a red circle at the top left"), offline; each prompt keeps
  its class, so the offline CLIP evaluator scores it exactly as it scores the harness's own text-conditioned samples.
- ``file``: one prompt per line (``.txt``), COCO's ``captions_*.json`` (its annotations' captions), or a column of a
  ``.csv`` / ``.tsv`` (PartiPrompts' ``Prompt``, DrawBench's ``Prompts``: the first of ``prompts.column``, caption,
  prompt, Prompt, Prompts, text).

A seeded subset of ``prompts.num_prompts`` prompts (0 = all, in file order); image i gets prompt
``(i // images_per_prompt) mod len(prompts)``. The row records the set's id and the sha256 of the selected prompts.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.registry import Entry, Registry
from bench.schema import ConfigError

COLUMNS = ("caption", "prompt", "Prompt", "Prompts", "text")


@dataclass(frozen=True)
class PromptSet:
    id: str
    texts: tuple  # the selected prompts, in order
    labels: tuple | None  # shapes: each prompt's class (CLIP score against that class's caption)
    negative_prompt: str
    images_per_prompt: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.texts).encode()).hexdigest()[:16]

    def of(self, i: int) -> int:
        """The prompt index of image i."""
        return (int(i) // self.images_per_prompt) % len(self.texts)


def _shapes(p, data_cfg):
    if data_cfg.name != "shapes":
        raise ConfigError("prompts", "shapes", "data=shapes (its held-out captions)", f"data={data_cfg.name}")
    from bench.data.shapes import ShapesDataset, shapes_caption  # lazy: only this prompt set renders shapes

    labels = np.arange(ShapesDataset.num_items(data_cfg, "test")) % ShapesDataset.num_classes
    return [shapes_caption(k) for k in labels], labels.tolist()


def _read_text(path: Path, key_value) -> str:
    """The file's text, decoded strictly as UTF-8 (a byte that is not UTF-8 is one line naming where it is)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a BOM (spreadsheet exports) is not part of the first prompt
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError("prompts.path", key_value, "a UTF-8 text file",
                          f"byte 0x{data[e.start]:02x} at line {line} (offset {e.start}) is not UTF-8: re-save the "
                          f"file as UTF-8") from None


def _table(path: Path, p) -> list[str]:
    """The prompts of a .csv/.tsv: one column (``prompts.column``, else the first of COLUMNS present), every row."""
    text = _read_text(path, p.path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        cols = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as e:
        raise ConfigError("prompts.path", p.path, "a .csv/.tsv file with a header row", f"{path.name}: {e}") from None
    if not cols:
        raise ConfigError("prompts.path", p.path, "a .csv/.tsv file with a header row and one prompt per row",
                          "it is empty")
    col = p.column or next((c for c in COLUMNS if c in cols), None)
    if col not in cols:
        key, value = ("prompts.column", p.column) if p.column else ("prompts.path", p.path)
        raise ConfigError(key, value, f"a column of {path.name}: {', '.join(cols)}" if p.column else
                          f"a header with one of {', '.join(COLUMNS)} (or prompts.column=NAME)",
                          f"its header is {', '.join(cols)}" if not p.column else "")
    if not rows:
        raise ConfigError("prompts.path", p.path, "a file with at least one prompt",
                          f"{path.name} has a header ({', '.join(cols)}) and no rows")
    for n, r in enumerate(rows, 2):  # line 1 is the header
        if r.get(col) is None:
            raise ConfigError("prompts.path", p.path, f"a {col!r} field in every row",
                              f"row {n} of {path.name} has {len([v for v in r.values() if v is not None])} fields and "
                              f"no {col!r}")
    return [r[col].strip() for r in rows]


def _file(p, data_cfg):
    if not p.path:
        raise ConfigError("prompts.path", None, "a .txt (one prompt per line), .csv or .tsv file", "prompts=file")
    path = Path(str(p.path)).expanduser()
    if not path.is_file():
        raise ConfigError("prompts.path", p.path, "an existing .txt, .csv or .tsv file", "no such file")
    if path.suffix.lower() == ".json":  # COCO's captions_*.json: {"annotations": [{"caption": ...}, ...]}
        text = _read_text(path, p.path)
        try:
            data = json.loads(text)
            texts = [a["caption"].strip() for a in data["annotations"]]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError("prompts.path", p.path, "a COCO captions file ({\"annotations\": [{\"caption\": "
                              "...}]}) when .json") from None
    elif path.suffix.lower() in (".csv", ".tsv"):
        texts = _table(path, p)
    else:
        texts = [line.strip() for line in _read_text(path, p.path).splitlines()]
    texts = [t for t in texts if t]
    if not texts:
        raise ConfigError("prompts.path", p.path, "a file with at least one prompt", "it has none")
    return texts, None


def load_prompts(prompts_cfg, data_cfg) -> PromptSet | None:
    """The prompt set a config selects (None for ``prompts=none``); a bad file or key is a ConfigError."""
    p = prompts_cfg
    if p.name == "none":
        return None
    texts, labels = PROMPTS[p.name].build(p, data_cfg)
    if p.num_prompts and p.num_prompts < len(texts):
        pick = np.sort(np.random.default_rng(int(p.seed)).choice(len(texts), int(p.num_prompts), replace=False))
        texts, labels = [texts[i] for i in pick], (None if labels is None else [labels[i] for i in pick])
    name = p.name if p.name != "file" else Path(str(p.path)).name
    return PromptSet(name, tuple(texts), None if labels is None else tuple(labels), str(p.negative_prompt),
                     int(p.images_per_prompt))


def _check(cfg, info) -> None:
    if cfg.prompts.name != "none" and cfg.model.name != "pipeline":
        raise ConfigError("prompts", cfg.prompts.name, "none unless model=pipeline",
                          "the harness's own models take classes, not prompts")
    load_prompts(cfg.prompts, cfg.data)
    _check_clip_score(cfg, info)


def _check_clip_score(cfg, info) -> None:
    """A prompt file's CLIP score needs an open_clip model: the offline CLIP only knows the shapes captions. Refused
    here, before any pipeline loads; metric=auto scores CLIP on data=shapes whatever metric.clip_score says."""
    m = cfg.metric
    if cfg.prompts.name != "file" or m.name == "none" or m.clip_model != "offline":
        return
    if m.clip_score:
        raise ConfigError("metric.clip_model", "offline", "an open_clip model name with metric.clip_pretrained=FILE "
                          "for metric.clip_score=true with prompts=file",
                          "the offline CLIP only knows the shapes captions")
    if m.name == "auto" and cfg.data.name == "shapes" and info is not None and info.num_classes:
        raise ConfigError("metric", "auto", "metric=inception (no CLIP score), or metric.clip_model=NAME "
                          "metric.clip_pretrained=FILE, with prompts=file on data=shapes",
                          "metric=auto scores CLIP on data=shapes (metric.clip_score=false does not turn it off) and "
                          "the offline CLIP only knows the shapes captions, not the file's prompts")


PROMPTS = Registry("prompts", "prompts.name", {
    "none": Entry(None, _check),
    "shapes": Entry(_shapes, _check),
    "file": Entry(_file, _check),
})
