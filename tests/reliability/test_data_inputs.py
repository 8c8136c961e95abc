"""Bad data files: every one is answered by a DataError whose message is one line naming the file and the problem.

Each case of :data:`CASES` writes one bad file (or folder) into ``tmp_path`` and loads it the way a user would;
the message must match the case's regex, hold no line break and name the path. Cases marked ``# was: ...``
failed before the fix (another exception type, a misleading message, or an attempt to allocate what the file
claims); the rest record behaviour that was already right. Files a header claims to be huge are refused before
any memory is allocated for them (checked with ``tracemalloc``, which counts numpy's buffers), and good files of
the less common layouts still load.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from elbokit.data import MNIST_FILES, DataError, load, read_idx
from elbokit.data import idx as idx_module
from elbokit.data.idx import IdxSpec

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = MNIST_FILES
SMALL = IdxSpec(name="small", files=tuple(MNIST_FILES), train_counts=(3, 4, 2), test_counts=(1, 2, 1), validation=3)
GOOD = np.arange(12, dtype=np.float64).reshape(6, 2)
NO_SUCH_USER = "~elbokit-no-such-user"


# ---- writers of .npy / .npz / idx bytes --------------------------------------------------------------------
def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_header(shape: tuple[int, ...], *, descr: str = "<f8", fortran: bool = False, version: int = 1) -> bytes:
    """A valid .npy header (magic included) claiming ``shape``, with no data after it."""
    buffer = io.BytesIO()
    write = np.lib.format.write_array_header_1_0 if version == 1 else np.lib.format.write_array_header_2_0
    write(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], *, compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def patch_central_directory(raw: bytes, *, offset: int, value: int) -> bytes:
    """Overwrite a 2-byte field of the (first) central directory entry: 8 = flags, 10 = compression method."""
    at = raw.index(b"PK\x01\x02") + offset
    return raw[:at] + struct.pack("<H", value) + raw[at + 2 :]


def splits(**extra: bytes) -> dict[str, bytes]:
    return {"train.npy": npy(GOOD), "validation.npy": npy(GOOD), "test.npy": npy(GOOD), **extra}


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in idx format, not gzipped."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_small_mnist(folder: Path) -> Path:
    """Four small valid gzipped idx files with the class counts of :data:`SMALL`."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for images, labels, counts in (
        (TRAIN_IMAGES, TRAIN_LABELS, SMALL.train_counts),
        (TEST_IMAGES, TEST_LABELS, SMALL.test_counts),
    ):
        y = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.uint8)
        x = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        (folder / images).write_bytes(gzip.compress(idx_bytes(x)))
        (folder / labels).write_bytes(gzip.compress(idx_bytes(y)))
    return folder


# ---- the table ---------------------------------------------------------------------------------------------
def file(name: str, data: bytes) -> Callable[[Path], Path]:
    """A writer: ``data`` into ``tmp_path / name``."""

    def write(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write


def load_path(path: Path) -> object:
    return load(str(path))


class Case(NamedTuple):
    id: str
    write: Callable[[Path], Path]  # writes the bad input into tmp_path; returns the path the message must name
    match: str  # regex the DataError message must match
    call: Callable[[Path], object] = load_path  # how the input is loaded


TRUNCATED = npy(GOOD)[:-10]
ABSURD = npy_header((10**12, 10**6)) + bytes(64)  # claims 8e18 bytes; holds 64
CLAIM = r"truncated or corrupt: the header claims shape \(1000000000000, 1000000\) of float64"


def _dangling_symlink(tmp_path: Path) -> Path:
    (tmp_path / "x.npy").symlink_to(tmp_path / "gone.npy")
    return tmp_path / "x.npy"


def _directory(tmp_path: Path) -> Path:
    (tmp_path / "x.npy").mkdir()
    return tmp_path / "x.npy"


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "x.csv")
    return tmp_path / "x.csv"


def _mnist_missing_labels(tmp_path: Path) -> Path:
    (write_small_mnist(tmp_path) / TRAIN_LABELS).unlink()
    return tmp_path


def _mnist_labels_as_images(tmp_path: Path) -> Path:
    write_small_mnist(tmp_path)
    (tmp_path / TRAIN_IMAGES).write_bytes((tmp_path / TRAIN_LABELS).read_bytes())
    return tmp_path / TRAIN_IMAGES


def _load_mnist(path: Path) -> object:
    return load("mnist", data_dir=path if path.is_dir() else path.parent)


# ---- count files: .h5ad, .mtx and pbmc's R data -------------------------------------------------------------
MTX_HEAD = b"%%MatrixMarket matrix coordinate integer general\n"


def h5ad(x: np.ndarray, *, truncate: bool = False, **layers: np.ndarray) -> Callable[[Path], Path]:
    """A writer: an AnnData file of ``x`` (cells, genes) into ``tmp_path / "x.h5ad"`` (cut in half if ``truncate``)."""

    def write(tmp_path: Path) -> Path:
        anndata = pytest.importorskip("anndata")
        path = tmp_path / "x.h5ad"
        anndata.AnnData(X=x, layers=layers or None).write_h5ad(path)
        if truncate:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path

    return write


def mtx_with(names: dict[str, list[str]]) -> Callable[[Path], Path]:
    """A writer: a 4 genes x 10 cells matrix.mtx with the given features / barcodes files beside it."""

    def write(tmp_path: Path) -> Path:
        body = "".join(f"{g + 1} {c + 1} {g + c + 2}\n" for g in range(4) for c in range(10))
        (tmp_path / "matrix.mtx").write_bytes(MTX_HEAD + f"4 10 40\n{body}".encode())
        for name, lines in names.items():
            (tmp_path / name).write_text("".join(f"{line}\n" for line in lines))
        return tmp_path / "matrix.mtx"

    return write


def _pbmc_files(rdx: bytes | None, rdb: bytes) -> Callable[[Path], Path]:
    """A writer: Rdata.rdb (and Rdata.rdx, the real one where ``rdx`` is None) into ``tmp_path``."""

    def write(tmp_path: Path) -> Path:
        if rdx is None:
            from elbokit.data import pbmc_folders

            real = next((f / "Rdata.rdx" for f in pbmc_folders() if (f / "Rdata.rdx").is_file()), None)
            if real is None:
                pytest.skip("pbmc: r-cran-sctransform is not unpacked (run `make pbmc`, which needs apt-get)")
            pytest.importorskip("rdata")
            (tmp_path / "Rdata.rdx").write_bytes(real.read_bytes())
        else:
            (tmp_path / "Rdata.rdx").write_bytes(rdx)
        (tmp_path / "Rdata.rdb").write_bytes(rdb)
        return tmp_path

    return write


def _load_pbmc(path: Path) -> object:
    return load("pbmc", data_dir=path)


COUNTS = np.arange(15, dtype=np.float32).reshape(5, 3)
HUGE_DIMS = struct.pack(">4I", *[2**32 - 1] * 4)  # 2^128 bytes
THREE = ("train", "validation", "test")

CASES = [
    # ---- .npy
    Case(
        "npy-truncated-data",
        file("x.npy", TRUNCATED),
        r"truncated or corrupt: the header claims shape \(6, 2\) of float64 \(96 bytes of data\) "
        r"but the file holds 214 bytes, 86 after the header",
    ),
    Case("npy-truncated-header", file("x.npy", npy(GOOD)[:20]), r"corrupt \.npy header: EOF: reading array header"),
    Case(
        "npy-garbage-header",
        file("x.npy", b"\x93NUMPY\x01\x00\x10\x00{garbage!!!!!!}\n" + bytes(96)),
        r"corrupt \.npy header: Cannot parse header",
    ),
    Case(
        "npy-unknown-version",
        file("x.npy", b"\x93NUMPY\x09\x00\x10\x00" + bytes(100)),
        r"corrupt \.npy header: unknown format version 9\.0",
    ),
    Case("npy-not-npy", file("x.npy", pickle.dumps(GOOD)), r"not a \.npy file \(it does not start with"),
    Case(
        "npy-absurd-shape",
        file("x.npy", ABSURD),
        CLAIM + r" \(8,000,000,000,000,000,000 bytes of data\) but the file holds 192 bytes, 64 after the header",
    ),  # was: MemoryError: Unable to allocate 6.94 EiB
    Case(
        "npy-absurd-shape-format-2",
        file("x.npy", npy_header((10**9, 10**3), version=2) + bytes(64)),
        r"the header claims shape \(1000000000, 1000\) of float64 .* the file holds 192 bytes",
    ),  # was: MemoryError: Unable to allocate 7.28 TiB
    Case(
        "npy-absurd-fortran-order",
        file("x.npy", npy_header((10**12, 10**6), fortran=True) + bytes(64)),
        CLAIM,
    ),  # was: MemoryError: Unable to allocate 6.94 EiB
    Case(
        "npy-shape-overflows-int64",
        file("x.npy", npy_header((2**62, 2**62)) + bytes(64)),
        r"the header claims shape \(4611686018427387904, 4611686018427387904\)",
    ),  # was: DataError "cannot reshape array of size 0 into shape ..."
    Case(
        "npy-negative-shape",
        file("x.npy", npy_header((-1, 2)) + bytes(64)),
        r"corrupt \.npy header: negative size in shape \(-1, 2\)",
    ),  # was: DataError "Expected (-1, 2) = -2 elements, could only read 8 elements"
    Case(
        "npy-complex", file("x.npy", npy(GOOD.astype(np.complex128))), r"expected numeric values, got dtype complex128"
    ),
    Case(
        "npy-structured",
        file("x.npy", npy(np.zeros((4, 2), dtype=[("a", "<f4"), ("b", "<i4")]))),
        r"expected numeric values, got dtype \[\('a', '<f4'\)",
    ),
    Case(
        "npy-datetime",
        file("x.npy", npy(np.zeros((4, 2), dtype="M8[s]"))),
        r"expected numeric values, got dtype datetime64",
    ),
    Case(
        "npy-object-pickled",
        file("x.npy", npy(np.array([[1, None]] * 4, dtype=object), allow_pickle=True)),
        r"holds Python objects \(pickled\)",
    ),
    Case(
        "npy-0d",
        file("x.npy", npy(np.array(3.0))),
        r"expected a 2-D \(N, D\) array or 3-D \(N, H, W\) images, got shape \(\)",
    ),
    Case("npy-1d", file("x.npy", npy(np.arange(5.0))), r"got shape \(5,\)"),
    Case("npy-4d", file("x.npy", npy(np.zeros((3, 2, 2, 2)))), r"got shape \(3, 2, 2, 2\)"),
    Case("npy-zero-rows", file("x.npy", npy(np.zeros((0, 3)))), r"empty array of shape \(0, 3\)"),
    Case("npy-zero-columns", file("x.npy", npy(np.zeros((5, 0)))), r"empty array of shape \(5, 0\)"),
    Case("npy-directory", _directory, r"not a file"),
    Case("npy-dangling-symlink", _dangling_symlink, r"file not found"),
    Case(
        "npy-name-too-long",
        lambda tmp_path: tmp_path / ("a" * 300 + ".npy"),
        r"cannot read .*: File name too long",
    ),  # was: OSError: [Errno 36] File name too long
    Case(
        "npy-line-break-in-name",
        file("bad\nname.npy", b"garbage"),
        r"not a \.npy file .*bad\\nname\.npy$",
    ),  # was: a DataError of two lines
    Case(
        "npy-home-of-no-user",
        lambda tmp_path: Path(NO_SUCH_USER, "x.npy"),
        r"cannot expand ~ in ~elbokit-no-such-user/x\.npy",
    ),  # was: RuntimeError: Could not determine home directory.
    Case(
        "npy-binarize",
        file("x.npy", npy(GOOD)),
        r"binarize does not apply to a file",
        lambda path: load(str(path), binarize="fixed"),
    ),
    # ---- .npz
    Case(
        "npz-PK-garbage",
        file("x.npz", b"PK\x03\x04" + b"garbage" * 10),
        r"not a valid \.npz \(zip\) archive: File is not a zip file",
    ),  # was: zipfile.BadZipFile: File is not a zip file
    Case(
        "npz-truncated",
        file("x.npz", zip_bytes(splits())[:400]),
        r"not a valid \.npz \(zip\) archive",
    ),  # was: zipfile.BadZipFile: File is not a zip file
    Case(
        "npz-bad-crc",
        file("x.npz", zip_bytes({"x.npy": npy(GOOD)}).replace(npy(GOOD)[-8:], bytes(7) + b"\x01", 1)),
        r"\[x\]: corrupt archive member: Bad CRC-32",
    ),  # was: zipfile.BadZipFile: Bad CRC-32 for file 'x.npy'
    Case(
        "npz-encrypted",
        file("x.npz", patch_central_directory(zip_bytes({"x.npy": npy(GOOD)}), offset=8, value=1)),
        r"\[x\]: the archive member is encrypted",
    ),  # was: RuntimeError: File 'x.npy' is encrypted, password required for extraction
    Case(
        "npz-unknown-compression",
        file("x.npz", patch_central_directory(zip_bytes({"x.npy": npy(GOOD)}), offset=10, value=99)),
        r"\[x\]: corrupt archive member: .*compression",
    ),  # was: NotImplementedError: That compression method is not supported
    Case(
        "npz-pickle-member",
        file("x.npz", zip_bytes({"x": pickle.dumps(GOOD)})),
        r"member 'x' is not a \.npy array",
    ),  # was: DataError "expected numeric values, got dtype |S246"
    Case(
        "npz-pickle-in-npy-member",
        file("x.npz", zip_bytes({"x.npy": pickle.dumps(GOOD)})),
        r"\[x\]: corrupt \.npy header: the magic string is not correct",
    ),  # was: DataError "expected numeric values, got dtype |S246"
    Case(
        "npz-object-member",
        file("x.npz", zip_bytes({"x.npy": npy(np.array([None] * 4), allow_pickle=True)})),
        r"\[x\] holds Python objects \(pickled\)",
    ),
    Case(
        "npz-missing-keys",
        file("x.npz", zip_bytes({"train.npy": npy(GOOD), "test.npy": npy(GOOD)})),
        r"expected keys train, validation, test .* got keys train, test$",
    ),
    Case("npz-no-members", file("x.npz", zip_bytes({})), r"got keys \(none\)"),
    Case(
        "npz-non-npy-member",
        file("x.npz", zip_bytes(splits(**{"readme.txt": b"hello"}))),
        r"member 'readme\.txt' is not a \.npy array",
    ),  # was: DataError "expected keys ..., got keys train, validation, test, readme.txt"
    Case("npz-absurd-member", file("x.npz", zip_bytes({"x.npy": ABSURD})), r"\[x\]: " + CLAIM),
    # was: MemoryError: Unable to allocate 6.94 EiB
    Case(
        "npz-absurd-member-deflated",
        file("x.npz", zip_bytes({"x.npy": npy_header((10**6, 10**3)) + bytes(4096)}, compression=zipfile.ZIP_DEFLATED)),
        r"\[x\]: truncated or corrupt: the header claims shape \(1000000, 1000\)",
    ),  # was: DataError "holds Python objects (pickled)", after allocating 8 GB
    Case(
        "npz-truncated-member",
        file("x.npz", zip_bytes({"x.npy": TRUNCATED})),
        r"\[x\]: truncated or corrupt: the header claims shape \(6, 2\)",
    ),  # was: DataError "holds Python objects (pickled)"
    Case(
        "npz-garbage-member",
        file("x.npz", zip_bytes({"x.npy": b"\x93NUMPY garbage"})),
        r"\[x\]: corrupt \.npy header",
    ),  # was: DataError "holds Python objects (pickled)"
    Case(
        "npz-float-labels",
        file("x.npz", zip_bytes(splits(**{f"{s}_labels.npy": npy(np.zeros(6)) for s in THREE}))),
        r"\[train_labels\]: expected \(6,\) integer labels",
    ),
    Case(
        "npz-uint64-labels",
        file("x.npz", zip_bytes(splits(**{f"{s}_labels.npy": npy(np.full(6, 2**64 - 1, np.uint64)) for s in THREE}))),
        r"\[train_labels\]: label 18446744073709551615 does not fit in int64",
    ),  # was: loaded; the labels silently became -1
    # ---- .csv
    Case("csv-ragged", file("x.csv", b"1,2\n3,4\n5\n6,7\n"), r", line 3: 1 values, expected 2"),
    Case("csv-not-utf8", file("x.csv", b"1,2\n3,\xff\xfe4\n5,6\n"), r"not UTF-8 text \(invalid start byte at byte 6\)"),
    Case("csv-utf16", file("x.csv", "1,2\n3,4\n5,6\n".encode("utf-16")), r"not UTF-8 text"),
    Case("csv-header-only", file("x.csv", b"x,y\n"), r"no data rows"),
    Case(
        "csv-nan-text",
        file("x.csv", b"x,y\n1,2\n3,nan\n5,6\n"),
        r"1 NaN or inf values, the first in row 1 \(line 3\)",
    ),
    Case(
        "csv-overflows-float32",
        file("x.csv", b"1,2\n3,1e39\n5,6\n"),
        r"1 NaN or inf values, the first in row 1 \(line 2\)",
    ),
    Case("csv-semicolons", file("x.csv", b"1;2\n3;4\n5;6\n"), r", line 2: non-numeric value '3;4'"),
    Case("csv-fifo", _fifo, r"not a file"),
    # ---- idx files and MNIST folders
    Case(
        "idx-wrong-magic",
        file("labels", b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00"),
        r"corrupt idx file .*: bad magic number 01020801",
        read_idx,
    ),
    Case(
        "idx-truncated",
        file("images", idx_bytes(np.zeros((3, 4), np.uint8))[:-3]),
        r"9 data bytes, shape \(3, 4\) needs 12",
        read_idx,
    ),
    Case(
        "idx-dims-mismatch",
        file("images", b"\x00\x00\x08\x02" + struct.pack(">II", 3, 5) + bytes(12)),
        r"12 data bytes, shape \(3, 5\) needs 15",
        read_idx,
    ),
    Case(
        "idx-huge-dims",
        file("images", b"\x00\x00\x08\x04" + HUGE_DIMS + bytes(12)),
        r"needs 340282366604025813516997721482669850625$",
        read_idx,
    ),  # was: DataError "... needs -17179869183" (int64 overflow)
    Case(
        "idx-gz-huge-dims",
        file("images.gz", gzip.compress(b"\x00\x00\x08\x04" + HUGE_DIMS)),
        r"needs 340282366604025813516997721482669850625 bytes, more than its \d+ gzipped bytes hold",
        read_idx,
    ),  # was: DataError "... needs -17179869183" (int64 overflow)
    Case(
        "idx-gz-truncated",
        file("images.gz", gzip.compress(idx_bytes(np.zeros((30, 4), np.uint8)))[:20]),
        r"corrupt idx file .*: Compressed file ended",
        read_idx,
    ),
    Case(
        "idx-gz-trailing-bytes",
        file("images.gz", gzip.compress(idx_bytes(np.zeros((3, 4), np.uint8)) + bytes(5))),
        r"17 data bytes, shape \(3, 4\) needs 12",
        read_idx,
    ),
    Case(
        "mnist-missing-a-file",
        _mnist_missing_labels,
        r"MNIST files missing from data_dir .*: train-labels-idx1-ubyte\.gz$",
        _load_mnist,
    ),
    Case(
        "mnist-labels-as-images",
        _mnist_labels_as_images,
        r"expected magic 2051, shape \(9, 28, 28\); got magic 2049, shape \(9,\)",
        _load_mnist,
    ),
    Case(
        "mnist-home-of-no-user",
        lambda tmp_path: Path(NO_SUCH_USER, "mnist"),
        r"cannot expand ~ in ~elbokit-no-such-user/mnist",
        lambda path: load("mnist", data_dir=path),
    ),  # was: RuntimeError: Could not determine home directory.
    # ---- count matrices: .h5ad
    Case("h5ad-not-hdf5", file("x.h5ad", b"not an HDF5 file\n" * 8), r"not a readable \.h5ad file: .*signature"),
    Case("h5ad-truncated", h5ad(COUNTS, truncate=True), r"not a readable \.h5ad file: .*truncated file"),
    Case(
        "h5ad-missing-layer",
        h5ad(COUNTS, counts=COUNTS, spliced=COUNTS),
        r"x\.h5ad: no layer 'raw'; its layers: counts, spliced$",
        lambda path: load(str(path), layer="raw"),
    ),
    Case(
        "h5ad-nan",
        h5ad(np.where(COUNTS == 7, np.nan, COUNTS)),
        r"x\.h5ad\[X\]: 1 NaN or inf values, the first in row 2",
    ),
    Case("h5ad-all-zero", h5ad(np.zeros((5, 3), np.float32)), r"\[X\]: every value of the \(5, 3\) matrix is 0"),
    Case("h5ad-no-genes", h5ad(np.zeros((5, 0), np.float32)), r"\[X\]: empty matrix of shape \(5, 0\)"),
    Case("h5ad-two-cells", h5ad(COUNTS[:2]), r"need at least 3 cells \(rows\) .* got 2"),
    # ---- count matrices: .mtx
    Case(
        "mtx-wrong-header",
        file("x.mtx", b"%MatrixMarket matrix coordinate integer general\n1 1 1\n1 1 2\n"),
        r"not a Matrix Market file: the first line must start with '%%MatrixMarket', got '%MatrixMarket matrix",
    ),
    Case(
        "mtx-bad-header-field",
        file("x.mtx", b"%%MatrixMarket matrix coordinate counts general\n1 1 1\n1 1 2\n"),
        r"malformed Matrix Market file: .*header",
    ),
    Case("mtx-truncated", file("x.mtx", MTX_HEAD + b"3 4 5\n1 1 2\n"), r"malformed Matrix Market file: Truncated"),
    Case("mtx-non-numeric", file("x.mtx", MTX_HEAD + b"3 4 1\n1 1 x\n"), r"malformed .*Invalid integer value"),
    Case("mtx-out-of-bounds", file("x.mtx", MTX_HEAD + b"3 4 1\n9 1 2\n"), r"malformed .*out of bounds"),
    Case(
        "mtx-complex",
        file("x.mtx", b"%%MatrixMarket matrix coordinate complex general\n1 1 1\n1 1 2 3\n"),
        r"expected numeric values, got dtype complex128",
    ),
    Case("mtx-all-zero", file("x.mtx", MTX_HEAD + b"4 10 0\n"), r"every value of the \(10, 4\) matrix is 0"),
    Case("mtx-empty", file("x.mtx", MTX_HEAD + b"0 0 0\n"), r"empty matrix of shape \(0, 0\)"),
    Case("mtx-two-cells", file("x.mtx", MTX_HEAD + b"4 2 1\n1 1 2\n"), r"need at least 3 cells .* got 2"),
    Case("mtx-gz-corrupt", file("matrix.mtx.gz", b"\x1f\x8b\x08\x00garbage"), r"cannot read .*matrix\.mtx\.gz: "),
    Case(
        "mtx-features-too-short",
        mtx_with({"features.tsv": ["a\tA", "b\tB", "c\tC"]}),
        r"features\.tsv: 3 lines for the 4 rows \(genes\) of .*matrix\.mtx",
    ),
    Case(
        "mtx-barcodes-too-long",
        mtx_with({"genes.tsv": ["A", "B", "C", "D"], "barcodes.tsv": [f"c{i}" for i in range(11)]}),
        r"barcodes\.tsv: 11 lines for the 10 columns \(cells\) of .*matrix\.mtx",
    ),
    # ---- pbmc's R lazy-load database
    Case(
        "pbmc-missing",
        lambda tmp_path: tmp_path,
        r"Rdata\.rdb and Rdata\.rdx not found in data_dir .*make pbmc",
        _load_pbmc,
    ),
    Case(
        "pbmc-corrupt-index",
        _pbmc_files(b"not an rds file", b""),
        r"Rdata\.rdx: not a readable R lazy-load index",
        _load_pbmc,
    ),
    Case("pbmc-truncated-database", _pbmc_files(None, bytes(100)), r"Rdata\.rdb: truncated: object 'pbmc'", _load_pbmc),
    Case(
        "pbmc-corrupt-record",
        _pbmc_files(None, bytes(4) + b"not zlib" * 20_000),
        r"Rdata\.rdb: object 'pbmc': corrupt compressed record",
        _load_pbmc,
    ),
]


def shown(path: Path) -> str:
    """``path`` as a DataError shows it: line breaks escaped."""
    return str(path).replace("\n", "\\n")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_one_line_data_error_naming_it(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idx_module, "MNIST_SPEC", SMALL)
    path = case.write(tmp_path)
    with pytest.raises(DataError) as err:
        case.call(path)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "\n" not in message
    assert re.search(case.match, message), f"{message!r} does not match {case.match!r}"
    assert shown(path) in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
@pytest.mark.parametrize("name", ["x.npy", "x.npz", "x.csv"])
def test_unreadable_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"1,2\n3,4\n5,6\n")
    path.chmod(0)
    try:
        with pytest.raises(DataError, match="Permission denied") as err:  # was: PermissionError
            load(str(path))
    finally:
        path.chmod(0o600)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ---- nothing absurd is allocated ---------------------------------------------------------------------------
def peak_bytes(call: Callable[[], object]) -> int:
    """The most memory (bytes, numpy's buffers included) traced while ``call`` raises its DataError."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MiB = 1 << 20


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_claimed_shape_larger_than_the_file_is_refused_before_allocating(tmp_path: Path, suffix: str) -> None:
    """A 200-byte file whose header claims (1e6, 50) float64 = 400 MB: numpy used to allocate the 400 MB."""
    raw = npy_header((10**6, 50)) + bytes(72)
    path = tmp_path / f"x{suffix}"
    path.write_bytes(raw if suffix == ".npy" else zip_bytes({"x.npy": raw}))
    assert peak_bytes(lambda: load(str(path))) < 8 * MiB


def test_a_gzip_bomb_idx_file_is_refused_without_inflating_it(tmp_path: Path) -> None:
    """An idx header for 10 bytes, then 32 MiB of zeros (32 KiB gzipped): it used to be inflated whole."""
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 10) + bytes(32 * MiB)))
    assert peak_bytes(lambda: read_idx(path)) < 8 * MiB


# ---- controls: good files of the less common layouts load ---------------------------------------------------
@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(GOOD),
        GOOD.astype(">f8"),
        GOOD.astype(">i4"),
        GOOD > 3,
        GOOD.astype(np.float16),
        np.arange(6 * 3 * 2, dtype=np.uint8).reshape(6, 3, 2),
    ],
    ids=["fortran-order", "big-endian-float", "big-endian-int", "bool", "float16", "images-3d"],
)
def test_good_npy_loads(tmp_path: Path, array: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", array)
    ds = load(str(tmp_path / "x.npy"))
    rows = np.concatenate([ds.train.numpy(), ds.validation.numpy(), ds.test.numpy()])  # permuted
    expected = array.reshape(len(array), -1).astype(np.float32)
    np.testing.assert_array_equal(sorted_rows(rows), sorted_rows(expected))


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


def test_npy_format_2_loads(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, GOOD, version=(2, 0))
    assert load(str(path)).train.shape == (4, 2)


@pytest.mark.parametrize("compressed", [False, True], ids=["savez", "savez_compressed"])
def test_npz_with_the_three_splits_and_labels_loads(tmp_path: Path, compressed: bool) -> None:
    save = np.savez_compressed if compressed else np.savez
    sizes = {"train": 5, "validation": 2, "test": 3}
    x = {s: np.full((n, 2), i, dtype=np.float32) for i, (s, n) in enumerate(sizes.items())}
    y = {f"{s}_labels": np.arange(len(v)) for s, v in x.items()}
    save(tmp_path / "d.npz", **x, **y)  # type: ignore[arg-type]
    ds = load(str(tmp_path / "d.npz"))
    assert torch.equal(ds.validation, torch.ones(2, 2)) and torch.equal(ds.test_labels, torch.arange(3))  # type: ignore[arg-type]


def test_highly_compressed_npz_is_not_mistaken_for_a_bomb(tmp_path: Path) -> None:
    """8 MB of zeros deflate ~1000:1, close to deflate's limit of 1032:1 that bounds a member's size."""
    np.savez_compressed(tmp_path / "zeros.npz", x=np.zeros((10_000, 100)))
    assert load(str(tmp_path / "zeros.npz")).train.shape == (8000, 100)
