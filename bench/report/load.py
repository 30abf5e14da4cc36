"""Read result rows (``results.jsonl``, one JSON object per line, see docs/design.md "results row").

Reports only read rows and saved artifacts; nothing here recomputes a score.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED = ("schema_version", "cell_key", "status")
STATUSES = ("ok", "failed")


class ReportError(Exception):
    """Bad input for a report. ``str(err)`` is the one line shown to the user."""


@dataclass(frozen=True)
class Source:
    arg: str  # as given on the command line (kept verbatim so footers are identical on every clone)
    path: Path
    sha256: str
    num_rows: int


def find_results(arg: str) -> list[Path]:
    """A results.jsonl file, a directory holding one, or a directory tree of sweeps holding several."""
    p = Path(arg)
    if p.is_file():
        return [p]
    if p.is_dir():
        if (p / "results.jsonl").is_file():
            return [p / "results.jsonl"]
        found = sorted(p.rglob("results.jsonl"))
        if found:
            return found
        raise ReportError(f"{arg}: directory has no results.jsonl")
    raise ReportError(f"{arg}: no such file or directory")


def read_rows(path: Path) -> list[dict]:
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not a text file; expected results.jsonl (one JSON results row per line)") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}:{i}: not JSON Lines ({e.msg}); expected one bench results row per line") from None
        if not isinstance(obj, dict):
            raise ReportError(f"{path}:{i}: not a bench results row (a JSON {type(obj).__name__}, expected an object)")
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            raise ReportError(f"{path}:{i}: not a bench results row (missing {', '.join(missing)})")
        if obj["status"] not in STATUSES:
            raise ReportError(f"{path}:{i}: status={obj['status']!r} is not allowed: one of {', '.join(STATUSES)}")
        obj["_results_dir"] = str(path.parent)  # cell_dir may be relative to the results file
        obj["_sha"] = hashlib.sha256(data).hexdigest()[:12]
        rows.append(obj)
    if not rows:
        raise ReportError(f"{path}: empty results file (no rows)")
    return rows


def load(args: list[str]) -> tuple[pd.DataFrame, list[Source]]:
    """All rows of all inputs, one per cell_key (a later "ok" row supersedes earlier ones), in a fixed order."""
    if not args:
        raise ReportError("no results given: pass results.jsonl files or sweep directories")
    sources, by_key = [], {}
    for arg in args:
        for path in find_results(arg):
            rows = read_rows(path)
            sources.append(Source(arg, path, rows[0]["_sha"], len(rows)))
            for row in rows:
                prev = by_key.get(row["cell_key"])
                if prev is None or row["status"] == "ok" or prev["status"] != "ok":
                    by_key[row["cell_key"]] = row
    df = pd.DataFrame([by_key[k] for k in sorted(by_key)])
    # one label for "how were these samples made": the distillation method, else the sampler
    dm = df["distill_method"] if "distill_method" in df else pd.Series([None] * len(df))
    sampler = df["sampler"] if "sampler" in df else pd.Series([None] * len(df))
    df["method"] = [s if norm(d) in (None, "none") else d for d, s in zip(dm, sampler)]
    return df.reset_index(drop=True), sources


def norm(v):
    """A JSON/pandas value as a plain hashable Python value; NaN → None."""
    if v is None:
        return None
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return None if math.isnan(v) else v
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def sort_key(v):
    """Numbers ascending, then strings, then missing — the one order used everywhere."""
    v = norm(v)
    if v is None:
        return (2, 0.0, "")
    if isinstance(v, (int, float)):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def fmt_value(v) -> str:
    """A coordinate value as shown in tables: 7.5, 20, ddim; missing → —."""
    v = norm(v)
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
