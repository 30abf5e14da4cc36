"""Small shared helpers: stable hashing, atomic writes, a writable-folder check (no torch: bench-report imports this
too)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from bench.schema import ConfigError


def to_plain(obj: Any) -> Any:
    """DictConfig/ListConfig -> plain Python containers (resolved)."""
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def config_hash(obj: Any, n: int = 16) -> str:
    """Stable short hash of a (sub-)config: sorted-key JSON of the resolved values."""
    blob = json.dumps(to_plain(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_sha256(path: str | os.PathLike, n: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n] if n else h.hexdigest()


def umask_mode(path: str | os.PathLike) -> None:
    """Give a temp file (0600) or directory (0700) from ``tempfile`` the mode an ordinary open/mkdir would have had
    under the process umask, before it is renamed into place: another user may read a shared results file or cache."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


FULL_HASH_MAX_BYTES = 256 << 20  # up to this much in all, a path is fingerprinted by content (else size + mtime)
_FINGERPRINTS: dict = {}  # stat signature -> fingerprint: a sweep's many key computations read each file once


def files_fingerprint(entries: list[tuple[str, Path]], max_bytes: int = FULL_HASH_MAX_BYTES) -> str:
    """sha256 of ``(name, file)`` entries, so that other contents make another fingerprint. Up to ``max_bytes`` in
    all: every name, size and the bytes ("c…"); larger: names, sizes and mtimes ("s…"; a rewrite keeping both is
    not seen). Memoised in-process by the files' (name, size, mtime, inode), so unchanged files are not re-read."""
    stats = [(name, Path(f), os.stat(f)) for name, f in entries]
    sig = tuple((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, _, st in stats) + (max_bytes,)
    if sig in _FINGERPRINTS:
        return _FINGERPRINTS[sig]
    full = sum(st.st_size for _, _, st in stats) <= max_bytes
    h = hashlib.sha256()
    for name, f, st in stats:
        h.update(f"{name}\0{st.st_size}\0".encode())
        if full:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(f"{st.st_mtime_ns}\0".encode())
    _FINGERPRINTS[sig] = ("c" if full else "s") + h.hexdigest()[:15]
    return _FINGERPRINTS[sig]


def path_fingerprint(path: str | os.PathLike) -> str:
    """What keys hold for a file or directory given by path (pretrained weights, imported statistics): the
    :func:`files_fingerprint` of its files by relative name. A missing path: "missing" (its loader reports it)."""
    p = Path(path)
    if not p.exists():
        return "missing"
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return files_fingerprint([(f.name if f == p else f.relative_to(p).as_posix(), f) for f in files])


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename directory ``src`` to ``dst`` (same file system: atomic). An existing ``dst`` (an earlier run of the same
    cell, e.g. a failed one being retried) is renamed aside first and removed after, so ``dst`` is at every moment
    either the old complete directory or the new one."""
    src, dst = Path(src), Path(dst)
    old = dst.with_name(f"{dst.name}.old-{os.getpid()}") if dst.exists() else None
    if old is not None:
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def check_output_dir(path: str | os.PathLike, key: str = "out_dir") -> None:
    """The nearest existing ancestor of `path` must be a writable directory."""
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(key, str(path), "a writable directory", f"{p} is not writable")
