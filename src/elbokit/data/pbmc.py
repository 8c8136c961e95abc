r"""``pbmc``: the 914 genes x 283 cells UMI matrix of peripheral blood mononuclear cells (10x Genomics) shipped as
the example data of the R package sctransform (Hafemeister & Satija 2019), read from Debian's package
``r-cran-sctransform`` without R: its lazy-load database ``data/Rdata.rdb`` with the index ``Rdata.rdx``
(:func:`read_rdb`, by the ``rdata`` package of the ``counts`` extra).

References:
    C. Hafemeister, R. Satija. Normalization and variance stabilization of single-cell RNA-seq data using
    regularized negative binomial regression. Genome Biology 20, 296 (2019).
"""

from __future__ import annotations

import bz2
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

from elbokit.data.base import DataError, Dataset, expand_user, first_line
from elbokit.data.counts import COUNTS_HOW_TO, CountMatrix, _dense, _names, _strings, count_dataset
from elbokit.data.fetch import cache_root
from elbokit.data.registry import register

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

_RDB_CODECS: dict[bytes, Callable[[bytes], bytes]] = {
    b"Z": lzma.decompress,
    b"2": bz2.decompress,
    b"1": zlib.decompress,
    b"0": bytes,
}
# R's lazy-load records: compress=TRUE is zlib; compress=2 / 3 put a type byte first ('2' bzip2, 'Z' xz, '0' none)


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
            raise DataError(f"{where}: corrupt dgCMatrix: {first_line(err)}") from err
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
        raise DataError(f"{rdx}: not a readable R lazy-load index: {first_line(err)}") from err
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
        raise DataError(f"{rdb}: object {name!r}: corrupt compressed record: {first_line(err)}") from err
    if len(raw) != size:
        raise DataError(f"{rdb}: object {name!r}: {len(raw)} bytes after decompression, the record says {size}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = parse_data(raw, extension=".rds")
            constructors = {**rdata.conversion.DEFAULT_CLASS_MAP, "dgCMatrix": _dgcmatrix}
            return rdata.conversion.convert(parsed, constructors)
    except Exception as err:  # rdata raises many types on a corrupt serialization
        raise DataError(f"{rdb}: object {name!r}: not a readable R serialization: {first_line(err)}") from err
