"""The example reports in reports/ regenerate byte for byte (tables) from the result rows committed beside them."""
import shlex
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(p.name for p in (ROOT / "reports" / "data").iterdir() if (p / "results.jsonl").exists())
TABLES = ("report.md", "report.tex")


def _regen_command(study: str) -> list[str]:
    md = (ROOT / "reports" / study / "report.md").read_text()
    line = next(x for x in md.splitlines() if x.startswith("Regenerate: `bench-report "))
    return shlex.split(line.split("`")[1])[1:]  # a shell command: quoted arguments (--where 'k!=v') stay whole


def _regenerate(study: str, where: Path, monkeypatch) -> None:
    """Run the report's own Regenerate command in `where`: what the `bench-report` console script runs, in this
    process (the report's imports are paid once per test worker, not once per report)."""
    from bench.report import main

    monkeypatch.chdir(where)
    assert main(_regen_command(study)) == 0


@pytest.mark.parametrize("study", STUDIES)
def test_committed_report_regenerates_byte_for_byte(tmp_path, study, monkeypatch):
    shutil.copytree(ROOT / "reports" / "data" / study, tmp_path / "reports" / "data" / study)
    _regenerate(study, tmp_path, monkeypatch)
    new, old = tmp_path / "reports" / study, ROOT / "reports" / study
    names = list(TABLES) + sorted(q.name for q in old.glob("*.csv"))
    assert len(names) > 2
    for name in names:
        assert (new / name).read_bytes() == (old / name).read_bytes(), f"{study}/{name} differs"
    assert {q.name for q in (new / "plots").glob("*.png")} == {q.name for q in (old / "plots").glob("*.png")}


def _perturb_rows(text: str, rng) -> str:
    """Every measured float of every row moved by 1 ulp up or down (seeded per value); settings and exact counts
    (integer-valued floats such as nfe) kept, since machine rounding noise only touches computed values."""
    import json

    import numpy as np

    from bench.report.plan import FACTORS

    out = []
    for line in text.splitlines():
        row = json.loads(line)
        for k, v in row.items():
            if isinstance(v, float) and k not in FACTORS and np.isfinite(v) and not v.is_integer():
                row[k] = float(np.nextafter(v, np.inf if rng.random() < 0.5 else -np.inf))
        out.append(json.dumps(row))
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("study", STUDIES)
def test_committed_report_is_stable_under_one_ulp(tmp_path, study, monkeypatch):
    """Machine-level rounding noise (1 ulp in any measured value) must not change a byte of a published table:
    the tables print fixed decimals and the CSVs 6 significant digits (bench.report.render.CSV_SIGNIFICANT_DIGITS)."""
    import hashlib
    import random

    src = tmp_path / "reports" / "data" / study
    shutil.copytree(ROOT / "reports" / "data" / study, src)
    old_text = (src / "results.jsonl").read_text()
    new_text = _perturb_rows(old_text, random.Random(study))
    assert new_text != old_text  # the perturbation really moved values
    (src / "results.jsonl").write_text(new_text)
    _regenerate(study, tmp_path, monkeypatch)
    # the provenance footer names the input file's sha256, which the perturbation changed on purpose
    sha_old, sha_new = (hashlib.sha256(t.encode()).hexdigest()[:12] for t in (old_text, new_text))
    new, old = tmp_path / "reports" / study, ROOT / "reports" / study
    for name in list(TABLES) + sorted(q.name for q in old.glob("*.csv")):
        text = (new / name).read_text(encoding="utf-8").replace(sha_new, sha_old)
        assert text == (old / name).read_text(encoding="utf-8"), f"{study}/{name} changed under a 1-ulp perturbation"
