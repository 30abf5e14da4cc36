"""`python -m bench.run ...` as a real child process, without paying the CLI's imports (~6-10 CPU-s) at every call.

One forkserver per test worker imports the CLI's modules once; each call forks a child from it, which takes the
call's argv, environment and working directory, writes its stdout/stderr to files, runs ``bench.run.main`` (what the
``bench`` console script runs) and exits with the CLI's own status. The child is a separate process:
``sys.exit(2)``, an uncaught exception, a crash or a kill end it alone, as they would a fresh interpreter.

What a fresh interpreter does that this does not: import the modules under the call's own environment. Tests whose
subject is start-up itself (tests/test_env.py, the packaging and ``--help`` tests, the two-process kill test) keep
starting real interpreters. :func:`run_script` runs a test's own script (the kill -9 drivers) the same way.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ["bench.run", "bench.cell", "bench.training", "bench.tracking", "cli_runner"]
_CTX = None


def _context():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(PRELOAD)
    return _CTX


def _child(argv: list[str], env: dict, cwd: str, out: str, err: str,
           script: str | None = None) -> None:  # runs in the forked child
    import atexit
    import traceback

    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    threads = env.get("OMP_NUM_THREADS")
    if threads:  # a fresh interpreter reads it at start-up; the server read its own
        import torch

        torch.set_num_threads(int(threads))
    if script is None:
        from bench.run import main

        sys.argv = [str(Path(sys.executable).with_name("bench")), *argv]
    else:
        import runpy

        sys.argv = [script, *argv]

        def main():  # what `python script argv...` runs
            runpy.run_path(script, run_name="__main__")
    code = 0
    try:
        main()  # what the `bench` console script (or the script) runs
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()  # what interpreter exit runs (logging, W&B, ...)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(argv: list[str], *, env: dict | None = None, cwd: str | os.PathLike | None = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Like ``subprocess.run([sys.executable, "-m", "bench.run", *argv], env=env, cwd=cwd, capture_output=True,
    text=True, timeout=timeout)``."""
    return _run(None, argv, env, cwd, timeout)


def run_script(script: str | os.PathLike, argv: list[str], *, env: dict | None = None,
               cwd: str | os.PathLike | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Like ``subprocess.run([sys.executable, script, *argv], ...)`` (capture_output, text): the script runs as
    ``__main__`` in a child of the forkserver, with the CLI's modules already imported."""
    return _run(str(script), argv, env, cwd, timeout)


def _run(script, argv, env, cwd, timeout) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *([script] if script else ["-m", "bench.run"]), *argv]
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        out, err = str(Path(tmp) / "stdout"), str(Path(tmp) / "stderr")
        p = _context().Process(target=_child, args=(list(argv), env, str(cwd or os.getcwd()), out, err, script))
        p.start()
        p.join(timeout)
        if p.exitcode is None:
            p.kill()
            p.join()
            raise subprocess.TimeoutExpired(cmd, timeout)
        code = p.exitcode  # -N: killed by signal N, as subprocess reports it
        stdout = Path(out).read_text(errors="replace")
        stderr = Path(err).read_text(errors="replace")
    return subprocess.CompletedProcess(cmd, code, stdout, stderr)


def in_process(capsys, monkeypatch, *argv: str) -> tuple[int, list[str]]:
    """``bench.run.main()`` in this process with ``argv``: (exit status, stderr lines). For tests that check what
    the entry point does before any work (errors), where a child process would only add its start-up."""
    import logging

    from bench.run import main

    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    capsys.readouterr()
    code = 0
    logging.root.handlers.clear()  # in-process Hydra runs leave handlers on streams pytest has closed since
    try:
        main()
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    finally:
        logging.root.handlers.clear()
    return code, capsys.readouterr().err.strip().splitlines()


def assert_one_line_error(code: int, err: list[str], out: Path, *fragments: str) -> str:
    """Bad input's contract: exit 2, one ``bench: error:`` line (the last, no traceback) holding ``fragments``, and
    nothing half-written under ``out`` (no results, no cell directories)."""
    assert code == 2, err
    errors = [line for line in err if line.startswith("bench: error:")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err), err
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    out = Path(out)
    assert not list(out.rglob("results.jsonl")) and not list(out.rglob("metrics.json")) and not list(out.rglob("cells"))
    return errors[0]
