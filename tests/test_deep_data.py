"""Tests of deep_nets.data: loaders on files in the real release formats, label noise, augment.

Every format test writes its files itself in the on-disk layout of the official release (idx
headers, Python-2 style CIFAR pickles, MATLAB v5 .mat files) and checks the decoded pixels and
labels against what it wrote; the real Fashion-MNIST (installed on this machine and by the
Makefile in CI) is checked against facts of the published data set.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import random
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from deep_nets import data as D
from deep_nets.data import (
    CIFAR10_ASYM_MAP,
    DATASETS,
    DataError,
    Splits,
    augment,
    corrupt_labels,
    download_file,
    load_dataset,
    read_cifar_batch,
    restricted_load,
)

REAL_FASHION = D.SYSTEM_FASHION_MNIST_DIR


# --------------------------------------------------------------------------- writers (test side)


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> None:
    """idx file: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, then the bytes."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` opcodes (SHORT_BINSTRING / BINSTRING), as cPickle did for
    the CIFAR release, instead of Python 3's _codecs.encode reduction."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # The release was written by numpy 1.x, whose array reconstructor lives in numpy.core.
    return buf.getvalue().replace(
        b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    )


def cifar_batch(x: np.ndarray, labels: list[int], label_key: bytes, name: bytes) -> dict:
    """The dict of a CIFAR python batch: data uint8 N x 3072 (R, G, B planes), labels, names."""
    return {
        b"batch_label": name,
        label_key: labels,
        b"data": x.reshape(len(x), 3072),
        b"filenames": [b"img_%05d.png" % i for i in range(len(x))],
    }


def write_cifar10(root: Path, rng: np.random.Generator, n_per_batch: int = 12, n_test: int = 10):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        name = b"training batch %d of 5" % i
        (folder / f"data_batch_{i}").write_bytes(
            py2_pickle_bytes(cifar_batch(x, y, b"labels", name))
        )
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    yt = [int(v) for v in rng.integers(0, 10, n_test)]
    (folder / "test_batch").write_bytes(
        py2_pickle_bytes(cifar_batch(xt, yt, b"labels", b"testing batch 1 of 1"))
    )
    return np.concatenate(xs), np.array(ys), xt, np.array(yt)


def unnormalize(x: torch.Tensor, splits: Splits) -> np.ndarray:
    """Back to raw uint8 pixel values with the normalization recorded in splits.info."""
    norm = splits.info["normalization"]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = torch.tensor(norm["mean"], dtype=torch.float64).view(shape)
    std = torch.tensor(norm["std"], dtype=torch.float64).view(shape)
    return ((x.double() * std + mean) * norm["scale"]).numpy()


# --------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fashion() -> Splits:
    assert (REAL_FASHION / "train-images-idx3-ubyte.gz").is_file(), (
        "the real Fashion-MNIST must be installed (Debian package dataset-fashion-mnist)"
    )
    return load_dataset("fashion_mnist", None, seed=0, download=False)


def test_real_fashion_mnist_sizes_labels_and_normalization(fashion: Splits) -> None:
    s = fashion
    assert DATASETS == ("fashion_mnist", "mnist1d", "cifar10", "cifar100", "svhn")
    assert s.train_x.shape == (54000, 1, 28, 28) and s.train_x.dtype == torch.float32
    assert s.val_x.shape == (6000, 1, 28, 28) and s.test_x.shape == (10000, 1, 28, 28)
    assert s.train_y.dtype == torch.int64 and s.num_classes == 10
    assert s.input_shape == (1, 28, 28) and s.name == "fashion_mnist"
    # Published facts: 6000 training and 1000 test images per class; the first test labels are
    # ankle boot, pullover, trouser, trouser, shirt.
    counts = torch.bincount(torch.cat([s.train_y, s.val_y]), minlength=10)
    assert counts.tolist() == [6000] * 10
    assert torch.bincount(s.test_y).tolist() == [1000] * 10
    assert s.test_y[:5].tolist() == [9, 2, 1, 1, 6]
    # No noise requested: labels untouched, mask empty.
    assert torch.equal(s.train_y, s.train_y_clean) and not s.noisy.any()
    # Normalized with the training split's statistics: mean 0, std 1 on train; raw range [0, 255].
    std, mean = torch.std_mean(s.train_x)
    assert abs(mean.item()) < 1e-4 and abs(std.item() - 1.0) < 1e-4
    raw = unnormalize(s.test_x[:50], s)
    assert raw.min() > -1e-3 and raw.max() < 255 + 1e-3
    np.testing.assert_allclose(raw, np.round(raw), atol=2e-3)  # integer pixel values


def test_real_fashion_mnist_info_records_files_and_checksums(fashion: Splits) -> None:
    files = {Path(f["path"]).name: f for f in fashion.info["files"]}
    assert set(files) == set(D.FASHION_MNIST_FILES)
    for name, rec in files.items():
        digest = hashlib.sha256((REAL_FASHION / name).read_bytes()).hexdigest()
        assert rec["sha256"] == digest and rec["bytes"] == (REAL_FASHION / name).stat().st_size
    assert fashion.info["sizes"] == {
        "full_train": 60000,
        "train": 54000,
        "val": 6000,
        "test": 10000,
    }
    # The first stored image decodes to the same pixels as an independent gunzip + offset read.
    raw = gzip.decompress((REAL_FASHION / "t10k-images-idx3-ubyte.gz").read_bytes())
    first = np.frombuffer(raw, dtype=np.uint8, offset=16, count=784).reshape(28, 28)
    np.testing.assert_allclose(unnormalize(fashion.test_x[:1], fashion)[0, 0], first, atol=2e-3)
    assert fashion.augment_flip is True
    # The trainer stores info in config.json: it must be plain JSON.
    assert json.loads(json.dumps(fashion.info)) == fashion.info


# --------------------------------------------------------------------------- idx format


def _write_fashion_like(d: Path, rng: np.random.Generator, compress: bool, n=40, nt=15):
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10
    xt = rng.integers(0, 256, (nt, 28, 28), dtype=np.uint8)
    yt = rng.integers(0, 10, nt).astype(np.uint8)
    sfx = ".gz" if compress else ""
    write_idx(d / f"train-images-idx3-ubyte{sfx}", x, compress=compress)
    write_idx(d / f"train-labels-idx1-ubyte{sfx}", y, compress=compress)
    write_idx(d / f"t10k-images-idx3-ubyte{sfx}", xt, compress=compress)
    write_idx(d / f"t10k-labels-idx1-ubyte{sfx}", yt, compress=compress)
    return x, y, xt, yt


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_from_data_dir_round_trip(tmp_path: Path, compress: bool) -> None:
    x, y, xt, yt = _write_fashion_like(tmp_path, np.random.default_rng(1), compress)
    s = load_dataset("fashion_mnist", tmp_path, seed=3, val_frac=0.0, download=False)
    assert s.info["files"][0]["path"].startswith(str(tmp_path))
    # val_frac = 0: the training split is the whole file, in file order.
    np.testing.assert_allclose(unnormalize(s.train_x, s)[:, 0], x, atol=1e-3)
    np.testing.assert_allclose(unnormalize(s.test_x, s)[:, 0], xt, atol=1e-3)
    assert s.train_y.tolist() == y.tolist() and s.test_y.tolist() == yt.tolist()
    assert s.val_x.shape == (0, 1, 28, 28)


def test_corrupt_idx_files_raise_data_error_naming_the_file(tmp_path: Path) -> None:
    _write_fashion_like(tmp_path, np.random.default_rng(2), compress=False)
    target = tmp_path / "train-images-idx3-ubyte"
    good = target.read_bytes()
    target.write_bytes(good[:-100])  # truncated
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("fashion_mnist", tmp_path, seed=0, download=False)
    target.write_bytes(b"\x00\x00\x0d\x03" + good[4:])  # type code 0x0d = float, not ubyte
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*magic"):
        load_dataset("fashion_mnist", tmp_path, seed=0, download=False)
    target.unlink()
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(good)[:-30])  # gzip stream cut short
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion_mnist", tmp_path, seed=0, download=False)
    # Labels outside 0..9 are rejected too.
    gz.unlink()
    target.write_bytes(good)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(15, 12, np.uint8), compress=False)
    with pytest.raises(DataError, match="labels outside"):
        load_dataset("fashion_mnist", tmp_path, seed=0, download=False)


# --------------------------------------------------------------------------- downloads


def test_download_verifies_sha256_and_writes_atomically(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    payload = os.urandom(3 << 20)  # more than one 1 MiB read block
    src.write_bytes(payload)
    url = src.as_uri()
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="checksum mismatch"):
        download_file(url, dest, "0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left
    download_file(url, dest, hashlib.sha256(payload).hexdigest())
    assert dest.read_bytes() == payload and list(dest.parent.iterdir()) == [dest]
    with pytest.raises(DataError, match="could not download"):
        download_file((tmp_path / "missing.bin").as_uri(), tmp_path / "x", "0" * 64)


def test_cifar_archive_download_extract_and_load(tmp_path: Path, monkeypatch) -> None:
    # A release-shaped cifar-10-python.tar.gz served from a file:// URL, pinned by its SHA-256.
    staging = tmp_path / "staging"
    x, y, xt, yt = write_cifar10(staging, np.random.default_rng(5), n_per_batch=4, n_test=3)
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    layout = dict(D._CIFAR_LAYOUT["cifar10"], url=archive.as_uri(), sha256=digest)
    monkeypatch.setitem(D._CIFAR_LAYOUT, "cifar10", layout)
    data_dir = tmp_path / "data"
    with pytest.raises(DataError, match="--data_dir.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", data_dir, seed=0, download=False)
    s = load_dataset("cifar10", data_dir, seed=0, val_frac=0.0, download=True)
    assert "downloaded" in s.info["source"]
    assert (data_dir / "cifar-10-batches-py" / "data_batch_5").is_file()
    np.testing.assert_allclose(unnormalize(s.train_x, s), x, atol=1e-3)
    assert s.train_y.tolist() == y.tolist()
    # A corrupted archive in --data_dir is detected by its checksum.
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "cifar-10-python.tar.gz").write_bytes(archive.read_bytes()[:-10])
    with pytest.raises(DataError, match="SHA-256"):
        load_dataset("cifar10", bad_dir, seed=0, download=False)


# --------------------------------------------------------------------------- CIFAR


def test_cifar10_python_batches_round_trip(tmp_path: Path) -> None:
    x, y, xt, yt = write_cifar10(tmp_path, np.random.default_rng(0))
    # The files really are in the release's Python 2 layout: protocol 2, str opcodes, numpy.core.
    head = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert head.startswith(b"\x80\x02}") and b"U\x04data" in head
    assert b"cnumpy.core.multiarray\n_reconstruct" in head and b"_codecs" not in head
    s = load_dataset("cifar10", tmp_path, seed=0, val_frac=0.0, download=False)
    assert s.train_x.shape == (60, 3, 32, 32) and s.test_x.shape == (10, 3, 32, 32)
    assert s.num_classes == 10 and s.augment_flip and s.input_shape == (3, 32, 32)
    np.testing.assert_allclose(unnormalize(s.train_x, s), x, atol=1e-3)
    np.testing.assert_allclose(unnormalize(s.test_x, s), xt, atol=1e-3)
    assert s.train_y.tolist() == y.tolist() and s.test_y.tolist() == yt.tolist()
    # Channel statistics are per channel (R, G, B) over the training split.
    expected_mean = x.reshape(60, 3, -1).transpose(1, 0, 2).reshape(3, -1).mean(1) / 255
    np.testing.assert_allclose(s.info["normalization"]["mean"], expected_mean, rtol=1e-10)
    # The folder itself may be passed as --data_dir.
    s2 = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", seed=0, val_frac=0.0)
    assert torch.equal(s2.train_x, s.train_x)


def test_cifar100_python_files_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    out = {}
    for split, n in (("train", 30), ("test", 8)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        d = cifar_batch(x, fine, b"fine_labels", split.encode())
        d[b"coarse_labels"] = [f // 5 for f in fine]
        (folder / split).write_bytes(py2_pickle_bytes(d))
        out[split] = (x, fine)
    s = load_dataset("cifar100", tmp_path, seed=0, val_frac=0.0, download=False)
    assert s.num_classes == 100
    np.testing.assert_allclose(unnormalize(s.train_x, s), out["train"][0], atol=1e-3)
    assert s.train_y.tolist() == out["train"][1] and s.test_y.tolist() == out["test"][1]


def test_cifar_batches_written_by_python3_pickle_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    d = cifar_batch(x, [1, 2, 3, 4, 5], b"labels", b"b")
    for protocol in (2, 4, 5):  # 2 uses _codecs.encode for bytes; 4 / 5 use BINBYTES
        p = tmp_path / f"batch_p{protocol}"
        p.write_bytes(pickle.dumps(d, protocol=protocol))
        xr, yr = read_cifar_batch(p, "labels")
        np.testing.assert_array_equal(xr, x)
        assert yr.tolist() == [1, 2, 3, 4, 5]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    x, *_ = write_cifar10(tmp_path, np.random.default_rng(0), n_per_batch=2, n_test=2)
    evil = {b"data": _Exploit(marker), b"labels": [0, 1]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_3.*posix\.system|data_batch_3.*os\.system"):
        load_dataset("cifar10", tmp_path, seed=0, download=False)
    assert not marker.exists()
    # Other dangerous globals, object arrays and persistent ids are refused as well.
    cases = {
        "eval": pickle.dumps({b"data": _Reduce(eval, ("1+1",))}, protocol=2),
        "object_array": pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=2),
        "subprocess": b"\x80\x02csubprocess\ncall\n(X\x04\x00\x00\x00trueq\x00tR.",
        "persid": b"\x80\x02P1\n.",
    }
    for name, blob in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(pickle.UnpicklingError):
            restricted_load(p)
    # The encode helper only accepts a latin-1 encoding of a str.
    codec_attack = pickle.dumps(b"xyz", protocol=2).replace(b"latin1", b"utf_16")
    (tmp_path / "codec").write_bytes(codec_attack)
    with pytest.raises(pickle.UnpicklingError):
        restricted_load(tmp_path / "codec")


class _Reduce:
    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def test_malformed_cifar_batches_raise_data_error(tmp_path: Path) -> None:
    p = tmp_path / "batch"
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, 2))
    with pytest.raises(DataError, match="uint8 array N x 3072"):
        read_cifar_batch(p, "labels")
    p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, 2))
    with pytest.raises(DataError, match="2 integer labels"):
        read_cifar_batch(p, "labels")
    p.write_bytes(b"\x80\x02}q\x00(U\x04data")  # truncated pickle
    with pytest.raises(DataError, match="not a valid CIFAR python batch"):
        read_cifar_batch(p, "labels")


def test_missing_cifar_and_svhn_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"--data_dir=.*cifar-100-python\.tar\.gz"):
        load_dataset("cifar100", tmp_path, seed=0, download=False)
    with pytest.raises(DataError, match=r"--data_dir=.*train_32x32\.mat"):
        load_dataset("svhn", tmp_path, seed=0, download=False)


# --------------------------------------------------------------------------- SVHN


def test_svhn_mat_files_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    written = {}
    for split, n in (("train", 25), ("test", 9)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        digits = rng.integers(0, 10, n)
        digits[:3] = 0  # make sure the 10 -> 0 convention is exercised
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        # Release layout: X is height x width x channel x example.
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y})
        written[split] = (x, digits)
    s = load_dataset("svhn", tmp_path, seed=0, val_frac=0.0, download=False)
    assert s.num_classes == 10 and s.augment_flip is False
    np.testing.assert_allclose(unnormalize(s.train_x, s), written["train"][0], atol=1e-3)
    np.testing.assert_allclose(unnormalize(s.test_x, s), written["test"][0], atol=1e-3)
    assert s.train_y.tolist() == written["train"][1].tolist()
    assert s.test_y.tolist() == written["test"][1].tolist()
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage" * 10)
    with pytest.raises(DataError, match="test_32x32.mat"):
        load_dataset("svhn", tmp_path, seed=0, download=False)


# --------------------------------------------------------------------------- mnist1d


def test_mnist1d_is_generated_offline_and_leaves_global_rngs_alone() -> None:
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    s = load_dataset("mnist1d", None, seed=0)
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    # The package's standard 4000 training signals; generated validation / test sets (of other
    # seeds: tests/test_deep_scoring.py), n / 10 signals per digit.
    assert s.train_x.shape == (4000, 1, 40) and s.val_x.shape == (10000, 1, 40)
    assert s.test_x.shape == (100000, 1, 40) and s.input_shape == (1, 40)
    assert s.augment_flip is False and s.info["files"] == []
    assert torch.bincount(s.test_y).tolist() == [10000] * 10
    again = load_dataset("mnist1d", None, seed=0)
    assert torch.equal(again.train_x, s.train_x)  # in-place normalization never hits the cache
    assert again.info["generated_sha256"] == s.info["generated_sha256"]


# --------------------------------------------------------------------------- splits and noise


def test_symmetric_noise_statistics() -> None:
    rng = np.random.default_rng(0)
    k, n, p = 10, 20000, 0.4
    y = rng.integers(0, k, n)
    out, mask = corrupt_labels(y, p, "sym", k, np.random.default_rng(1))
    assert mask.sum() == round(p * n) and np.array_equal(mask, out != y)
    assert np.all(out[~mask] == y[~mask])
    # Each noisy label is uniform over the K - 1 other classes: 9 x 10 transition counts of
    # about 8000 / 90 = 89; a chi-square with 80 dof stays far below 160 unless it is not uniform.
    table = np.zeros((k, k))
    np.add.at(table, (y[mask], out[mask]), 1)
    assert np.all(np.diag(table) == 0)
    expected = table.sum(1, keepdims=True) / (k - 1)
    off = ~np.eye(k, dtype=bool)
    chi2 = (((table - expected) ** 2 / expected)[off]).sum()
    assert chi2 < 160, chi2
    # Noisy examples are spread over the classes in proportion to their size.
    per_class = np.bincount(y[mask], minlength=k) / np.bincount(y, minlength=k)
    assert np.all(np.abs(per_class - p) < 0.05)
    full, full_mask = corrupt_labels(y, 1.0, "sym", k, np.random.default_rng(2))
    assert full_mask.all() and np.all(full != y)


def test_asymmetric_noise_is_the_cifar10_class_map() -> None:
    y = np.repeat(np.arange(10), 1000)
    out, mask = corrupt_labels(y, 0.3, "asym", 10, np.random.default_rng(0), dataset="cifar10")
    assert CIFAR10_ASYM_MAP == {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}  # truck, bird, cat, dog, deer
    for c in range(10):
        changed = mask[y == c]
        if c in CIFAR10_ASYM_MAP:
            assert changed.sum() == 300  # exactly a fraction p of each source class
            assert np.all(out[(y == c) & mask] == CIFAR10_ASYM_MAP[c])
        else:
            assert not changed.any()
    # cat <-> dog is a swap of two disjoint sets chosen from the clean labels.
    assert ((y == 3) & (out == 5)).sum() == 300 and ((y == 5) & (out == 3)).sum() == 300
    with pytest.raises(ValueError, match="--noise_type=asym.*--dataset=cifar100"):
        corrupt_labels(y, 0.3, "asym", 10, np.random.default_rng(0), dataset="cifar100")
    with pytest.raises(ValueError, match="--noise_type"):
        corrupt_labels(y, 0.3, "pair", 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="--p_label_noise"):
        corrupt_labels(y, 1.5, "sym", 10, np.random.default_rng(0))


def test_splits_noise_and_subsets_are_seeded_and_recorded(tmp_path: Path) -> None:
    _write_fashion_like(tmp_path, np.random.default_rng(4), compress=True, n=200, nt=10)
    kw = dict(seed=5, download=False)
    base = load_dataset("fashion_mnist", tmp_path, **kw)
    assert len(base.val_y) == 20 and len(base.train_y) == 180
    noisy = load_dataset("fashion_mnist", tmp_path, p_label_noise=0.5, frac_train=0.5, **kw)
    assert len(noisy.train_y) == 90 and noisy.info["sizes"]["train"] == 90
    assert noisy.noisy.sum().item() == 45 == noisy.info["noise"]["n_noisy"]
    assert torch.equal(noisy.noisy, noisy.train_y != noisy.train_y_clean)
    # The validation set does not depend on frac_train or the noise; its labels stay clean.
    assert torch.equal(noisy.val_y, base.val_y)
    np.testing.assert_allclose(
        unnormalize(noisy.val_x, noisy), unnormalize(base.val_x, base), atol=1e-3
    )
    # The subset is a subset of the training split, with its clean labels.
    base_rows = {r.tobytes() for r in np.round(unnormalize(base.train_x, base)).astype(np.uint8)}
    sub_rows = np.round(unnormalize(noisy.train_x, noisy)).astype(np.uint8)
    assert all(r.tobytes() in base_rows for r in sub_rows)
    # Reproducible for a seed, different for another.
    again = load_dataset("fashion_mnist", tmp_path, p_label_noise=0.5, frac_train=0.5, **kw)
    assert torch.equal(again.train_y, noisy.train_y) and torch.equal(again.train_x, noisy.train_x)
    other = load_dataset("fashion_mnist", tmp_path, seed=6, p_label_noise=0.5, download=False)
    assert not torch.equal(other.val_y, base.val_y)
    # Normalization uses the final training split: mean 0 / std 1 there.
    assert abs(noisy.train_x.double().mean().item()) < 1e-5
    with pytest.raises(ValueError, match="--noise_type=asym"):
        load_dataset("fashion_mnist", tmp_path, p_label_noise=0.2, noise_type="asym", **kw)
    with pytest.raises(ValueError, match="--frac_train"):
        load_dataset("fashion_mnist", tmp_path, frac_train=0.0, **kw)
    with pytest.raises(ValueError, match="--dataset"):
        load_dataset("imagenet", tmp_path, seed=0)


# --------------------------------------------------------------------------- augment


def _reference_crops(x: np.ndarray, pad: int) -> list[list[np.ndarray]]:
    """All (2 pad + 1)^2 crops and their mirror images of each padded image."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = []
    for i in range(n):
        crops = [
            xp[i, :, a : a + h, b : b + w] for a in range(2 * pad + 1) for b in range(2 * pad + 1)
        ]
        out.append(crops + [cr[:, :, ::-1] for cr in crops])
    return out


def test_augment_outputs_are_padded_crops_and_flips() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(1), pad=2, flip=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    refs = _reference_crops(x.numpy(), 2)
    which = []
    for i in range(len(x)):
        hits = [j for j, r in enumerate(refs[i]) if np.array_equal(out[i].numpy(), r)]
        assert hits, f"example {i} is not a crop of the padded image"
        which.append(hits[0])
    which = np.array(which)
    assert 0.3 < (which >= 25).mean() < 0.7  # about half flipped
    assert len(np.unique(which % 25)) > 12  # offsets spread over the 25 positions
    # Same generator state -> same result; another seed -> different.
    again = augment(x, torch.Generator().manual_seed(1), pad=2, flip=True)
    assert torch.equal(again, out)
    assert not torch.equal(augment(x, torch.Generator().manual_seed(2), pad=2), out)
    # No flip and no padding -> identity.
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), pad=0, flip=False), x)


def test_augment_without_flip_and_on_signals() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = augment(x, torch.Generator().manual_seed(0), pad=1, flip=False)
    refs = _reference_crops(x.numpy(), 1)
    for i in range(2):
        assert any(np.array_equal(out[i].numpy(), r) for r in refs[i][:9])  # unflipped crops only
    sig = torch.randn(50, 2, 40)
    shifted = augment(sig, torch.Generator().manual_seed(3), pad=4, flip=False)
    padded = torch.nn.functional.pad(sig, (4, 4))
    for i in range(50):
        assert any(torch.equal(shifted[i], padded[i, :, s : s + 40]) for s in range(9))
    shifts = {
        next(s for s in range(9) if torch.equal(shifted[i], padded[i, :, s : s + 40]))
        for i in range(50)
    }
    assert len(shifts) >= 6
    with pytest.raises(ValueError, match="augment expects"):
        augment(torch.zeros(3, 4), torch.Generator())
