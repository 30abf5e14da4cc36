"""The linter (ruff, configured in pyproject.toml) finds nothing in the code, the tests and the scripts."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                          "bench", "tests", "scripts"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "No module named ruff" not in out.stderr, "ruff is part of the test extra: pip install -e '.[test]'"
    assert out.returncode == 0, f"ruff check bench tests scripts:\n{out.stdout}{out.stderr}"


def test_ruff_reads_the_project_config(tmp_path):
    """The check above means something: the project's rules are the ones applied (a long line is a finding)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx = '" + "a" * 130 + "'\n")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                          "--config", str(ROOT / "pyproject.toml"), str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1 and "F401" in out.stdout and "E501" in out.stdout, out.stdout + out.stderr
