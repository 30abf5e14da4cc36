"""Prompt sets (bench/data/prompts.py): files decoded strictly, one clear line for each bad input."""
from __future__ import annotations

import pytest

from bench.schema import ConfigError


def _load(compose_cfg, path, *more):
    from bench.data.prompts import load_prompts

    cfg = compose_cfg("data=shapes", "prompts=file", f"prompts.path={path}", *more)
    return load_prompts(cfg.prompts, cfg.data)


@pytest.mark.parametrize("name, data, fragment", [
    # before: UnicodeDecodeError (a traceback)
    ("latin1.txt", "a red circle\ncaf\xe9 au lait\n".encode("latin-1"), "byte 0xe9 at line 2 (offset 16) is not UTF-8"),
    # before: AttributeError: 'NoneType' object has no attribute 'strip'
    ("short.csv", b"id,caption\n1,a red circle\n2\n", "row 3 of short.csv has 1 fields and no 'caption'"),
    # before: "a column of hdr.csv: " with an empty list
    ("hdr.csv", b"id,caption\n", "hdr.csv has a header (id, caption) and no rows"),
    ("empty.csv", b"", "it is empty"),
    ("nocol.csv", b"id,title\n1,x\n", "a header with one of caption, prompt, Prompt, Prompts, text"),
])
def test_bad_prompt_files_are_one_line(compose_cfg, tmp_path, name, data, fragment):
    f = tmp_path / name
    f.write_bytes(data)
    with pytest.raises(ConfigError, match="^prompts.path=") as e:
        _load(compose_cfg, f)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_good_prompt_files(compose_cfg, tmp_path):
    (tmp_path / "p.csv").write_bytes("\ufeffid,caption\n1, a red circle \n2,café\n".encode())
    assert _load(compose_cfg, tmp_path / "p.csv").texts == ("a red circle", "café")
    (tmp_path / "p.tsv").write_text("Prompt\tCategory\na blue square\tshapes\n")
    assert _load(compose_cfg, tmp_path / "p.tsv").texts == ("a blue square",)
    with pytest.raises(ConfigError, match=r"^prompts.column='x' is not allowed: a column of p.tsv: Prompt, Category"):
        _load(compose_cfg, tmp_path / "p.tsv", "prompts.column=x")


def test_a_prompt_files_clip_score_is_refused_before_the_pipeline_loads(compose_cfg, tmp_path):
    """Before: metric.clip_score=false was ignored with prompts=file on data=shapes (metric=auto scores CLIP there)
    and the offline CLIP's refusal came only after the pipeline had loaded. Now validation says so first."""
    from bench.models import tiny
    from bench.validate import validate

    (tmp_path / "p.txt").write_text("a red circle\n")
    sd = tiny.save("sd", tmp_path / "sd")
    args = ("data=shapes", "data.channels=3", "data.image_size=16", "model=pipeline", f"model.path={sd}",
            "prompts=file", f"prompts.path={tmp_path / 'p.txt'}")
    with pytest.raises(ConfigError, match=r"^metric='auto' is not allowed: metric=inception \(no CLIP score\)") as e:
        validate(compose_cfg(*args, "metric.clip_score=false"))
    assert "metric.clip_score=false does not turn it off" in str(e.value)
    with pytest.raises(ConfigError, match=r"^metric.clip_model='offline' is not allowed"):
        validate(compose_cfg(*args, "metric.clip_score=true"))
    validate(compose_cfg(*args, "metric=none"))  # no CLIP score: accepted
