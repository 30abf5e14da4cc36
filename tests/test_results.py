import json
import multiprocessing as mp

import pytest

from bench.results import SCHEMA_VERSION, ResultsError, append_row, done_keys, read_rows


def test_append_is_idempotent_per_key(tmp_path):
    p = tmp_path / "results.jsonl"
    assert append_row(p, {"cell_key": "a", "status": "ok", "fid": 1.5})
    assert not append_row(p, {"cell_key": "a", "status": "ok", "fid": 9.9})  # resume: no duplicate row
    assert append_row(p, {"cell_key": "b", "status": "failed", "error": "nan"})
    assert append_row(p, {"cell_key": "b", "status": "ok", "fid": 2.0})  # a retried failed cell replaces its row
    rows = read_rows(p)
    assert [(r["cell_key"], r["status"]) for r in rows] == [("a", "ok"), ("b", "ok")]
    assert rows[0]["fid"] == 1.5 and rows[0]["schema_version"] == SCHEMA_VERSION
    assert done_keys(tmp_path) == {"a", "b"}


def test_newer_schema_and_foreign_files_are_errors(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text(json.dumps({"cell_key": "a", "schema_version": SCHEMA_VERSION + 1}) + "\n")
    with pytest.raises(ResultsError, match="newer than this bench reads"):
        read_rows(p)
    p.write_text("hello\n")
    with pytest.raises(ResultsError, match="not JSON Lines"):
        read_rows(p)
    p.write_text('{"x": 1}\n')
    with pytest.raises(ResultsError, match=r"not a bench results row \(missing schema_version, cell_key, status\)"):
        read_rows(p)


def _writer(path, prefix, n):
    for i in range(n):
        append_row(path, {"cell_key": f"{prefix}{i}", "status": "ok", "payload": "x" * 200})


def test_two_writers_keep_every_row(tmp_path):
    p = tmp_path / "results.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(p, pre, 25)) for pre in ("a", "b")]
    for q in procs:
        q.start()
    for q in procs:
        q.join(60)
        assert q.exitcode == 0
    rows = read_rows(p)
    assert len(rows) == 50 and len({r["cell_key"] for r in rows}) == 50


def test_written_files_follow_the_umask_not_tempfiles_0600(tmp_path):
    """Atomic writes go through tempfile (0600 / 0700); what lands must have the mode of a plain open/mkdir under the
    process umask, so another user can read a shared results file, cache or report."""
    import os
    import stat

    from bench.results import append_row
    from bench.utils import atomic_write_text, umask_mode

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        append_row(tmp_path / "runs" / "results.jsonl", {"cell_key": "k", "status": "ok"})
        d = tmp_path / "d"
        d.mkdir(mode=0o700)
        umask_mode(d)
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == 0o644 and mode(tmp_path / "runs" / "results.jsonl") == 0o644
    assert mode(d) == 0o755 and mode(tmp_path / "private.json") == 0o600
