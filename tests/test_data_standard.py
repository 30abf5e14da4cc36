"""mnist / fashion_mnist / cifar10 from torchvision's on-disk layouts: the readers against the official MNIST test
files and torchvision's own readers, files written here in the published formats, the content in the keys, the
one-line refusals, the offline evaluator and one smoke cell."""
import gzip
import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import build_dataset, get_data_info
from bench.data.standard import read_split
from bench.schema import ConfigError
from cli_runner import assert_one_line_error, in_process

pytestmark = pytest.mark.usefixtures("one_thread")

OFFICIAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"  # beside the checkout, if present
if not OFFICIAL.is_dir():
    OFFICIAL = Path("/work/shared/data/mnist")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# ------------------------------------------------------------------------------- files in the published formats

def write_idx(path: Path, a: np.ndarray, gz: bool = False) -> None:
    """LeCun's idx format: magic 0x00000800 + ndim, big-endian uint32 sizes, unsigned bytes."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    data = bytes((0, 0, 8, a.ndim)) + b"".join(int(d).to_bytes(4, "big") for d in a.shape) + a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)


class _Py2Pickler(pickle._Pickler):
    """Pickles as CIFAR-10's Python-2 cPickle files are: protocol 2, byte strings as (SHORT_)BINSTRING (Python 2's
    str), NumPy arrays through numpy.core.multiarray._reconstruct."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
                   + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        module, name = obj.__module__, name or obj.__qualname__
        if module.startswith("numpy._core"):
            module = module.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)

    dispatch[type] = save_global


def write_cifar_batch(path: Path, x_nhwc: np.ndarray, y: np.ndarray) -> None:
    data = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2).reshape(len(x_nhwc), -1), dtype=np.uint8)
    d = {b"batch_label": b"training batch", b"labels": [int(k) for k in y], b"data": data,
         b"filenames": [b"img_%d.png" % i for i in range(len(y))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(d)


def blocks(n: int, size: int = 28, channels: int = 1, seed: int = 0):
    """Images of 10 classes that a small CNN learns in a few steps: class k is a bright square in cell k of a 4x3
    grid, jittered, on noise."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = g.integers(0, 60, (n, size, size, channels))
    c = size // 4
    for i, k in enumerate(y):
        r, q = divmod(int(k), 4)
        dy, dx = g.integers(0, c // 2, 2)
        x[i, r * c + dy:r * c + dy + c // 2 + 2, q * c + dx:q * c + dx + c // 2 + 2] = 220 + g.integers(0, 30, channels)
    return x.astype(np.uint8), y.astype(np.uint8)


def write_mnist(root: Path, train, test, folder="MNIST/raw", gz=False) -> Path:
    ext = ".gz" if gz else ""
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        write_idx(root / folder / f"{prefix}-images-idx3-ubyte{ext}", x[..., 0] if x.ndim == 4 else x, gz)
        write_idx(root / folder / f"{prefix}-labels-idx1-ubyte{ext}", y, gz)
    return root


def data_cfg(compose_cfg, name: str, root, *more):
    return compose_cfg(f"data={name}", f"data.root={root}", *more)


@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    """The official MNIST test files, plus 20 train images written here (the train files are not on this network)."""
    root = tmp_path_factory.mktemp("official")
    (root / "MNIST/raw").mkdir(parents=True)
    for f in TEST_FILES:
        shutil.copy(OFFICIAL / f, root / "MNIST/raw" / f)
    x, y = blocks(20)
    write_idx(root / "MNIST/raw/train-images-idx3-ubyte", x[..., 0])
    write_idx(root / "MNIST/raw/train-labels-idx1-ubyte", y)
    return root


@pytest.fixture(scope="module")
def blocks_root(tmp_path_factory):
    """An MNIST-format set a small CNN learns in a few steps: 640 train, 200 test images."""
    x, y = blocks(840)
    return write_mnist(tmp_path_factory.mktemp("blocks"), (x[:640], y[:640]), (x[640:], y[640:]), gz=True)


# ------------------------------------------------------------------------------------------------------ readers

def test_mnist_reader_on_the_official_test_files(official_root, compose_cfg, tmp_path):
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file
    from torchvision.datasets.utils import check_integrity

    for f, md5 in MNIST.resources[2:]:  # the md5 sums torchvision checks
        assert check_integrity(str(OFFICIAL / f), md5), f
    x, y = read_split("mnist", [OFFICIAL / f for f in TEST_FILES])
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    for f in TEST_FILES:  # torchvision's own reader reads the uncompressed files
        (tmp_path / f[:-3]).write_bytes(gzip.decompress((OFFICIAL / f).read_bytes()))
    assert np.array_equal(x[..., 0], read_image_file(str(tmp_path / TEST_FILES[0][:-3])).numpy())
    assert np.array_equal(y, read_label_file(str(tmp_path / TEST_FILES[1][:-3])).numpy())
    # through the data set: the published test split, in [-1, 1], 28x28 grey, by default class-conditional
    cfg = data_cfg(compose_cfg, "mnist", official_root)
    info = get_data_info(cfg.data)
    assert (info.shape, info.num_classes) == ((1, 28, 28), 10) and info.id.startswith("mnist-c")
    test = build_dataset(cfg.data, "test")
    assert len(test) == 10000 and len(build_dataset(cfg.data, "train")) == 20
    assert torch.equal(test.x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1.0)
    assert torch.equal(test.y, torch.from_numpy(y))


@pytest.mark.parametrize("name,tv", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_sets_read_as_torchvision_reads_them(name, tv, compose_cfg, tmp_path):
    import torchvision.datasets as tvd

    x, y = blocks(50, seed=1)
    plain = write_mnist(tmp_path / "plain", (x[:30], y[:30]), (x[30:], y[30:]), folder=f"{tv}/raw")
    for train, sl in ((True, slice(0, 30)), (False, slice(30, 50))):
        ref = getattr(tvd, tv)(str(plain), train=train)  # torchvision's reader on the same files
        ds = build_dataset(data_cfg(compose_cfg, name, plain).data, "train" if train else "test")
        assert torch.equal(ds.y, ref.targets) and torch.equal(ds.x[:, 0], ref.data.float() / 127.5 - 1.0)
        assert np.array_equal(ref.data.numpy(), x[sl, ..., 0])
    # gzipped files, or the files directly in data.root: the same data, the same id
    gz = write_mnist(tmp_path / "gz", (x[:30], y[:30]), (x[30:], y[30:]), folder=f"{tv}/raw", gz=True)
    flat = write_mnist(tmp_path / "flat", (x[:30], y[:30]), (x[30:], y[30:]), folder=".")
    ids = {get_data_info(data_cfg(compose_cfg, name, r).data).id for r in (plain, gz, flat)}
    assert len(ids) == 1
    # other sizes and channels; a cap on the train split takes its first images
    cfg = data_cfg(compose_cfg, name, gz, "data.image_size=32", "data.channels=3", "data.num_train=7")
    ds = build_dataset(cfg.data, "train")
    assert ds.x.shape == (7, 3, 32, 32) and torch.equal(ds.x[:, 0], ds.x[:, 2]) and ds.x.min() >= -1
    assert get_data_info(cfg.data).id.endswith("-32px-c3-n7") and torch.equal(ds.y, torch.from_numpy(y[:7]).long())


def test_cifar10_batches_read_as_torchvision_reads_them(compose_cfg, tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tvc

    x, y = blocks(60, size=32, channels=3, seed=2)
    folder = tmp_path / "cifar-10-batches-py"
    for k in range(5):
        write_cifar_batch(folder / f"data_batch_{k + 1}", x[10 * k:10 * k + 10], y[10 * k:10 * k + 10])
    write_cifar_batch(folder / "test_batch", x[50:], y[50:])
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:  # torchvision reads the class names from it; bench knows them
        _Py2Pickler(f, protocol=2).dump({b"label_names": names, b"num_cases_per_batch": 10, b"num_vis": 3072})
    assert (folder / "test_batch").read_bytes()[:3] == b"\x80\x02}"  # protocol 2, a dict, as the published files
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in (folder / "test_batch").read_bytes()
    monkeypatch.setattr(tvc, "check_integrity", lambda *a, **k: True)  # torchvision checks the published md5s
    cfg = data_cfg(compose_cfg, "cifar10", tmp_path)
    assert cfg.data.hflip and get_data_info(cfg.data).shape == (3, 32, 32)
    for split in ("train", "test"):
        ref = tvc.CIFAR10(str(tmp_path), train=split == "train")
        ds = build_dataset(cfg.data, split)
        assert np.array_equal(ref.data, x[:50] if split == "train" else x[50:])
        assert torch.equal(ds.x, torch.from_numpy(ref.data.transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1.0)
        assert ds.y.tolist() == ref.targets
    grey = build_dataset(data_cfg(compose_cfg, "cifar10", tmp_path, "data.channels=1").data, "test")
    want = (torch.from_numpy(x[50:]).float() / 127.5 - 1) @ torch.tensor([0.299, 0.587, 0.114])
    torch.testing.assert_close(grey.x[:, 0], want)


# ----------------------------------------------------------------------------------------- keys and refusals

def test_contents_are_in_the_keys_and_the_published_split_normalises_its_settings(compose_cfg, tmp_path):
    from bench import keys

    x, y = blocks(40, seed=3)
    root = write_mnist(tmp_path, (x[:30], y[:30]), (x[30:], y[30:]))
    cfg = data_cfg(compose_cfg, "mnist", root)
    key = keys.model_key(cfg)
    assert keys.model_key(data_cfg(compose_cfg, "mnist", root, "data.test_fraction=0.5", "data.split_seed=3")) == key
    assert keys.no_effect(data_cfg(compose_cfg, "mnist", root, "data.test_fraction=0.5")) == {
        "data.test_fraction": "data=mnist has its published train/test split"}
    assert keys.model_key(data_cfg(compose_cfg, "mnist", root, "data.download=true")) == key  # where files come from
    x[0, 0, 0] ^= 1  # one pixel of one train image
    write_mnist(root, (x[:30], y[:30]), (x[30:], y[30:]))
    assert keys.model_key(cfg) != key
    assert keys.model_key(compose_cfg()) == keys.model_key(compose_cfg("data.root=null", "data.download=false"))


def _bad(compose_cfg, root, *more) -> str:
    with pytest.raises(ConfigError) as e:
        get_data_info(data_cfg(compose_cfg, "mnist", root, *more).data)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_truncated_and_malformed_files_are_one_line(compose_cfg, tmp_path, monkeypatch):
    test_only = tmp_path / "test_only"
    test_only.mkdir()
    for f in TEST_FILES:
        shutil.copy(OFFICIAL / f, test_only / f)
    msg = _bad(compose_cfg, test_only)
    assert "train-images-idx3-ubyte[.gz] not found" in msg and "data.download=true" in msg
    assert "torchvision.datasets.MNIST(root=" in msg
    assert "data.root=None is not allowed" in _bad(compose_cfg, "null")

    x, y = blocks(40)
    root = write_mnist(tmp_path / "r", (x[:30], y[:30]), (x[30:], y[30:]), gz=True)
    gzf = root / "MNIST/raw/train-images-idx3-ubyte.gz"
    whole = gzf.read_bytes()
    gzf.write_bytes(whole[:len(whole) // 2])
    assert f"{gzf}: not a whole gzip file" in _bad(compose_cfg, root)
    raw = gzip.decompress(whole)
    plain = gzf.with_suffix("")
    gzf.unlink()
    plain.write_bytes(raw[:-5])
    assert f"{plain}: truncated: 23515 data bytes, the header [30, 28, 28] needs 23520" in _bad(compose_cfg, root)
    plain.write_bytes(b"\x00\x00\x08\x01" + raw[4:])
    assert "magic 00000801 is not 00000803" in _bad(compose_cfg, root)
    plain.write_bytes(raw)
    write_idx(root / "MNIST/raw/train-labels-idx1-ubyte.gz", y[:29], gz=True)
    assert "29 labels for the 30 images" in _bad(compose_cfg, root)
    write_idx(root / "MNIST/raw/train-labels-idx1-ubyte.gz", np.full(30, 10), gz=True)
    assert "labels 10..10 are outside 0..9" in _bad(compose_cfg, root)

    # a pickle that asks for anything but arrays is refused, not run
    folder = tmp_path / "c" / "cifar-10-batches-py"
    for f in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / f, *blocks(2, 32, 3))
    (folder / "data_batch_3").write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    with pytest.raises(ConfigError, match=r"data_batch_3: the pickle asks for os.system"):
        get_data_info(data_cfg(compose_cfg, "cifar10", tmp_path / "c").data)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_2").read_bytes()[:300])
    with pytest.raises(ConfigError, match=r"data_batch_3: not a whole CIFAR batch pickle"):
        get_data_info(data_cfg(compose_cfg, "cifar10", tmp_path / "c").data)


def test_download_only_when_asked_and_through_torchvision(compose_cfg, tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    x, y = blocks(40)
    calls = []

    def fake_mnist(root, train, download):  # stands in for torchvision's downloader: writes the files it would
        calls.append((root, train, download))
        write_mnist(Path(root), (x[:30], y[:30]), (x[30:], y[30:]), gz=True)

    monkeypatch.setattr(tvd, "MNIST", fake_mnist)
    assert "not found" in _bad(compose_cfg, tmp_path / "data") and not calls  # download=false: nothing fetched
    info = get_data_info(data_cfg(compose_cfg, "mnist", tmp_path / "data", "data.download=true").data)
    assert calls == [(str(tmp_path / "data"), True, True), (str(tmp_path / "data"), False, True)]
    assert info.id.startswith("mnist-c")

    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://...")

    monkeypatch.setattr(tvd, "MNIST", offline)
    msg = _bad(compose_cfg, tmp_path / "elsewhere", "data.download=true")
    assert msg.startswith("data.download=True is not allowed") and "Error downloading train-images" in msg


# ------------------------------------------------------------------------------------- evaluator and a cell

def test_test_only_root_is_one_line_error_before_any_work(tmp_path, capsys, monkeypatch):
    code, err = in_process(capsys, monkeypatch, "experiment=smoke", "tracker=none", "data=mnist",
                           f"data.root={OFFICIAL}", f"out_dir={tmp_path / 'runs'}")
    line = assert_one_line_error(code, err, tmp_path / "runs", "MNIST/raw/train-images-idx3-ubyte[.gz] not found")
    assert line.startswith("bench: error: data.root=") and not (tmp_path / "runs").exists()


def test_evaluator_trained_on_first_use_and_a_smoke_cell(blocks_root, tmp_path, capsys, monkeypatch, bench_cache):
    from bench.evaluators import load_feature_net
    from bench.evaluators.cli import main as evaluator_cli
    from bench.images import quantize_uint8

    args = ("experiment=smoke", "tracker=none", "data=mnist", f"data.root={blocks_root}", "train.max_steps=10",
            "sampling.num_samples=32", "sampling.batch_size=32", "sampling.num_inference_steps=2",
            "metric.kid_subset_size=16", "metric.kid_subsets=2", "model.block_out_channels=[8,16]")
    from hydra import compose, initialize_config_dir

    from bench.schema import register
    from conftest import CONF_DIR

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("bench", overrides=list(args))
    info = get_data_info(cfg.data)
    net = load_feature_net(cfg, info)
    assert net.name == "mnist_cnn" and net.resize == "none (28x28)" and net.meta["test_accuracy"] >= 0.98
    test = build_dataset(cfg.data, "test")
    _, logits = net(quantize_uint8(test.x))
    assert float((logits.argmax(1) == test.y).float().mean()) == pytest.approx(net.meta["test_accuracy"])
    meta = json.loads((Path(net.meta["path"]) / "meta.json").read_text())
    assert meta["data_id"] == info.id and meta["n_train"] == 640 and meta["n_test"] == 200
    with pytest.raises(SystemExit):
        evaluator_cli(["list", "--cache-dir", str(bench_cache)])
    listed = capsys.readouterr().out
    assert f"cached {Path(net.meta['path']).name}: sha256 {net.weights_hash}" in listed
    assert "cifar10_cnn: trained on first use" in listed

    code, err = in_process(capsys, monkeypatch, *args, f"out_dir={tmp_path / 'runs'}")
    assert code == 0, err
    (row,) = [json.loads(line) for line in (tmp_path / "runs/smoke/results.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and row["feature_net"] == "mnist_cnn" and row["feature_net_hash"] == net.weights_hash
    assert row["ref_id"].startswith(info.id + "-train-mnist_cnn") and np.isfinite(row["fid"]) and row["fid"] > 0
    assert 1 <= row["is"] <= 10
