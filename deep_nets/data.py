"""Data sets for the deep-network experiments, as tensors on the training device (no torchvision).

`load_dataset(name, data_dir, seed=...)` returns a `Splits`: train / validation / test tensors,
already normalized per channel with the statistics of the training split, with optional label
noise applied once to the training labels (the clean labels and the mask of relabeled examples
are kept so the trainer can log the train error on noisy and on clean examples).

Formats (each read by a small parser here; nothing is unpickled without an allow-list):
- fashion_mnist: the four idx files (gzipped or not) from `data_dir`, else the Debian package
  `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), else downloaded from the official
  URLs and checked against SHA-256 sums.
- mnist1d: generated offline by the PyPI package `mnist1d`, never its download. Training: the
  package's standard 4000 signals (`make_dataset` with its default arguments, seed 42); its 1000
  standard test signals are not used. Validation and test: fresh signals of the same generator
  with other seeds (`MNIST1D_VAL_SEED`, `MNIST1D_TEST_SEED`; 10 000 and 100 000 by default), put
  on the standard set's scale (see `mnist1d_signals`), so that a test error is decided to ~0.1
  point and selection noise is small; `val_frac` does not apply (nothing is held out).
- cifar10 / cifar100: the "python version" release (`cifar-10-batches-py/data_batch_{1..5}`,
  `test_batch`; `cifar-100-python/train`, `test`), read with a restricted unpickler; downloaded
  (tar.gz, SHA-256 checked) when missing and `download=True`.
- svhn: `train_32x32.mat` / `test_32x32.mat` (scipy.io.loadmat; label 10 means digit 0).

Splits (all seeded by `seed`, with independent streams):
- validation: a fraction `val_frac` of the training set held out by a seeded permutation; the
  validation set is the same for every `frac_train` and noise setting;
- `frac_train`: a seeded subset of the remaining training examples;
- label noise (training labels; validation labels too with `noisy_val`; test labels stay clean):
  symmetric: exactly int(p n) training examples (the original's count), drawn uniformly without
  replacement, get a label drawn uniformly from the K - 1 *other* classes; asymmetric (CIFAR-10
  only): for each source class c in {truck, bird, cat, dog, deer}, exactly round(p n_c) of its
  examples are relabeled truck->automobile, bird->airplane, cat->dog, dog->cat, deer->horse (the
  original's asym differs: see the parity table in deep_nets/README.md).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import random
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS: tuple[str, ...] = ("fashion_mnist", "mnist1d", "cifar10", "cifar100", "svhn")
NOISE_TYPES: tuple[str, ...] = ("sym", "asym")

NUM_CLASSES = {"fashion_mnist": 10, "mnist1d": 10, "cifar10": 10, "cifar100": 100, "svhn": 10}
# Horizontal flips preserve the label of clothes and natural images, not of digits.
AUGMENT_FLIP = {
    "fashion_mnist": True,
    "mnist1d": False,
    "cifar10": True,
    "cifar100": True,
    "svhn": False,
}

# CIFAR-10 class indices: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog,
# 7 horse, 8 ship, 9 truck. Asymmetric noise of the reference (PAPERS.md#deep-nets-data).
CIFAR10_ASYM_MAP: dict[int, int] = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}

SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Official release files and the SHA-256 of the exact bytes served there (the releases publish
# MD5 sums; these SHA-256 sums are of the same files: Fashion-MNIST MD5 8d4fb7e6..., 25c81989...,
# bef4ecab..., bb300cfd...; CIFAR-10 MD5 c58f3010...; CIFAR-100 MD5 eb9058c3...; SVHN MD5
# e26dedcc..., eb5a983b...).
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
SVHN_FILES: dict[str, str] = {
    "train_32x32.mat": "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
    "test_32x32.mat": "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
}

# mnist1d: the package's default arguments fix seed 42; we never change them. The generated
# validation and test sets use their own seeds (any other than 42 gives independent signals).
MNIST1D_SEED = 42
MNIST1D_VAL_SEED = 4201
MNIST1D_TEST_SEED = 4202
MNIST1D_N_VAL = 10_000
MNIST1D_N_TEST = 100_000


class DataError(ValueError):
    """A data file is missing, unreadable or corrupt (the message names the file and the fix)."""


@dataclass
class Splits:
    """A data set split into train / validation / test tensors on one device.

    x tensors are in torch's default float dtype (float32 unless set) of shape (N, C, H, W)
    (mnist1d: (N, 1, 40)), normalized per channel as (x - mean_c) / std_c with the training
    split's statistics (`info["normalization"]`).
    y tensors are int64 class indices. `train_y` holds the (possibly noisy) training labels,
    `train_y_clean` the original ones, `noisy` = (train_y != train_y_clean) as a bool mask.
    """

    train_x: Tensor
    train_y: Tensor
    train_y_clean: Tensor
    noisy: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    augment_flip: bool
    info: dict[str, Any] = field(default_factory=dict)


def default_data_dir() -> Path:
    """Where downloads go when no --data_dir is given: $SHARPNESS_DATA_DIR or ~/.cache."""
    env = os.environ.get("SHARPNESS_DATA_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "sharpness" / "data"


# --------------------------------------------------------------------------- file helpers


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    try:
        return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def download_file(url: str, dest: str | os.PathLike, sha256: str, *, timeout: float = 60.0) -> Path:
    """Download `url` to `dest`, verifying its SHA-256, atomically.

    The bytes go to a temporary file next to `dest`; only when the digest matches is it renamed
    onto `dest` (os.replace), so `dest` is never a partial or unverified file.
    Raises DataError when the download fails or the checksum does not match.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise DataError(f"cannot write the download of {url} into {dest.parent}: {e}") from e
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while block := response.read(1 << 20):
                    h.update(block)
                    f.write(block)
            f.flush()
            os.fsync(f.fileno())
        digest = h.hexdigest()
        if digest != sha256:
            raise DataError(
                f"checksum mismatch for {url}: SHA-256 {digest}, expected {sha256}; the download "
                f"is corrupt or the server changed; nothing was written to {dest}"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DataError(f"could not download {url} to {dest}: {e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _open_maybe_gzip(path: Path) -> bytes:
    """All bytes of `path`, gunzipped when it starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
    except OSError as e:  # no read permission, an I/O error: name the file
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} is not a valid gzip file ({e}); delete it and retry") from e
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an idx file (the MNIST format; gzipped or not) of unsigned bytes.

    Layout: 2 zero bytes, type code 0x08 (uint8), number of dims d, then d big-endian uint32
    sizes, then prod(sizes) bytes.
    """
    path = Path(path)
    data = _open_maybe_gzip(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DataError(f"{path} is not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(shape))
    if len(data) != header + size:
        raise DataError(
            f"{path}: idx header says {shape} = {size} bytes but the file holds "
            f"{len(data) - header}; the file is truncated or corrupt"
        )
    # Copy: frombuffer views the read-only bytes, and torch wants writable arrays.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


# --------------------------------------------------------------------------- fashion_mnist


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        p = directory / name
        try:
            if p.is_file():
                return p
        except OSError as e:  # a folder on the way without permission
            raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    return None


def _fashion_dir_candidates(data_dir: str | os.PathLike | None) -> list[Path]:
    """Where to look: the given --data_dir (or its fashion-mnist subfolder) and nothing else,
    so that a --data_dir is used or refused, never silently replaced; without one, the Debian
    package's folder."""
    if data_dir is None:
        return [SYSTEM_FASHION_MNIST_DIR]
    d = Path(data_dir)
    return [d, d / "fashion-mnist", d / "fashion_mnist"]


def _fashion_mnist_raw(data_dir: str | os.PathLike | None, download: bool) -> dict[str, Any]:
    stems = [n[: -len(".gz")] for n in FASHION_MNIST_FILES]
    found: dict[str, Path] | None = None
    for d in _fashion_dir_candidates(data_dir):
        paths = {s: _find_idx(d, s) for s in stems}
        if all(p is not None for p in paths.values()):
            found = paths  # type: ignore[assignment]
            break
    source = "local idx files"
    if found is None:
        target = Path(data_dir) if data_dir is not None else default_data_dir() / "fashion-mnist"
        how = (
            f"put the four idx files ({', '.join(FASHION_MNIST_FILES)}) from "
            f"{FASHION_MNIST_URL} into --data_dir, or install the Debian package "
            f"dataset-fashion-mnist ({SYSTEM_FASHION_MNIST_DIR})"
        )
        if not download:
            missing = (
                ", ".join(s + ".gz" for s in stems if _find_idx(Path(data_dir), s) is None)
                if data_dir is not None
                else ", ".join(FASHION_MNIST_FILES)
            )
            raise DataError(
                f"Fashion-MNIST not found in --data_dir={data_dir} (missing: {missing}, or the "
                f"same names without .gz); {how}"
            )
        try:
            for name, digest in FASHION_MNIST_FILES.items():
                if not (target / name).is_file():
                    download_file(FASHION_MNIST_URL + name, target / name, digest)
        except DataError as e:
            raise DataError(
                f"Fashion-MNIST not found locally and the download failed ({e}); {how}"
            ) from e
        found = {s: target / (s + ".gz") for s in stems}
        source = f"downloaded from {FASHION_MNIST_URL}"
    train_x = read_idx(found["train-images-idx3-ubyte"])
    train_y = read_idx(found["train-labels-idx1-ubyte"])
    test_x = read_idx(found["t10k-images-idx3-ubyte"])
    test_y = read_idx(found["t10k-labels-idx1-ubyte"])
    for x, y, what in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"Fashion-MNIST {what} files in {found[what + '-images-idx3-ubyte'].parent} "
                f"have shapes {x.shape} and {y.shape}; expected (N, 28, 28) and (N,)"
            )
    return {
        "train_x": train_x[:, None],
        "train_y": train_y,
        "test_x": test_x[:, None],
        "test_y": test_y,
        "source": source,
        "files": [_file_record(p) for p in found.values()],
    }


# --------------------------------------------------------------------------- mnist1d

_MNIST1D_CACHE: dict[Any, np.ndarray] = {}


def _mnist1d_package() -> Any:
    """The package's modules data, transform and utils (``mnist1d.transform`` is shadowed by
    the function of that name in the package namespace, hence import_module)."""
    import importlib
    import types

    try:
        mods = {k: importlib.import_module(f"mnist1d.{k}") for k in ("data", "transform", "utils")}
    except ImportError as e:
        raise DataError(
            f"mnist1d needs the PyPI package `mnist1d` (pip install mnist1d); import failed: {e}"
        ) from e
    args = mods["data"].get_dataset_args()
    if args.seed != MNIST1D_SEED:
        raise DataError(f"mnist1d default seed changed to {args.seed}; expected {MNIST1D_SEED}")
    return types.SimpleNamespace(**mods)


def mnist1d_signals(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The *raw* signals of ``mnist1d.data.make_dataset(num_samples=n, seed=seed)`` (float64
    (n // 10 * 10, 40), int64 labels) before its final standardization, fast.

    make_dataset draws, for each example in turn (label-major, n // 10 per digit), the random
    numbers of ``mnist1d.transform.transform`` (pad length, scale, translation, correlated noise,
    iid noise, shear) from the global numpy stream seeded by ``set_seed(seed)``, then shuffles.
    Here the draws are made in exactly that order (``np.random.choice(k)`` is
    ``np.random.randint(0, k)`` in numpy's legacy stream; the two ``randn(L)`` calls are one
    ``randn(2 L)``) and the arithmetic is then applied to all examples at once with the package's
    own ``interpolate``: about 50 us per example instead of 500. `_mnist1d_raw` checks at every
    load that this reproduces the package's seed-42 data set (to 1e-9; measured 7e-16), so a
    package whose generator changed is refused, not silently replicated. The global ``random``
    and numpy states are restored."""
    pkg = _mnist1d_package()
    a = pkg.data.get_dataset_args()
    templates = pkg.data.get_templates()
    per = n // len(templates["y"])
    m, length = per * len(templates["y"]), a.template_len + a.padding[-1]
    lo, hi = a.padding
    pads, ks = np.empty(m, np.int64), np.empty(m, np.int64)
    scales, shears = np.empty(m), np.empty(m)
    noise = np.empty((m, 2 * length))
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        pkg.utils.set_seed(seed)
        rand, randn, randint = np.random.rand, np.random.randn, np.random.randint
        for i in range(m):  # the draws of transform(), in its order
            pads[i] = lo + int(rand() * (hi - lo + 1))
            scales[i] = 1 + a.scale_coeff * (rand() - 0.5)
            ks[i] = randint(0, a.max_translation)
            noise[i] = randn(2 * length)  # correlated noise, then iid noise
            shears[i] = a.shear_scale * (rand() - 0.5)
        perm = np.random.permutation(m)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    interpolate = pkg.transform.interpolate
    labels = np.repeat(np.asarray(templates["y"], dtype=np.int64), per)
    x0 = templates["x"][labels] + 1e-8  # transform's eps
    x = np.empty((m, length))
    for p in np.unique(pads):  # pad, then dilate to `length` (one call per pad length)
        idx = np.flatnonzero(pads == p)
        padded = np.concatenate([x0[idx], np.zeros((len(idx), p))], axis=1)
        x[idx] = interpolate(padded.T, length).T
    x *= scales[:, None]
    x = np.take_along_axis(x, (np.arange(length)[None, :] - ks[:, None]) % length, axis=1)
    from scipy.ndimage import gaussian_filter1d

    mask = x != 0
    x = mask * x + (1 - mask) * gaussian_filter1d(a.corr_noise_scale * noise[:, :length], 2, axis=1)
    x = x + a.iid_noise_scale * noise[:, length:]
    x = x - shears[:, None] * np.linspace(-0.5, 0.5, length)[None, :]
    x = interpolate(x.T, a.final_seq_length).T
    return x[perm], labels[perm]


def _mnist1d_raw(n_val: int = MNIST1D_N_VAL, n_test: int = MNIST1D_N_TEST) -> dict[str, Any]:
    for what, n in (("mnist1d_n_val", n_val), ("mnist1d_n_test", n_test)):
        if n < 10 or n % 10:
            raise ValueError(f"--{what} must be a positive multiple of 10 (got {n})")
    if not _MNIST1D_CACHE:
        pkg = _mnist1d_package()
        # make_dataset reseeds the global `random` and numpy generators: restore them so loading
        # data never changes the caller's random streams.
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            d = pkg.data.make_dataset(pkg.data.get_dataset_args())
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        raw, raw_y = mnist1d_signals(MNIST1D_SEED, 5000)
        # make_dataset's standardization: one scalar mean and std over its 5000 raw signals; the
        # generated sets get the same constants, so they are on the training set's scale.
        center, scale = raw.mean(), raw.std()
        ours = (raw - center) / scale
        err = max(np.abs(ours[:4000] - d["x"]).max(), np.abs(ours[4000:] - d["x_test"]).max())
        if err > 1e-9 or not np.array_equal(np.concatenate([d["y"], d["y_test"]]), raw_y):
            raise DataError(
                f"mnist1d {_mnist1d_version()}: deep_nets.data.mnist1d_signals no longer "
                f"reproduces the package's make_dataset (max difference {err:.3g}); the "
                "generated validation/test sets need the generator this suite was checked with"
            )
        _MNIST1D_CACHE.update(
            train_x=np.asarray(d["x"], dtype=np.float32),
            train_y=np.asarray(d["y"], dtype=np.int64),
            standardize=np.array([center, scale]),
        )
    c = _MNIST1D_CACHE
    center, scale = c["standardize"]
    for key, seed, n in (("val", MNIST1D_VAL_SEED, n_val), ("test", MNIST1D_TEST_SEED, n_test)):
        if (key, n) not in c:
            x, y = mnist1d_signals(seed, n)
            c[(key, n)] = (((x - center) / scale).astype(np.float32), y)
    (val_x, val_y), (test_x, test_y) = c[("val", n_val)], c[("test", n_test)]
    digest = hashlib.sha256()
    for a in (c["train_x"], c["train_y"], val_x, val_y, test_x, test_y):
        digest.update(np.ascontiguousarray(a).tobytes())
    version = _mnist1d_version()
    return {
        "train_x": c["train_x"][:, None],
        "train_y": c["train_y"],
        "val_x": val_x[:, None],
        "val_y": val_y,
        "test_x": test_x[:, None],
        "test_y": test_y,
        "source": (
            f"generated by mnist1d {version}: training = make_dataset(default args, seed "
            f"{MNIST1D_SEED})'s 4000; validation = {n_val} signals of seed {MNIST1D_VAL_SEED}, "
            f"test = {n_test} of seed {MNIST1D_TEST_SEED}, standardized with the seed-"
            f"{MNIST1D_SEED} set's constants ({center:.6g}, {scale:.6g})"
        ),
        "files": [],
        "generated_sha256": digest.hexdigest(),
        "generated": {
            "package": f"mnist1d {version}",
            "train_seed": MNIST1D_SEED,
            "val_seed": MNIST1D_VAL_SEED,
            "test_seed": MNIST1D_TEST_SEED,
            "n_val": n_val,
            "n_test": n_test,
            "standardize": [float(center), float(scale)],
        },
    }


def _mnist1d_version() -> str:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- CIFAR


def _latin1_encode(obj: Any, encoding: str = "latin1") -> bytes:
    # Python 3 pickles of bytes at protocol 2 call _codecs.encode(str, "latin1"); allow only that.
    if not isinstance(obj, str) or encoding.lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as encode(str, 'latin1')")
    return obj.encode("latin1")


def _safe_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dt} is not allowed in a data file")
    return dt


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(buf, (bytes, bytearray)) or order not in ("C", "F"):
        raise pickle.UnpicklingError("_frombuffer needs a bytes buffer and order C or F")
    return np.frombuffer(buf, dtype=_safe_dtype(dtype)).reshape(shape, order=order).copy()


def _numpy_reconstruct():
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    return core.multiarray._reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for data files: only dicts, lists, str, bytes, numbers and numeric arrays.

    A pickle can name any importable callable (os.system, eval, ...); `find_class` refuses every
    global except numpy's array reconstruction (`_reconstruct`, `ndarray`, a non-object `dtype`)
    and a latin-1 `_codecs.encode`, which is all the CIFAR python batches contain.
    """

    _RECONSTRUCT = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }

    # Pickle protocol 5 stores arrays as raw buffers rebuilt by numpy's _frombuffer.
    _FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._RECONSTRUCT:
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _safe_dtype
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in self._FROMBUFFER:
            return _safe_frombuffer
        raise pickle.UnpicklingError(f"global '{module}.{name}' is forbidden in a data file")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are forbidden in a data file")


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle `path` with RestrictedUnpickler (latin-1 for Python 2 strings, as numpy needs)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(io.BufferedReader(f), encoding="latin1").load()


def _str_keys(d: dict) -> dict:
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def read_cifar_batch(path: str | os.PathLike, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: images uint8 (N, 3, 32, 32) and labels int64 (N,).

    The file is a pickled dict with keys data (uint8 N x 3072, rows = 1024 red, 1024 green,
    1024 blue values in row-major order), `label_key` (list of N ints), batch_label, filenames.
    """
    path = Path(path)
    try:
        d = restricted_load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is not a valid CIFAR python batch: {e}") from e
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a valid CIFAR python batch: top level is not a dict")
    d = _str_keys(d)
    if "data" not in d or label_key not in d:
        raise DataError(f"{path}: CIFAR batch lacks 'data' or '{label_key}' (keys: {sorted(d)})")
    x, y = d["data"], np.asarray(d[label_key])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"{path}: 'data' must be a uint8 array N x 3072")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: '{label_key}' must hold {len(x)} integer labels")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


_CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "url": CIFAR10_URL,
        "sha256": CIFAR10_SHA256,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "url": CIFAR100_URL,
        "sha256": CIFAR100_SHA256,
    },
}


def _extract_members(archive: Path, members: Sequence[str], dest: Path) -> None:
    """Extract exactly the named regular files of a tar archive (no links, no other paths)."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for name in members:
                info = tar.getmember(name)
                if not info.isfile():
                    raise DataError(f"{archive}: member {name} is not a regular file")
                src = tar.extractfile(info)
                assert src is not None
                out = dest / name
                out.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
                with os.fdopen(fd, "wb") as f:
                    while block := src.read(1 << 20):
                        f.write(block)
                os.replace(tmp, out)
    except (tarfile.TarError, KeyError, OSError, EOFError) as e:
        raise DataError(f"could not extract {archive}: {e}; delete it and retry") from e


def _cifar_raw(name: str, data_dir: str | os.PathLike | None, download: bool) -> dict[str, Any]:
    lay = _CIFAR_LAYOUT[name]
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    needed = lay["train"] + lay["test"]
    folder = None
    for d in (base / lay["folder"], base):
        if all((d / f).is_file() for f in needed):
            folder = d
            break
    source = "local python batches"
    if folder is None:
        archive = base / Path(lay["url"]).name
        how = (
            f"download {lay['url']} and extract it into --data_dir "
            f"(expects {base / lay['folder']}/{{{','.join(needed)}}})"
        )
        if archive.is_file():
            digest = sha256_file(archive)
            if digest != lay["sha256"]:
                raise DataError(
                    f"{archive} has SHA-256 {digest}, expected {lay['sha256']}: delete it; {how}"
                )
            source = f"extracted from {archive}"
        elif download:
            try:
                download_file(lay["url"], archive, lay["sha256"])
            except DataError as e:
                raise DataError(f"{name} not found in --data_dir={data_dir} ({e}); {how}") from e
            source = f"downloaded from {lay['url']}"
        else:
            raise DataError(f"{name} not found in --data_dir={data_dir}; {how}")
        _extract_members(archive, [f"{lay['folder']}/{f}" for f in needed], base)
        folder = base / lay["folder"]
    xs, ys = {}, {}
    for split in ("train", "test"):
        parts = [read_cifar_batch(folder / f, lay["label_key"]) for f in lay[split]]
        xs[split] = np.concatenate([p[0] for p in parts])
        ys[split] = np.concatenate([p[1] for p in parts])
    return {
        "train_x": xs["train"],
        "train_y": ys["train"],
        "test_x": xs["test"],
        "test_y": ys["test"],
        "source": source,
        "files": [_file_record(folder / f) for f in needed],
    }


# --------------------------------------------------------------------------- SVHN


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits .mat file: images uint8 (N, 3, 32, 32), labels int64 in 0..9.

    The file holds X of shape (32, 32, 3, N) (height, width, channel, example) and y of shape
    (N, 1) with labels 1..10, where 10 stands for the digit 0.
    """
    import scipy.io

    path = Path(path)
    try:
        m = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError, NotImplementedError, zlib.error) as e:
        raise DataError(f"{path} is not a readable SVHN .mat file: {e}") from e
    if "X" not in m or "y" not in m:
        raise DataError(f"{path}: SVHN .mat file lacks X or y")
    x, y = m["X"], np.asarray(m["y"]).reshape(-1)
    if x.dtype != np.uint8 or not np.all(y == np.round(y)):
        raise DataError(f"{path}: X must be uint8 pixels and y integer labels")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataError(f"{path}: X has shape {x.shape}, expected (32, 32, 3, N) with N = len(y)")
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise DataError(f"{path}: labels must lie in 1..10 (10 = digit 0)")
    y = y.astype(np.int64) % 10
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y


def _svhn_raw(data_dir: str | os.PathLike | None, download: bool) -> dict[str, Any]:
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = None
    for d in (base / "svhn", base):
        if all((d / f).is_file() for f in SVHN_FILES):
            folder = d
            break
    source = "local .mat files"
    if folder is None:
        how = (
            f"download {', '.join(SVHN_URL + f for f in SVHN_FILES)} into --data_dir "
            f"(expects {base}/train_32x32.mat and {base}/test_32x32.mat)"
        )
        if not download:
            raise DataError(f"SVHN not found in --data_dir={data_dir}; {how}")
        try:
            for f, digest in SVHN_FILES.items():
                if not (base / f).is_file():
                    download_file(SVHN_URL + f, base / f, digest)
        except DataError as e:
            raise DataError(f"SVHN not found in --data_dir={data_dir} ({e}); {how}") from e
        folder = base
        source = f"downloaded from {SVHN_URL}"
    train_x, train_y = read_svhn_mat(folder / "train_32x32.mat")
    test_x, test_y = read_svhn_mat(folder / "test_32x32.mat")
    return {
        "train_x": train_x,
        "train_y": train_y,
        "test_x": test_x,
        "test_y": test_y,
        "source": source,
        "files": [_file_record(folder / f) for f in SVHN_FILES],
    }


# --------------------------------------------------------------------------- splits and noise


def corrupt_labels(
    y: np.ndarray,
    p: float,
    noise_type: str,
    num_classes: int,
    rng: np.random.Generator,
    *,
    dataset: str = "cifar10",
) -> tuple[np.ndarray, np.ndarray]:
    """Label noise of PAPERS.md#deep-nets-data. Returns (noisy labels, bool mask of relabeled).

    sym: exactly int(p n) examples (the original's count, truncated), uniformly without
    replacement, get a label drawn uniformly from the K - 1 other classes (y + U{1..K-1} mod K),
    so every chosen label really changes.
    asym (CIFAR-10 only): for each source class c of CIFAR10_ASYM_MAP, exactly round(p n_c) of
    its examples (chosen from the clean labels, so cat<->dog is a swap, not a chain) are mapped
    to CIFAR10_ASYM_MAP[c]; the other classes are untouched.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"--p_label_noise must lie in [0, 1], got {p}")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"--noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    y = np.asarray(y, dtype=np.int64)
    out = y.copy()
    if noise_type == "asym" and dataset != "cifar10":
        raise ValueError(
            f"--noise_type=asym is defined only for --dataset=cifar10 (truck->automobile, "
            f"bird->airplane, cat<->dog, deer->horse), not for --dataset={dataset}; use sym"
        )
    if p == 0.0 or len(y) == 0:
        return out, np.zeros(len(y), dtype=bool)
    if noise_type == "sym":
        if num_classes < 2:
            raise ValueError("symmetric label noise needs at least 2 classes")
        n_noisy = int(p * len(y))  # the original's int(n_ex * p): 0.29 * 100 -> 28
        idx = rng.choice(len(y), size=n_noisy, replace=False)
        out[idx] = (y[idx] + rng.integers(1, num_classes, size=n_noisy)) % num_classes
    else:
        for src in sorted(CIFAR10_ASYM_MAP):
            members = np.flatnonzero(y == src)
            k = int(round(p * len(members)))
            chosen = rng.choice(members, size=k, replace=False)
            out[chosen] = CIFAR10_ASYM_MAP[src]
    return out, out != y


def _validate_args(
    name: str, val_frac: float, frac_train: float, p_label_noise: float, noise_type: str
) -> None:
    if name not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {name!r}")
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac must lie in [0, 1), got {val_frac}")
    if not 0.0 < frac_train <= 1.0:
        raise ValueError(f"--frac_train must lie in (0, 1], got {frac_train}")
    if not 0.0 <= p_label_noise <= 1.0:
        raise ValueError(f"--p_label_noise must lie in [0, 1], got {p_label_noise}")
    if noise_type not in NOISE_TYPES:
        raise ValueError(f"--noise_type must be one of {NOISE_TYPES}, got {noise_type!r}")
    if noise_type == "asym" and p_label_noise > 0 and name != "cifar10":
        raise ValueError(
            f"--noise_type=asym is defined only for --dataset=cifar10, not --dataset={name}; "
            "use --noise_type=sym"
        )


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) standard deviation of x (N, C, ...), in float64.

    uint8 images go through a 256-bin histogram per channel, which is exact and avoids a
    float64 copy of the whole training set; other dtypes are reduced directly.
    """
    c = x.shape[1]
    if x.dtype == np.uint8:
        mean, std = np.empty(c), np.empty(c)
        values = np.arange(256, dtype=np.float64)
        for i in range(c):
            hist = np.bincount(x[:, i].reshape(-1), minlength=256).astype(np.float64)
            total = hist.sum()
            mean[i] = (hist * values).sum() / total
            std[i] = np.sqrt((hist * (values - mean[i]) ** 2).sum() / total)
        return mean, std
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes, dtype=np.float64), x.std(axis=axes, dtype=np.float64)


def _examples_digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (x, y):
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None,
    *,
    seed: int,
    val_frac: float = 0.1,
    frac_train: float = 1.0,
    p_label_noise: float = 0.0,
    noise_type: str = "sym",
    device: torch.device | str = "cpu",
    download: bool = True,
    noisy_val: bool = False,
    mnist1d_n_val: int = MNIST1D_N_VAL,
    mnist1d_n_test: int = MNIST1D_N_TEST,
) -> Splits:
    """Load `name`, split off validation, subset, add label noise, normalize, move to `device`.

    Seeded streams (numpy PCG64 seeded with [seed, stream]): 0 = validation permutation,
    1 = frac_train subset, 2 = label noise, 3 = validation label noise (``noisy_val``: the
    validation labels get the same kind and rate of noise as the training labels, as in the
    original, where early stopping sees a noisy validation set).
    Normalization: x <- (x / 255 - mean_c) / std_c (mnist1d: no /255), with per-channel mean
    and std over the final training split.
    mnist1d: the validation set is generated (``mnist1d_n_val`` signals) instead of held out,
    so ``val_frac`` does not apply and the training split is the standard 4000 signals; the
    test set is ``mnist1d_n_test`` generated signals (see the module docstring).
    Raises DataError for missing / corrupt files, ValueError for bad arguments.
    """
    _validate_args(name, val_frac, frac_train, p_label_noise, noise_type)
    if name == "fashion_mnist":
        raw = _fashion_mnist_raw(data_dir, download)
    elif name == "mnist1d":
        raw = _mnist1d_raw(mnist1d_n_val, mnist1d_n_test)
    elif name in ("cifar10", "cifar100"):
        raw = _cifar_raw(name, data_dir, download)
    else:
        raw = _svhn_raw(data_dir, download)
    num_classes = NUM_CLASSES[name]
    train_x, train_y = raw["train_x"], np.asarray(raw["train_y"], dtype=np.int64)
    test_x, test_y = raw["test_x"], np.asarray(raw["test_y"], dtype=np.int64)
    for y, what in ((train_y, "training"), (test_y, "test")):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{name}: {what} labels outside 0..{num_classes - 1} in {raw['files']}")

    n_full = len(train_y)
    if "val_x" in raw:  # a separate validation set: nothing is held out of the training set
        val_frac = None
        val_x_all, val_y_all = raw["val_x"], np.asarray(raw["val_y"], dtype=np.int64)
        val_idx, tr_idx = np.arange(len(val_y_all)), np.arange(n_full)
    else:
        val_x_all, val_y_all = train_x, train_y
        perm = np.random.default_rng([seed, 0]).permutation(n_full)
        n_val = int(round(val_frac * n_full))
        val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if frac_train < 1.0:
        n_keep = max(1, int(round(frac_train * len(tr_idx))))
        keep = np.random.default_rng([seed, 1]).choice(len(tr_idx), size=n_keep, replace=False)
        tr_idx = tr_idx[np.sort(keep)]
    if len(tr_idx) == 0:
        raise ValueError(
            f"{name}: empty training set (val_frac={val_frac}, frac_train={frac_train})"
        )

    y_clean = train_y[tr_idx]
    y_noisy, noisy = corrupt_labels(
        y_clean,
        p_label_noise,
        noise_type,
        num_classes,
        np.random.default_rng([seed, 2]),
        dataset=name,
    )

    val_y_clean = val_y_all[val_idx]
    val_y, val_noisy = val_y_clean, np.zeros(len(val_idx), dtype=bool)
    if noisy_val:
        val_y, val_noisy = corrupt_labels(
            val_y_clean,
            p_label_noise,
            noise_type,
            num_classes,
            np.random.default_rng([seed, 3]),
            dataset=name,
        )

    scale = 255.0 if train_x.dtype == np.uint8 else 1.0
    tr = train_x[tr_idx]
    mean, std = channel_stats(tr)
    mean, std = mean / scale, np.maximum(std / scale, 1e-8)
    stat_shape = (1, -1) + (1,) * (train_x.ndim - 2)

    def to_x(a: np.ndarray) -> Tensor:
        # copy=True: the in-place ops below must never write into cached source arrays.
        # torch's default float dtype: float32, or float64 for the portable pinned test runs.
        dt = torch.get_default_dtype()
        t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
        t = t.to(dt, copy=True).div_(scale)
        m = torch.as_tensor(mean, dtype=dt, device=t.device).view(stat_shape)
        s = torch.as_tensor(std, dtype=dt, device=t.device).view(stat_shape)
        return t.sub_(m).div_(s)

    def to_y(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device, copy=True)

    noise_info: dict[str, Any] = {
        "p": p_label_noise,
        "type": noise_type,
        "n_noisy": int(noisy.sum()),
        "frac_noisy": float(noisy.mean()) if len(noisy) else 0.0,
        "noisy_val": noisy_val,
        "n_noisy_val": int(val_noisy.sum()),
    }
    if noise_type == "asym" and p_label_noise > 0:
        noise_info["flips"] = {
            f"{s}->{d}": int((noisy & (y_clean == s)).sum()) for s, d in CIFAR10_ASYM_MAP.items()
        }
    info = {
        "dataset": name,
        "source": raw["source"],
        "files": raw["files"],
        "seed": seed,
        "val_frac": val_frac,
        "frac_train": frac_train,
        "sizes": {
            "full_train": n_full,
            "train": len(tr_idx),
            "val": len(val_idx),
            "test": len(test_y),
        },
        "normalization": {"mean": mean.tolist(), "std": std.tolist(), "scale": scale},
        "noise": noise_info,
    }
    if "generated_sha256" in raw:
        info["generated_sha256"] = raw["generated_sha256"]
    if "generated" in raw:
        info["generated"] = raw["generated"]
    # Which examples a model is scored on, before normalization (which follows each seed's
    # training split): runs with equal digests are scored on the same examples (suite.stats).
    info["examples_sha256"] = {
        "val": _examples_digest(val_x_all[val_idx], val_y),
        "test": _examples_digest(test_x, test_y),
    }

    splits = Splits(
        train_x=to_x(tr),
        train_y=to_y(y_noisy),
        train_y_clean=to_y(y_clean),
        noisy=torch.from_numpy(noisy).to(device),
        val_x=to_x(val_x_all[val_idx]),
        val_y=to_y(val_y),
        test_x=to_x(test_x),
        test_y=to_y(test_y),
        num_classes=num_classes,
        input_shape=tuple(int(s) for s in train_x.shape[1:]),
        name=name,
        augment_flip=AUGMENT_FLIP[name],
        info=info,
    )
    return splits


# --------------------------------------------------------------------------- augmentation


def augment(x: Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True) -> Tensor:
    """Random crop with zero padding (+ random horizontal flip) of a batch, on x's device.

    Images (N, C, H, W): pad by `pad` zeros on each side, crop an H x W window at offsets
    (dy, dx) ~ U{0..2 pad}^2 per example; with `flip`, mirror the width axis with probability
    1/2. Signals (N, C, L): shift by a random offset in U{0..2 pad} with zero padding (`flip`
    reverses the length axis). Random draws come from `generator` (on its own device, e.g. CPU),
    in a fixed order (offsets, then flips), so the augmentation is reproducible and resumable;
    the crop itself is one vectorized gather on x's device. Note: zeros are "padding" in the
    normalized space, i.e. the per-channel mean of the raw pixels.
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"augment expects (N, C, L) or (N, C, H, W), got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n = x.shape[0]
    gdev = generator.device
    spatial = x.shape[2:]
    offsets = torch.randint(0, 2 * pad + 1, (n, len(spatial)), generator=generator, device=gdev)
    flips = torch.rand(n, generator=generator, device=gdev) < 0.5 if flip else None
    offsets = offsets.to(x.device, non_blocking=True)
    if flips is not None:
        flips = flips.to(x.device, non_blocking=True)
    if pad == 0 and flips is None:
        return x.clone()
    padded = F.pad(x, (pad, pad) * len(spatial)) if pad > 0 else x
    w = spatial[-1]
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flips is not None:
        cols = torch.where(flips[:, None], (w - 1) - cols, cols)
    cols = cols + offsets[:, -1:]
    c = x.shape[1]
    if x.ndim == 3:
        return torch.gather(padded, 2, cols[:, None, :].expand(n, c, w))
    h = spatial[0]
    rows = torch.arange(h, device=x.device)[None, :] + offsets[:, :1]
    hp, wp = padded.shape[-2:]
    # One gather over the flattened padded image: source index rows * Wp + cols per pixel.
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(padded.reshape(n, c, hp * wp), 2, index).view(n, c, h, w)
