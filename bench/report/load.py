"""Read result rows (``results.jsonl``) through bench.results, the row's owner (schema, reader, "finished").

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

from bench.metric_spec import names
from bench.results import ResultsError, is_finished, parse_rows


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
    """The rows of one results file (bench.results' reader: a newer schema_version is refused in one line)."""
    data = path.read_bytes()
    try:
        rows = parse_rows(path, data)
    except ResultsError as e:
        raise ReportError(str(e)) from None
    sha = hashlib.sha256(data).hexdigest()[:12]
    for obj in rows:
        obj["_results_dir"] = str(path.parent)  # cell_dir may be relative to the results file
        obj["_sha"] = sha
    if not rows:
        raise ReportError(f"{path}: empty results file (no rows)")
    return rows


# What two finished rows of one cell_key must agree on (scores: to rel 1e-6, machine rounding; the rest exactly).
# Cost and timing may differ between two runs of a cell; the earliest row (created_at, then path) is kept for them,
# whatever the order of the inputs.
SAME_SCORES = names(deterministic=True)
SAME_PROVENANCE = ("feature_net", "feature_net_hash", "resize", "quantize", "ref_id", "ref_hash", "n_ref",
                   "num_samples", "repeats", "clip_net", "clip_net_hash", "model_key")


def _one_of_two(a: dict, b: dict) -> dict:
    """Two finished rows with one cell_key (the same cell in two inputs): the earlier one if they agree on every
    score and provenance column, else ReportError naming the key, the column and both files."""
    for col in SAME_PROVENANCE + SAME_SCORES:
        x, y = norm(a.get(col)), norm(b.get(col))
        if col in SAME_SCORES and isinstance(x, float) and isinstance(y, float):
            same = math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)
        else:
            same = x == y
        if not same:
            raise ReportError(f"cell {a['cell_key']} appears twice with different {col} ({x!r} in "
                              f"{a['_results_dir']}, {y!r} in {b['_results_dir']}): the same cell scored two ways; "
                              f"report them separately or remove one row")
    return min(a, b, key=lambda r: (str(r.get("created_at", "")), r["_results_dir"]))


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
                if prev is not None and is_finished(row) and is_finished(prev):
                    by_key[row["cell_key"]] = _one_of_two(prev, row)
                elif prev is None or is_finished(row) or not is_finished(prev):
                    by_key[row["cell_key"]] = row
    df = pd.DataFrame([by_key[k] for k in sorted(by_key)])
    # one label for "how were these samples made": the distillation method, else the sampler
    dm = df["distill_method"] if "distill_method" in df else pd.Series([None] * len(df))
    sampler = df["sampler"] if "sampler" in df else pd.Series([None] * len(df))
    df["method"] = [s if norm(d) in (None, "none") else d for d, s in zip(dm, sampler)]
    return _with_key_settings(df).reset_index(drop=True), sources


def _with_key_settings(df: pd.DataFrame) -> pd.DataFrame:
    """Each entry of the rows' ``key_settings`` (every setting in the cell key, by dotted config key) as a column of
    that name, so a setting can be a factor or a --where filter; missing in rows without it."""
    if "key_settings" not in df:
        return df
    entries = [v if isinstance(v, dict) else {} for v in df["key_settings"]]
    cols = sorted({k for e in entries for k in e} - set(df.columns))
    extra = pd.DataFrame({k: [e.get(k) for e in entries] for k in cols}, index=df.index, dtype=object)
    return pd.concat([df, extra], axis=1)


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

