"""Cell and model identity (bench/keys.py): the keys of every committed result recomputed from its recorded config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted((REPO / "reports" / "data").glob("*/results.jsonl"))
TINY_SD = "/tmp/tiny-sd"  # where the committed tiny-SD studies found their random-weight pipeline


def committed_rows() -> list[tuple[Path, dict]]:
    return [(f.parent, json.loads(line)) for f in COMMITTED for line in f.read_text().splitlines() if line.strip()]


def recorded_config(root: Path, row: dict):
    """The config a committed row was run with: its cells/<key>/config.yaml over today's schema defaults (a key added
    since the row was written takes its default, as a fresh compose of that command would)."""
    from bench.schema import GROUPS, BenchConfig

    base = OmegaConf.structured(BenchConfig)
    for group, node in GROUPS.items():
        base[group] = OmegaConf.structured(node)
    return OmegaConf.merge(base, OmegaConf.load(root / row["config_path"]))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """The committed tiny-SD rows' pipeline, rebuilt: `bench-tiny-pipeline sd` is seeded, so its files (and their
    fingerprint) are the ones those rows were keyed with under diffusers of the version they record."""
    from bench.models import tiny

    return tiny.save("sd", tmp_path_factory.mktemp("committed") / "tiny-sd")


def test_every_committed_row_keeps_its_cell_key_and_model_key(tiny_sd, monkeypatch):
    import diffusers

    from bench import keys
    from bench.models import diffusers_checkpoint as checkpoints

    own_resolve = checkpoints.resolve
    monkeypatch.setattr(checkpoints, "resolve", lambda p: tiny_sd if str(p) == TINY_SD else own_resolve(p))
    rows = committed_rows()
    assert len(rows) >= 183  # every study under reports/data
    checked, wrong = 0, []
    for root, row in rows:
        if row["model"] == "pipeline" and row["diffusers"] != diffusers.__version__:
            continue  # another diffusers writes other config files: the rebuilt pipeline is not the keyed one
        cfg = recorded_config(root, row)
        got = {"cell_key": keys.cell_key(cfg), "model_key": keys.model_key(cfg)}
        if row.get("classifier_key"):
            got["classifier_key"] = keys.classifier_key(cfg)
        if row.get("vae_key"):
            got["vae_key"] = keys.vae_key(cfg)
        want = {k: row[k] for k in got}
        if got != want:
            wrong.append(f"{root.name}/{row['cell_key']}: {want} != {got}")
        checked += 1
    assert not wrong, "\n".join(wrong)
    assert checked == len(rows)
