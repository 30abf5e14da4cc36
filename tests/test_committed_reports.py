"""The example reports in reports/ regenerate byte for byte (tables) from the result rows committed beside them."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(p.name for p in (ROOT / "reports" / "data").iterdir() if (p / "results.jsonl").exists())
TABLES = ("report.md", "report.tex")


def _regen_command(study: str) -> list[str]:
    md = (ROOT / "reports" / study / "report.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("Regenerate: `bench-report "))
    return line.split("`")[1].split()[1:]


@pytest.mark.parametrize("study", STUDIES)
def test_committed_report_regenerates_byte_for_byte(tmp_path, study):
    shutil.copytree(ROOT / "reports" / "data" / study, tmp_path / "reports" / "data" / study)
    args = _regen_command(study)
    p = subprocess.run([sys.executable, "-m", "bench.report", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    new, old = tmp_path / "reports" / study, ROOT / "reports" / study
    names = list(TABLES) + sorted(q.name for q in old.glob("*.csv"))
    assert len(names) > 2
    for name in names:
        assert (new / name).read_bytes() == (old / name).read_bytes(), f"{study}/{name} differs"
    assert {q.name for q in (new / "plots").glob("*.png")} == {q.name for q in (old / "plots").glob("*.png")}
