r"""Count matrices, cells x genes (single-cell RNA-seq UMI counts): ``.h5ad`` and ``.mtx`` files (the real ``pbmc``
matrix is in :mod:`elbokit.data.pbmc`).

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
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from elbokit.data.base import (
    SPLITS,
    DataError,
    Dataset,
    as_float32,
    check_finite,
    first_line,
    infer_support,
    permutation_split,
)

COUNTS_HOW_TO = "pip install 'elbokit[counts]'"

_MTX_HEADER = "%%MatrixMarket"


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
        raise DataError(f"{path}: not a readable .h5ad file: {first_line(err)}") from err
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
        raise DataError(f"{path}: malformed Matrix Market file: {first_line(err)}") from err
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
        raise DataError(f"cannot read {path}: {first_line(err)}") from err


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
        raise DataError(f"cannot read {tsv}: {first_line(err)}") from err
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
