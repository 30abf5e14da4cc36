"""The docs stay readable and true: a short README that runs CI's own test command and quotes no measured numbers,
links that resolve, a results-row reference that names every committed column, and no issue numbers or team talk
in code, configs or docs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS, ROOT / "reports" / "index.md"]
README_MAX_LINES = 150
README_MAX_WIDTH = 120
PAGES_NAMED_IN_README = ("configuration", "metrics", "studies", "checkpoints", "scale", "performance", "reliability",
                         "design")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# "#11", "(#14 item 2)", "issue 16", "PR 3": references to a tracker, which mean nothing to a reader of the product.
# Not: hex hashes (#6745630043570243), CSS colours (#222;), markdown headings (# Title).
ISSUE_REF = re.compile(r"(?:^|[\s(\[,\"'])#\d{1,4}(?![\w;}.%])|\b[Ii]ssues? #?\d+\b|\bPR #?\d+\b")
TEAM_TALK = re.compile(r"\b(?:engineers?|reviewers?|teammates?)\b|\b(?:this|the|our) session\b")
SCANNED = ("bench", "conf", "sweeps", "scripts", "docs", "tests")
SCANNED_FILES = ("README.md", "reports/index.md", "Makefile", ".ci/run", "setup.py", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".sh", ".toml", ".cfg", ".txt", ""}


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (commands may hold any number)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _scanned_files() -> list[Path]:
    files = [ROOT / f for f in SCANNED_FILES if (ROOT / f).is_file()]
    for d in SCANNED:
        files += [p for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES
                  and "shipped" not in p.parts and "__pycache__" not in p.parts]
    return sorted(set(files))


def test_readme_is_a_quickstart():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move " \
                                           f"reference material to docs/"
    long = [n for n, line in enumerate(lines, 1) if len(line) > README_MAX_WIDTH]
    assert not long, f"README.md lines {long} are longer than {README_MAX_WIDTH} characters"


def test_readme_runs_the_ci_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^make test$", ci, re.M), ".ci/run no longer runs `make test`: update README.md with it"
    text = README.read_text(encoding="utf-8")
    assert "make test" in text and "make run" in text
    make = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^test:", make, re.M) and re.search(r"^run:", make, re.M)


def test_readme_quotes_no_measured_numbers():
    """Numbers go stale with every re-run: they live under reports/ (reports/index.md), not in the README."""
    prose = _prose(README.read_text(encoding="utf-8"))
    measured = re.findall(r"\b\d+\.\d+\b|\b\d+(?:\.\d+)?\s?(?:ms|%|×|dB|MB|GB|s per|min\b|minutes)", prose)
    assert not measured, f"README.md quotes measured numbers {measured}: put them in reports/index.md"


def test_readme_links_every_reference_page():
    text = README.read_text(encoding="utf-8")
    for name in PAGES_NAMED_IN_README:
        assert (ROOT / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"
        assert f"(docs/{name}.md)" in text, f"README.md does not link docs/{name}.md"
    assert "(reports/index.md)" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    missing = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_every_committed_report_is_indexed():
    index = (ROOT / "reports" / "index.md").read_text(encoding="utf-8")
    reports = sorted(p.parent.name for p in (ROOT / "reports").glob("*/report.md"))
    assert reports, "no committed reports found"
    missing = [r for r in reports if f"({r}/report.md)" not in index]
    assert not missing, f"reports/index.md does not list {missing}"


def test_docs_are_not_about_one_machine():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for needle in ("/work/", "../shared/", "STYLE.md"):
            assert needle not in text, f"{page.relative_to(ROOT)} names {needle!r}, which only one machine has"


def test_design_names_every_committed_row_column():
    """docs/design.md's results-row section names every column the committed rows hold (templates such as
    `<metric>_std` cover one suffix for every metric)."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z0-9_<>]+)`", design))
    templates = [re.compile(re.escape(n).replace(re.escape("<metric>"), r"[a-z0-9_]+") + "$")
                 for n in named if "<metric>" in n]
    columns = set()
    for f in (ROOT / "reports" / "data").glob("*/results.jsonl"):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                columns.update(json.loads(line))
    assert len(columns) > 50
    missing = sorted(c for c in columns if c not in named and not any(t.match(c) for t in templates))
    assert not missing, f"docs/design.md does not name these results-row columns: {missing}"


def test_no_issue_numbers_or_team_talk():
    found = []
    for f in _scanned_files():
        if f == Path(__file__).resolve():
            continue  # this file spells the patterns out
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if ISSUE_REF.search(line) or TEAM_TALK.search(line):
                found.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, "issue references or team talk (say what the code does, not who asked):\n" + "\n".join(found)


@pytest.mark.parametrize("line, hit", [
    ("# Study (#11): model families", True), ('"""#14 item 2, before/after', True), ("per_call_s (issue 16)", True),
    ("# added by the metrics engineer", True), ("feature net #6745630043570243", False),
    ("th{border-top:2px solid #222;}", False), ("# Title", False), ("scope='session'", False),
    ("DEIS multistep exponential integrator", False),
])
def test_issue_patterns(line, hit):
    assert bool(ISSUE_REF.search(line) or TEAM_TALK.search(line)) is hit
