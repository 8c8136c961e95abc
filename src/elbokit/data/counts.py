r"""Count matrices, cells x genes (single-cell RNA-seq UMI counts): ``.h5ad`` and ``.mtx`` files, and ``pbmc``.

* ``.h5ad`` (AnnData, read by the optional ``anndata`` package: ``pip install 'elbokit[counts]'``): ``X``, dense or
  scipy sparse, or a named layer (``load(path, layer="counts")``). AnnData stores cells as rows (``obs``) and genes
  as columns (``var``), so a row is one data point; ``obs_names`` and ``var_names`` become the point and feature
  names.
* ``.mtx`` / ``.mtx.gz`` (Matrix Market, as Cell Ranger writes it): 10x stores genes as rows and cells as columns,
  so the matrix is always transposed to cells x genes; the file's rows are taken to be genes whatever its shape.
  Beside ``<prefix>matrix.mtx[.gz]`` (or any ``.mtx``), ``<prefix>features.tsv[.gz]`` (or ``genes.tsv``) gives the
  gene names (its second column where there is one, else its first) and ``<prefix>barcodes.tsv[.gz]`` the cell
  names; each must have one line per gene (row) or cell (column).

Either is densified to (N cells, D genes) float32, split by a seeded permutation ~80/10/10, and its ``support``
inferred: ``"count"`` for non-negative integers (some > 1), ``"real"`` for non-integer or negative values.

``pbmc`` is the 914 genes x 283 cells UMI matrix of peripheral blood mononuclear cells (10x Genomics) shipped as
the example data of the R package sctransform (Hafemeister & Satija 2019), read from Debian's package
``r-cran-sctransform`` without R: its lazy-load database ``data/Rdata.rdb`` with the index ``Rdata.rdx``.

References:
    C. Hafemeister, R. Satija. Normalization and variance stabilization of single-cell RNA-seq data using
    regularized negative binomial regression. Genome Biology 20, 296 (2019).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import struct
import sys
import warnings
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from elbokit.data.base import (
    SPLITS,
    DataError,
    Dataset,
    as_float32,
    check_finite,
    expand_user,
    infer_support,
    permutation_split,
)
from elbokit.data.fetch import cache_root
from elbokit.data.registry import register

COUNTS_HOW_TO = "pip install 'elbokit[counts]'"

PBMC_PACKAGE = "r-cran-sctransform"
"""The Debian package whose R data holds ``pbmc``."""

PBMC_SHAPE = (283, 914)
"""(cells, genes) of ``pbmc``."""

PBMC_TOTAL = 352_187
"""The sum of all counts of ``pbmc`` (r-cran-sctransform 0.3.5)."""

PBMC_TREE = Path("usr/lib/R/site-library/sctransform/data")
"""Where ``Rdata.rdb`` lies inside the package's extracted tree (``dpkg -x r-cran-sctransform_*.deb DIR``)."""

PBMC_SYSTEM_DIRS = (Path("/usr/lib/R/site-library/sctransform/data"), Path("/usr/lib/R/library/sctransform/data"))
"""Where an installed r-cran-sctransform keeps its data (read at each load)."""

PBMC_HOW_TO = (
    f"run `make pbmc` (apt-get download {PBMC_PACKAGE} && dpkg -x r-cran-sctransform_*.deb "
    f"{Path(sys.prefix) / 'share' / 'elbokit' / 'pbmc'}), apt-get install {PBMC_PACKAGE}, or pass --data-dir DIR "
    "holding Rdata.rdb and Rdata.rdx (or the extracted package)"
)

_MTX_HEADER = "%%MatrixMarket"
_RDB_CODECS: dict[bytes, Callable[[bytes], bytes]] = {
    b"Z": lzma.decompress,
    b"2": bz2.decompress,
    b"1": zlib.decompress,
    b"0": bytes,
}
# R's lazy-load records: compress=TRUE is zlib; compress=2 / 3 put a type byte first ('2' bzip2, 'Z' xz, '0' none)


class CountMatrix(NamedTuple):
    """A matrix read from a file, before it is split.

    Attributes:
        x: (N, D) float32, one row per cell.
        point_names: N cell names, or ``None``.
        feature_names: D gene names, or ``None``.
    """

    x: np.ndarray
    point_names: tuple[str, ...] | None
    feature_names: tuple[str, ...] | None


# ---- .h5ad ---------------------------------------------------------------------------------------------------
def read_h5ad(path: str | Path, *, layer: str | None = None) -> CountMatrix:
    """The (cells, genes) matrix ``X`` (or ``layers[layer]``) of an AnnData ``.h5ad`` file, with its names.

    Raises:
        DataError: anndata is not installed, the file is not a readable h5ad file, the layer does not exist
            (naming those that do), X is missing, or the values are not numeric, finite or non-empty.
    """
    path = Path(path)
    try:
        import anndata
    except ImportError as err:
        raise DataError(f"reading .h5ad files needs anndata: {COUNTS_HOW_TO} (for {path})") from err
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:  # h5py and anndata raise many types (OSError, KeyError, AnnDataReadError, ...)
        raise DataError(f"{path}: not a readable .h5ad file: {_first_line(err)}") from err
    if layer is None:
        matrix, where = adata.X, f"{path}[X]"
        if matrix is None:
            raise DataError(f"{path}: X is empty; pass layer=NAME, one of {_names(adata.layers)}")
    else:
        if layer not in adata.layers:
            raise DataError(f"{path}: no layer {layer!r}; its layers: {_names(adata.layers)}")
        matrix, where = adata.layers[layer], f"{path}[layers/{layer}]"
    x = _dense(matrix, where)
    return CountMatrix(x, _strings(adata.obs_names), _strings(adata.var_names))


def _names(keys: Any) -> str:
    return ", ".join(map(str, keys)) or "(none)"


def _strings(index: Any) -> tuple[str, ...]:
    return tuple(str(name) for name in index)


def _dense(matrix: Any, where: str) -> np.ndarray:
    """A numeric (N, D) matrix, dense or scipy sparse, as a checked dense float32 array."""
    from scipy import sparse

    dtype = getattr(matrix, "dtype", None)
    if dtype is None or np.dtype(dtype).kind not in "biuf":
        raise DataError(f"{where}: expected numeric values, got dtype {dtype}")
    shape = tuple(getattr(matrix, "shape", ()))
    if len(shape) != 2:
        raise DataError(f"{where}: expected a 2-D (cells, genes) matrix, got shape {shape}")
    if 0 in shape:
        raise DataError(f"{where}: empty matrix of shape {shape}")
    try:
        with np.errstate(over="ignore"):  # values beyond float32's range become inf, reported just below
            x = matrix.astype(np.float32).toarray() if sparse.issparse(matrix) else np.asarray(matrix, np.float32)
    except MemoryError as err:
        raise DataError(f"{where}: a dense {shape} float32 matrix does not fit in memory") from err
    x = np.ascontiguousarray(x)
    check_finite(x, where)
    if not x.any():
        raise DataError(f"{where}: every value of the {shape} matrix is 0")
    return x


# ---- .mtx ----------------------------------------------------------------------------------------------------
def is_mtx(path: Path) -> bool:
    """Whether ``path`` names a Matrix Market file: ``.mtx`` or ``.mtx.gz``."""
    name = path.name.lower()
    return name.endswith(".mtx") or name.endswith(".mtx.gz")


def read_mtx(path: str | Path) -> CountMatrix:
    """A 10x Matrix Market file (genes x cells) as (cells, genes), with the names of the files beside it.

    Raises:
        DataError: a wrong header, a malformed or truncated body, complex values, an empty or all-zero matrix, or a
            features / barcodes file whose length does not match; the message names the file.
    """
    from scipy import io as scipy_io

    path = Path(path)
    first = _first_text_line(path)
    if not first.startswith(_MTX_HEADER):
        raise DataError(f"{path}: not a Matrix Market file: the first line must start with {_MTX_HEADER!r}, "
                        f"got {first[:60]!r}")  # fmt: skip
    try:
        matrix = scipy_io.mmread(path)
    except (ValueError, EOFError, OSError, zlib.error) as err:
        raise DataError(f"{path}: malformed Matrix Market file: {_first_line(err)}") from err
    except MemoryError as err:
        raise DataError(f"{path}: the matrix does not fit in memory") from err
    x = _dense(matrix.T, f"{path}")  # 10x: genes x cells -> cells x genes
    n_cells, n_genes = x.shape
    stem = path.name[: -len(".gz")] if path.name.lower().endswith(".gz") else path.name
    prefix = stem[: -len("matrix.mtx")] if stem.lower().endswith("matrix.mtx") else ""
    features = _beside(path, prefix, ("features.tsv", "genes.tsv"))
    barcodes = _beside(path, prefix, ("barcodes.tsv",))
    genes = None if features is None else _tsv_column(features, n_genes, "rows (genes)", path, column=1)
    cells = None if barcodes is None else _tsv_column(barcodes, n_cells, "columns (cells)", path, column=0)
    return CountMatrix(x, cells, genes)


def _first_text_line(path: Path) -> str:
    try:
        with _open_text(path) as f:
            return f.readline(200).rstrip("\r\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {path}: {_first_line(err)}") from err


def _open_text(path: Path) -> Any:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _beside(path: Path, prefix: str, names: tuple[str, ...]) -> Path | None:
    """The first of ``<prefix><name>[.gz]`` beside ``path`` that exists, else ``None``."""
    for name in names:
        for candidate in (f"{prefix}{name}", f"{prefix}{name}.gz"):
            if (path.parent / candidate).is_file():
                return path.parent / candidate
    return None


def _tsv_column(tsv: Path, expected: int, what: str, matrix: Path, *, column: int) -> tuple[str, ...]:
    """One name per line of a tab-separated file: field ``column`` where the line has it, else the first."""
    try:
        with _open_text(tsv) as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {tsv}: {_first_line(err)}") from err
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) != expected:
        raise DataError(f"{tsv}: {len(lines)} lines for the {expected} {what} of {matrix}")
    fields = [line.split("\t") for line in lines]
    return tuple(f[column] if len(f) > column else f[0] for f in fields)


# ---- the Dataset ---------------------------------------------------------------------------------------------
def count_dataset(name: str, counts: CountMatrix, *, seed: int, source: str) -> Dataset:
    """Split a (cells, genes) matrix ~80/10/10 by a permutation seeded by ``seed``; the names follow their rows."""
    n = len(counts.x)
    if n < 3:
        raise DataError(f"{name}: need at least 3 cells (rows) to make train, validation and test splits, got {n}")
    data = as_float32(counts.x)
    index = permutation_split(n, seed=seed)
    train, validation, test = (data[i] for i in index)
    point_names = None
    if counts.point_names is not None:
        point_names = {s: tuple(counts.point_names[j] for j in i.tolist()) for s, i in zip(SPLITS, index, strict=True)}
    return Dataset(
        name=name,
        train=train,
        validation=validation,
        test=test,
        train_labels=None,
        validation_labels=None,
        test_labels=None,
        image_shape=None,
        binarize="none",
        support=infer_support(train, validation, test),
        source=source,
        feature_names=counts.feature_names,
        point_names=point_names,
    )



def load_h5ad(path: str | Path, *, seed: int = 0, layer: str | None = None) -> Dataset:
    """An AnnData ``.h5ad`` file's ``X`` (or ``layers[layer]``) as a Dataset of cells (see the module docstring)."""
    path = Path(path)
    source = f"{path.resolve()}" + ("" if layer is None else f" (layer {layer})")
    return count_dataset(str(path), read_h5ad(path, layer=layer), seed=seed, source=source)


def load_mtx(path: str | Path, *, seed: int = 0) -> Dataset:
    """A 10x Matrix Market file (genes x cells) as a Dataset of cells (see the module docstring)."""
    path = Path(path)
    return count_dataset(str(path), read_mtx(path), seed=seed, source=str(path.resolve()))


# ---- pbmc ----------------------------------------------------------------------------------------------------
def pbmc_folders(data_dir: str | Path | None = None, cache_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for ``Rdata.rdb``, in order.

    ``data_dir`` alone where given (itself, or the extracted package tree under it); else
    ``<cache>/pbmc`` (``cache_dir``, ``$ELBOKIT_DATA`` or ``~/.cache/elbokit``), ``<sys.prefix>/share/elbokit/pbmc``
    (where ``make pbmc`` extracts the package into the virtual environment), each as itself or holding the
    extracted tree ``usr/lib/R/site-library/sctransform/data``; then :data:`PBMC_SYSTEM_DIRS`.
    """
    if data_dir is not None:
        root = expand_user(data_dir)
        return [root, root / PBMC_TREE]
    roots = [cache_root(cache_dir) / "pbmc", Path(sys.prefix) / "share" / "elbokit" / "pbmc"]
    return [folder for root in roots for folder in (root, root / PBMC_TREE)] + list(PBMC_SYSTEM_DIRS)


@register("pbmc")
def load_pbmc(*, data_dir: str | Path | None = None, seed: int = 0, cache_dir: str | Path | None = None) -> Dataset:
    """283 peripheral blood mononuclear cells x 914 genes of UMI counts (10x Genomics), from sctransform's data.

    Split by a permutation seeded by ``seed`` into 227 / 28 / 28 cells (~80/10/10); ``support`` is ``"count"``,
    ``feature_names`` the genes and ``point_names`` the cell barcodes. The folders searched are
    :func:`pbmc_folders`.

    Raises:
        DataError: ``Rdata.rdb`` / ``Rdata.rdx`` are in none of the folders (saying how to get them), the package
            ``rdata`` is missing, or the files are corrupt.
    """
    folders = pbmc_folders(data_dir, cache_dir)
    found = next((f for f in folders if (f / "Rdata.rdb").is_file() and (f / "Rdata.rdx").is_file()), None)
    if found is None:
        where = "data_dir " + str(folders[0]) if data_dir is not None else ", ".join(map(str, folders))
        raise DataError(f"dataset 'pbmc': Rdata.rdb and Rdata.rdx not found in {where}; {PBMC_HOW_TO}")
    matrix = read_rdb(found, "pbmc")
    if not isinstance(matrix, _SparseCounts):
        raise DataError(f"{found / 'Rdata.rdb'}: object 'pbmc' is not a dgCMatrix (got {type(matrix).__name__})")
    counts = matrix.cells_by_genes(f"{found / 'Rdata.rdb'}[pbmc]")
    version = _description_version(found.parent / "DESCRIPTION")
    source = f"Debian {PBMC_PACKAGE} (R package sctransform {version}): object 'pbmc' of {found / 'Rdata.rdb'}"
    return count_dataset("pbmc", counts, seed=seed, source=source)


def _description_version(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(version unknown)"
    found = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
    return found.group(1) if found else "(version unknown)"


class _SparseCounts(NamedTuple):
    """An R ``dgCMatrix``: column-compressed (genes, cells), with ``Dimnames``."""

    i: np.ndarray  # row index of each value, 0-based
    p: np.ndarray  # (cells + 1,) column pointers
    x: np.ndarray  # the non-zero values
    dim: tuple[int, int]  # (genes, cells)
    row_names: tuple[str, ...] | None
    col_names: tuple[str, ...] | None

    def cells_by_genes(self, where: str) -> CountMatrix:
        from scipy import sparse

        try:
            genes_by_cells = sparse.csc_matrix((self.x, self.i, self.p), shape=self.dim)
            genes_by_cells.check_format(full_check=True)
        except (ValueError, TypeError) as err:
            raise DataError(f"{where}: corrupt dgCMatrix: {_first_line(err)}") from err
        return CountMatrix(_dense(genes_by_cells.T, where), self.col_names, self.row_names)


def _dgcmatrix(obj: Any, attrs: Mapping[str, Any]) -> _SparseCounts:
    """rdata's constructor for an R ``dgCMatrix`` (an S4 object whose slots are its attributes)."""
    names = attrs.get("Dimnames") or [None, None]
    dim = tuple(int(n) for n in np.asarray(attrs["Dim"]).ravel())
    return _SparseCounts(
        i=np.asarray(attrs["i"]),
        p=np.asarray(attrs["p"]),
        x=np.asarray(attrs["x"]),
        dim=(dim[0], dim[1]),
        row_names=None if names[0] is None else _strings(names[0]),
        col_names=None if names[1] is None else _strings(names[1]),
    )


def read_rdb(folder: str | Path, name: str) -> Any:
    """Object ``name`` of the R lazy-load database ``folder/Rdata.rdb`` (index ``Rdata.rdx``), without R.

    The index is an RDS file (a serialized list: ``variables`` maps each name to its (offset, length) in the
    ``.rdb``; ``compressed`` says how each record is compressed). A record is a 4-byte big-endian length of the
    serialization, then its compressed bytes (zlib; for compress = 2 or 3 a type byte first: '2' bzip2, 'Z' xz,
    '0' stored). A ``dgCMatrix`` comes back as a :class:`_SparseCounts`, other objects as rdata converts them.

    Raises:
        DataError: the package ``rdata`` is missing, ``name`` is not in the index, or a file is corrupt.
    """
    folder = Path(folder)
    rdx, rdb = folder / "Rdata.rdx", folder / "Rdata.rdb"
    try:
        import rdata
        from rdata.parser import parse_data
    except ImportError as err:
        raise DataError(f"reading R data ({rdb}) needs rdata: {COUNTS_HOW_TO}") from err
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns of R classes it has no constructor for
            index = rdata.read_rds(rdx)
        variables = index["variables"]
        compressed = int(np.asarray(index["compressed"]).ravel()[0])
    except Exception as err:  # rdata raises many types on a corrupt file
        raise DataError(f"{rdx}: not a readable R lazy-load index: {_first_line(err)}") from err
    if name not in variables:
        raise DataError(f"{rdx}: no object {name!r}; it holds {_names(variables)}")
    offset, length = (int(v) for v in np.asarray(variables[name]).ravel()[:2])
    try:
        with open(rdb, "rb") as f:
            f.seek(offset)
            record = f.read(length)
    except OSError as err:
        raise DataError(f"cannot read {rdb}: {err.strerror or err}") from err
    if len(record) != length or length < 5:
        raise DataError(f"{rdb}: truncated: object {name!r} needs bytes {offset}..{offset + length}")
    (size,) = struct.unpack(">I", record[:4])
    codec: Callable[[bytes], bytes] | None = zlib.decompress
    body = record[4:]
    if compressed != 1:
        codec, body = _RDB_CODECS.get(record[4:5]), record[5:]
    if codec is None:
        raise DataError(f"{rdb}: object {name!r}: unknown compression type {record[4:5]!r}")
    try:
        raw = codec(body)
    except (zlib.error, OSError, lzma.LZMAError, ValueError, EOFError) as err:
        raise DataError(f"{rdb}: object {name!r}: corrupt compressed record: {_first_line(err)}") from err
    if len(raw) != size:
        raise DataError(f"{rdb}: object {name!r}: {len(raw)} bytes after decompression, the record says {size}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parse_data(raw, extension=".rds")
            constructors = {**rdata.conversion.DEFAULT_CLASS_MAP, "dgCMatrix": _dgcmatrix}
            return rdata.conversion.convert(parsed, constructors)
    except Exception as err:  # rdata raises many types on a corrupt serialization
        raise DataError(f"{rdb}: object {name!r}: not a readable R serialization: {_first_line(err)}") from err


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
