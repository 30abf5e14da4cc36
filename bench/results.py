"""Append-only results table: one JSON row per sweep cell in ``<root>/results.jsonl``.

Every append rewrites the file through a temp file + ``os.replace`` under a file lock, so a reader (or a run killed
with ``kill -9`` at any point) only ever sees whole rows, and two sweeps appending to one file never interleave.
A cell whose key is already present is not appended again: that is how re-running a sweep resumes it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from filelock import FileLock

from bench.utils import atomic_write_text

SCHEMA_VERSION = 1
RESULTS_NAME = "results.jsonl"


class ResultsError(RuntimeError):
    pass


def results_path(root: str | os.PathLike) -> Path:
    root = Path(root)
    return root if root.suffix == ".jsonl" else root / RESULTS_NAME


def _lock(path: Path) -> FileLock:
    return FileLock(str(path) + ".lock", timeout=600)


def read_rows(path: str | os.PathLike) -> list[dict]:
    """All rows of a results file ([] when it does not exist). A row from a newer schema is an error."""
    path = results_path(path)
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{path}:{n}: not a JSON row ({e.msg}); is this a bench results.jsonl?") from None
        if not isinstance(row, dict) or "cell_key" not in row:
            raise ResultsError(f"{path}:{n}: row has no 'cell_key'; is this a bench results.jsonl?")
        version = row.get("schema_version", 0)
        if version > SCHEMA_VERSION:
            raise ResultsError(f"{path}:{n}: schema_version={version} is newer than this bench reads "
                               f"(<= {SCHEMA_VERSION}); upgrade bench to read it")
        rows.append(row)
    return rows


def done_keys(path: str | os.PathLike, statuses: Iterable[str] = ("ok",)) -> set[str]:
    """Keys of cells already finished with one of `statuses` (failed cells are retried on re-run)."""
    statuses = set(statuses)
    return {r["cell_key"] for r in read_rows(path) if r.get("status", "ok") in statuses}


def append_row(path: str | os.PathLike, row: dict) -> bool:
    """Atomically append `row` unless a finished row with its cell_key exists. Returns True if written.

    A failed row for the same key is replaced by a later row for it (the retry), so the file holds at most one row per
    cell key.
    """
    path = results_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {"schema_version": SCHEMA_VERSION, **row}
    with _lock(path):
        rows = read_rows(path)
        if any(r["cell_key"] == row["cell_key"] and r.get("status", "ok") == "ok" for r in rows):
            return False
        rows = [r for r in rows if r["cell_key"] != row["cell_key"]] + [row]
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows))
    return True
