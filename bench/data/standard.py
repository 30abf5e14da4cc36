"""MNIST, Fashion-MNIST and CIFAR-10 from torchvision's on-disk layouts, with their published train/test splits.

``data.root`` is the directory torchvision's ``root`` argument names: ``<root>/MNIST/raw/``,
``<root>/FashionMNIST/raw/`` (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each either plain or ``.gz``) and
``<root>/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``: Python-2 pickles of ``{"data": uint8 (N, 3072),
"labels": [...]}``). The files may also lie directly in ``data.root`` (as the four MNIST ``.gz`` files are
published). Nothing is downloaded unless ``data.download`` is true (torchvision's own downloader, which checks its
md5 sums). Every file is parsed before any work: a missing, truncated or malformed one is one ConfigError naming it.

The pickles are read by an unpickler that builds nothing but NumPy arrays, lists, dicts and strings: a pickle is
code, and a file that asks for anything else is refused rather than run.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.schema import ConfigError

try:  # NumPy 2 (numpy.core is a deprecated alias there); CIFAR's pickles name numpy.core.multiarray
    from numpy._core.multiarray import _reconstruct
except ImportError:  # NumPy 1
    from numpy.core.multiarray import _reconstruct

from .digits import resize_images
from .memory import InMemoryDataset

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as PIL's convert("L") and the evaluators' RGB -> grey


@dataclass(frozen=True)
class StandardSet:
    """One published data set: where torchvision keeps it, its files per split and its native image shape."""

    folder: str  # under data.root: torchvision's layout
    files: dict  # split -> its files (images, labels for idx; the batches for CIFAR)
    channels: int
    size: int
    classes: tuple[str, ...]
    torchvision: str  # torchvision.datasets class that downloads it
    fmt: str  # "idx" | "cifar"


def _idx_files(prefix: str) -> tuple[str, str]:
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


IDX_FILES = {"train": _idx_files("train"), "test": _idx_files("t10k")}
SETS = {
    "mnist": StandardSet("MNIST/raw", IDX_FILES, 1, 28, tuple(str(k) for k in range(10)), "MNIST", "idx"),
    "fashion_mnist": StandardSet(
        "FashionMNIST/raw", IDX_FILES, 1, 28,
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "FashionMNIST", "idx"),
    "cifar10": StandardSet(
        "cifar-10-batches-py", {"train": tuple(f"data_batch_{k}" for k in range(1, 6)), "test": ("test_batch",)}, 3,
        32, ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"), "CIFAR10",
        "cifar"),
}
SPLITS = ("train", "test")


class _Refused(Exception):
    """A file that is not what its name says; the caller names the file and the data set."""


# ------------------------------------------------------------------------------------------------------ locate

def _how_to_get(name: str, root) -> str:
    s = SETS[name]
    return (f"put torchvision's {s.folder}/ under data.root, or set data.download=true to fetch it with "
            f"torchvision.datasets.{s.torchvision}(root={str(root)!r}, download=True)")


def _find(root: Path, s: StandardSet, name: str) -> Path | None:
    """``name`` (or ``name.gz`` for idx files) in torchvision's folder under ``root``, else directly in ``root``."""
    for d in (root / s.folder, root):
        for cand in (name, name + ".gz") if s.fmt == "idx" else (name,):
            if (d / cand).is_file():
                return d / cand
    return None


def locate(name: str, data_cfg) -> dict[str, list[Path]]:
    """{split: files} of data set ``name`` under ``data.root``; downloads first when ``data.download`` is true and a
    file is missing. Raises a one-line ConfigError naming the first missing file."""
    s, root = SETS[name], data_cfg.root
    if not root:
        raise ConfigError("data.root", root, f"the directory holding torchvision's {s.folder}/ (data.root=DIR)",
                          "not set")
    root = Path(str(root)).expanduser()
    if root.exists() and not root.is_dir():
        raise ConfigError("data.root", str(root), f"a directory holding torchvision's {s.folder}/", "it is a file")

    def find_all():
        return {split: [_find(root, s, f) for f in s.files[split]] for split in SPLITS}

    found = find_all()
    missing = [f for split in SPLITS for f, p in zip(s.files[split], found[split], strict=True) if p is None]
    if missing and data_cfg.get("download"):
        _download(name, root)
        found = find_all()
        missing = [f for split in SPLITS for f, p in zip(s.files[split], found[split], strict=True) if p is None]
    if missing:
        what = missing[0] + ("[.gz]" if s.fmt == "idx" else "")
        raise ConfigError("data.root", str(root), f"a directory holding torchvision's {s.folder}/",
                          f"{s.folder}/{what} not found under it nor in it; {_how_to_get(name, root)}")
    return found


def _download(name: str, root: Path) -> None:
    """torchvision's own downloader (mirrors, md5 checks, extraction); its failure is one line."""
    import torchvision.datasets as tvd  # lazy: torchvision (and its image stack) only when asked to download

    s = SETS[name]
    try:
        for train in (True, False):
            getattr(tvd, s.torchvision)(str(root), train=train, download=True)
    except Exception as e:  # network, md5 and archive errors all mean "not downloaded"
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError("data.download", True, f"a reachable {s.torchvision} mirror, or the files under data.root",
                          f"torchvision could not download {s.torchvision} into {root}: {why}") from None


# -------------------------------------------------------------------------------------------------------- read

def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:
        raise _Refused(f"not a whole gzip file ({type(e).__name__}: {e})") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (LeCun's format: magic 0x0000 0x08 ``ndim``, ``ndim`` big-endian uint32
    sizes, then the bytes), checked to hold exactly what its header says."""
    data = _read_bytes(path)
    head = 4 + 4 * ndim
    if len(data) < head:
        raise _Refused(f"{len(data)} bytes is shorter than an idx header ({head} bytes)")
    magic = data[:4]
    if magic != bytes((0, 0, 8, ndim)):
        raise _Refused(f"magic {magic.hex()} is not {bytes((0, 0, 8, ndim)).hex()} (unsigned bytes, {ndim} dims)")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    want = int(np.prod(dims))
    if len(data) - head != want:
        state = "truncated" if len(data) - head < want else "longer than its header says"
        raise _Refused(f"{state}: {len(data) - head} data bytes, the header {dims} needs {want}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's batches are Python-2 pickles of a dict with a NumPy array: allow exactly what that needs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"the pickle asks for {module}.{name}; a CIFAR batch holds only a dict and arrays")
        if name == "_reconstruct":
            return _reconstruct
        return getattr(np, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch -> (uint8 NHWC images, int64 labels), as torchvision reads it (latin1 strings)."""
    try:
        d = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except _Refused:
        raise
    except Exception as e:  # a truncated or foreign pickle fails in many ways
        raise _Refused(f"not a whole CIFAR batch pickle ({type(e).__name__}: {e})".splitlines()[0]) from None
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        keys = sorted(map(str, d)) if isinstance(d, dict) else type(d).__name__
        raise _Refused(f"holds {keys}, not a dict with 'data' and 'labels'")
    x, y = d["data"], np.asarray(d["labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        what = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise _Refused(f"'data' is {what}, not uint8 (N, 3072)")
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise _Refused(f"'labels' has shape {y.shape} ({y.dtype}), not {len(x)} integers")
    return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y.astype(np.int64)


def _read_split(s: StandardSet, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    if s.fmt == "idx":
        x, y = read_idx(files[0], 3), read_idx(files[1], 1).astype(np.int64)
        if x.shape[1:] != (s.size, s.size):
            raise _Refused(f"images are {x.shape[1]}x{x.shape[2]}, not {s.size}x{s.size}", files[0])
        if len(x) != len(y):
            raise _Refused(f"{len(y)} labels for the {len(x)} images of {files[0].name}", files[1])
        x = x[..., None]
    else:
        parts = [read_cifar_batch(f) for f in files]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if len(y) and (y.min() < 0 or y.max() >= len(s.classes)):
        raise _Refused(f"labels {int(y.min())}..{int(y.max())} are outside 0..{len(s.classes) - 1}", files[-1])
    return x, y


def read_split(name: str, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, int64 labels) of one split, in the files' order; a bad file is a one-line ConfigError."""
    try:
        return _read_split(SETS[name], files)
    except _Refused as e:
        bad = e.args[1] if len(e.args) > 1 else _failing(name, files)
        folder = SETS[name].folder
        root = bad.parents[len(Path(folder).parts)] if bad.parent.as_posix().endswith(folder) else bad.parent
        raise ConfigError("data.root", str(root), f"torchvision's {folder}/ files",
                          f"{bad}: {e.args[0]}; {_how_to_get(name, root)}") from None


def _failing(name: str, files: list[Path]) -> Path:
    """The file a refusal came from (each is read in turn: the first that fails on its own)."""
    s = SETS[name]
    for f in files:
        try:
            read_idx(f, 3 if "images" in f.name else 1) if s.fmt == "idx" else read_cifar_batch(f)
        except _Refused:
            return f
    return files[-1]


_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(name: str, found: dict[str, list[Path]]) -> str:
    """sha256 of both splits' decoded images and labels (so a gzipped or plain copy, in either layout, is the same
    data), "c" + 15 hex digits as folder fingerprints. Parsing is the format check; memoised in-process by the
    files' (path, size, mtime, inode), so unchanged files are read once."""
    paths = [p for split in SPLITS for p in found[split]]
    sig = (name, *((str(p), st.st_size, st.st_mtime_ns, st.st_ino) for p in paths for st in (os.stat(p),)))
    if sig not in _FINGERPRINTS:
        h = hashlib.sha256(name.encode())
        for split in SPLITS:
            x, y = read_split(name, found[split])
            h.update(f"\0{split}\0{x.shape}\0".encode())
            h.update(np.ascontiguousarray(x).data)
            h.update(y.astype("<i8").tobytes())
        _FINGERPRINTS[sig] = "c" + h.hexdigest()[:15]
    return _FINGERPRINTS[sig]


# ---------------------------------------------------------------------------------------------------- the items

def to_model_space(x_u8: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1] at ``size`` (bilinear, antialiased, as digits) with ``channels`` (grey
    repeated to RGB; RGB to grey by ITU-R 601 luma)."""
    x = torch.from_numpy(x_u8.transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1.0  # a writable copy
    if x.shape[1] == 3 and channels == 1:
        x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    elif x.shape[1] == 1 and channels == 3:
        x = x.repeat(1, 3, 1, 1)
    return resize_images(x, size).contiguous()


class StandardDataset(InMemoryDataset):
    """The published ``split`` of ``data.name``; ``data.num_train`` caps the train split to its first images."""

    def __init__(self, data_cfg, split: str):
        name = data_cfg.name
        x, y = read_split(name, locate(name, data_cfg)[split])
        if split == "train" and int(data_cfg.num_train):
            x, y = x[:int(data_cfg.num_train)], y[:int(data_cfg.num_train)]
        self.x = to_model_space(x, int(data_cfg.image_size), int(data_cfg.channels))
        self.y = torch.from_numpy(y)
