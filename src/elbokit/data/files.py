"""User data from ``.npy``, ``.npz`` and ``.csv`` files (and count matrices: ``.h5ad``, ``.mtx``, see
:mod:`elbokit.data.counts`).

* ``.npy``: a 2-D (N, D) array, or 3-D (N, H, W) images flattened to D = H * W (``image_shape = (H, W)``).
* ``.npz``: keys ``train``, ``validation``, ``test`` (optionally ``train_labels``, ...) used as given; or one
  array (any key, or key ``x``) that is split.
* ``.csv``: numbers separated by commas, one row per point; a first row with no numbers is a header.

A single array is split by a seeded permutation into ~80/10/10 (at least one point per split). Arrays are read
with ``allow_pickle=False``, and a ``.npy`` header is checked against the bytes that follow it before any memory is
allocated for the data. ``support`` is inferred from the values.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from torch import Tensor

from elbokit.data._csv import read_csv
from elbokit.data.base import (
    DataError,
    Dataset,
    as_float32,
    as_labels,
    check_finite,
    first_line,
    infer_support,
    permutation_split,
)

SPLIT_KEYS: tuple[str, ...] = ("train", "validation", "test")
_SUFFIXES = (".npy", ".npz", ".csv", ".h5ad", ".mtx")  # and .mtx.gz
_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}  # an .npz file is a zip archive
_DEFLATE_MAX_RATIO = 1032  # deflate codes at most 258 bytes in 2 bits: n compressed bytes expand to < 1032 n
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError)
# zipfile raises NotImplementedError for a compression method it does not know
_NPY_HEADER_READERS = {  # format 3.0 differs from 2.0 only in a UTF-8 header (for non-latin-1 field names)
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,
}


def load_file(path: str | Path, *, seed: int = 0, layer: str | None = None) -> Dataset:
    """Load a ``.npy`` / ``.npz`` / ``.csv`` file as a Dataset (see the module docstring for the layouts), or a
    count matrix: ``.h5ad`` (``layer``: a layer instead of ``X``) or ``.mtx`` / ``.mtx.gz``.

    Raises:
        DataError: a missing, empty, unreadable, truncated or corrupt file (a header claiming more data than the
            file holds is refused before any is read), non-numeric values, a wrong number of dimensions, NaN or
            inf values, pickled objects, or npz splits of different D; ``layer`` for a file other than ``.h5ad``;
            the one-line message names the file.
    """
    path = Path(path)
    suffix = ".mtx" if path.name.lower().endswith(".mtx.gz") else path.suffix.lower()
    if layer is not None and suffix != ".h5ad":
        raise DataError(f"layer applies to .h5ad files only, got layer={layer!r} for {path}")
    try:
        if not path.exists():
            raise DataError(f"file not found: {path}")
        if not path.is_file():
            raise DataError(f"not a file: {path}")
        if suffix not in _SUFFIXES:
            raise DataError(
                f"unsupported file type {path.suffix or '(none)'!r}: {path}; expected {', '.join(_SUFFIXES)}"
            )
        if path.stat().st_size == 0:
            raise DataError(f"empty file: {path}")
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as err:  # no permission, a name too long, ...
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    if suffix in _MAGIC and not magic.startswith(_MAGIC[suffix]):
        raise DataError(f"not a {suffix} file (it does not start with {_MAGIC[suffix]!r}): {path}")
    if suffix in (".h5ad", ".mtx"):
        from elbokit.data.counts import load_h5ad, load_mtx

        return load_h5ad(path, seed=seed, layer=layer) if suffix == ".h5ad" else load_mtx(path, seed=seed)
    if suffix == ".npz":
        return _load_npz(path, seed=seed)
    if suffix == ".npy":
        x, image_shape = _points(_np_load(path), f"{path}")
    else:
        x, image_shape = read_csv(path), None
    return _split_single(path, x, image_shape, seed=seed)


def _np_load(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            return _read_npy(f, os.fstat(f.fileno()).st_size, f"{path}")
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err


def _read_npy(f: IO[bytes], size: int, where: str) -> np.ndarray:
    """Read the ``.npy`` array in ``f``, a file of ``size`` bytes, checking its header before reading the data.

    A header claiming more data than the file holds (an absurd shape, a truncated file) is refused before numpy
    allocates memory for it; so is a header that needs pickle (an object array).
    """
    try:
        version = np.lib.format.read_magic(f)
        read_header = _NPY_HEADER_READERS.get(version)
        if read_header is None:
            raise DataError(f"{where}: corrupt .npy header: unknown format version {version[0]}.{version[1]}")
        shape, _, dtype = read_header(f)
    except DataError:
        raise
    except (ValueError, EOFError) as err:
        raise DataError(f"{where}: corrupt .npy header: {first_line(err)}") from err
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (pickled); save a numeric array instead")
    if any(n < 0 for n in shape):
        raise DataError(f"{where}: corrupt .npy header: negative size in shape {shape}")
    claimed = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    available = size - f.tell()
    if claimed > available:
        raise DataError(
            f"{where}: truncated or corrupt: the header claims shape {shape} of {dtype} ({claimed:,} bytes of data) "
            f"but the file holds {size:,} bytes, {available:,} after the header"
        )
    try:
        f.seek(0)
        return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, EOFError) as err:
        raise DataError(f"{where}: truncated or corrupt: {first_line(err)}") from err
    except MemoryError as err:
        raise DataError(f"{where}: shape {shape} of {dtype} ({claimed:,} bytes) does not fit in memory") from err


def _points(array: np.ndarray, where: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Check an array and flatten it to (N, D) float32; 3-D arrays are images (N, H, W)."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: expected numeric values, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise DataError(f"{where}: expected a 2-D (N, D) array or 3-D (N, H, W) images, got shape {array.shape}")
    if array.size == 0:
        raise DataError(f"{where}: empty array of shape {array.shape}")
    image_shape = (int(array.shape[1]), int(array.shape[2])) if array.ndim == 3 else None
    with np.errstate(over="ignore"):  # values beyond float32's range become inf, reported just below
        x = np.ascontiguousarray(array.reshape(array.shape[0], -1), dtype=np.float32)
    check_finite(x, where)
    return x, image_shape


def _split_single(path: Path, x: np.ndarray, image_shape: tuple[int, int] | None, *, seed: int) -> Dataset:
    if x.shape[0] < 3:
        raise DataError(f"{path}: need at least 3 rows to make train, validation and test splits, got {x.shape[0]}")
    data = as_float32(x)
    train, validation, test = (data[i] for i in permutation_split(len(data), seed=seed))
    return _dataset(path, (train, validation, test), None, image_shape)


def _dataset(
    path: Path,
    splits: tuple[Tensor, Tensor, Tensor],
    labels: tuple[Tensor, Tensor, Tensor] | None,
    image_shape: tuple[int, int] | None,
) -> Dataset:
    return Dataset(
        name=str(path),
        train=splits[0],
        validation=splits[1],
        test=splits[2],
        train_labels=None if labels is None else labels[0],
        validation_labels=None if labels is None else labels[1],
        test_labels=None if labels is None else labels[2],
        image_shape=image_shape,
        binarize="none",
        support=infer_support(*splits),
        source=str(path.resolve()),
    )


def _load_npz(path: Path, *, seed: int) -> Dataset:
    try:
        archive_size = path.stat().st_size
        archive = zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        raise DataError(f"{path}: not a valid .npz (zip) archive: {first_line(err)}") from err
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    with archive:
        members = {}
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise DataError(
                    f"{path}: member {info.filename!r} is not a .npy array; an .npz holds arrays saved by numpy.savez"
                )
            members[info.filename.removesuffix(".npy")] = info
        keys = list(members)
        label_keys = [f"{s}_labels" for s in SPLIT_KEYS]
        if set(SPLIT_KEYS) <= set(keys) and set(keys) <= set(SPLIT_KEYS) | set(label_keys):
            arrays = {k: _npz_array(archive, members[k], archive_size, path) for k in keys}
        elif len(keys) == 1:
            x, image_shape = _points(_npz_array(archive, members[keys[0]], archive_size, path), f"{path}[{keys[0]}]")
            return _split_single(path, x, image_shape, seed=seed)
        else:
            raise DataError(
                f"{path}: expected keys train, validation, test (optionally train_labels, validation_labels, "
                f"test_labels) or a single array, got keys {', '.join(keys) or '(none)'}"
            )
    points = [_points(arrays[k], f"{path}[{k}]") for k in SPLIT_KEYS]
    dims = [x.shape[1] for x, _ in points]
    if len(set(dims)) > 1:
        sizes = ", ".join(f"{k} {d}" for k, d in zip(SPLIT_KEYS, dims, strict=True))
        raise DataError(f"{path}: the splits have different data dimensions D: {sizes}")
    shapes = {shape for _, shape in points}
    image_shape = shapes.pop() if len(shapes) == 1 else None
    splits = (as_float32(points[0][0]), as_float32(points[1][0]), as_float32(points[2][0]))
    labels: tuple[Tensor, Tensor, Tensor] | None = None
    if any(k in arrays for k in label_keys):
        y = [_labels(arrays.get(k), f"{path}[{k}]", len(x)) for k, (x, _) in zip(label_keys, points, strict=True)]
        labels = (y[0], y[1], y[2])
    return _dataset(path, splits, labels, image_shape)


def _npz_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int, path: Path) -> np.ndarray:
    """Read one member of an .npz; it holds at most its declared size, and what its compressed bytes can expand to."""
    where = f"{path}[{info.filename.removesuffix('.npy')}]"
    if info.flag_bits & 0x1:
        raise DataError(f"{where}: the archive member is encrypted; save the arrays with numpy.savez")
    packed = min(info.compress_size, archive_size)
    size = info.file_size
    if info.compress_type == zipfile.ZIP_STORED:
        size = min(size, packed)
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        size = min(size, packed * _DEFLATE_MAX_RATIO)
    try:
        with archive.open(info) as member:
            return _read_npy(member, size, where)
    except _ZIP_ERRORS as err:
        raise DataError(f"{where}: corrupt archive member: {first_line(err)}") from err
    except OSError as err:
        raise DataError(f"cannot read {where}: {err.strerror or err}") from err


def _labels(array: np.ndarray | None, where: str, n: int) -> Tensor:
    if array is None:
        raise DataError(f"{where} is missing: give labels for all three splits or none")
    if array.dtype.kind not in "iu" or array.shape != (n,):
        raise DataError(f"{where}: expected ({n},) integer labels, got shape {array.shape} dtype {array.dtype}")
    if array.dtype.kind == "u" and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise DataError(f"{where}: label {int(array.max())} does not fit in int64")
    return as_labels(array)
