"""Small shared helpers: stable hashing and atomic writes (no torch: bench-report imports this too)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


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
    under the process umask, before it is renamed into place: a teammate may read a shared results file or cache."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


FULL_HASH_MAX_BYTES = 256 << 20  # up to this much in all, a path is fingerprinted by content (else size + mtime)


def path_fingerprint(path: str | os.PathLike) -> str:
    """What keys hold for a file or directory given by path (pretrained weights, imported statistics), so that
    other contents at the same path make other keys. Up to FULL_HASH_MAX_BYTES in all: sha256 of every file's
    relative name and bytes ("c…"); larger: relative names, sizes and mtimes ("s…"; a rewrite that keeps both is
    not seen). A missing path: "missing" (its loader reports it)."""
    p = Path(path)
    if not p.exists():
        return "missing"
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    stats = [(f, f.stat()) for f in files]
    full = sum(st.st_size for _, st in stats) <= FULL_HASH_MAX_BYTES
    h = hashlib.sha256()
    for f, st in stats:
        rel = f.name if f == p else f.relative_to(p).as_posix()
        h.update(f"{rel}\0{st.st_size}\0".encode())
        if full:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:
            h.update(f"{st.st_mtime_ns}\0".encode())
    return ("c" if full else "s") + h.hexdigest()[:15]


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
