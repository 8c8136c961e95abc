"""Count data: the ``"count"`` support, ``.h5ad`` and 10x ``.mtx`` files, and the real ``pbmc`` matrix.

Small files are written into ``tmp_path`` with known values and names; every check compares against them (cells
are rows, genes columns, whatever the file's layout). ``pbmc`` is read from Debian's r-cran-sctransform as
``make pbmc`` unpacks it (the tests that need it skip with the reason where it is missing).
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from scipy import sparse

from elbokit.data import PBMC_SHAPE, DataError, Dataset, load, pbmc_folders
from elbokit.data.base import SUPPORTS, infer_support
from elbokit.data.pbmc import PBMC_TOTAL

CELLS, GENES = 10, 4
COUNTS = np.random.default_rng(0).poisson(3.0, size=(CELLS, GENES)).astype(np.int64)  # (cells, genes)
CELL_NAMES = tuple(f"cell{i}" for i in range(CELLS))
GENE_NAMES = tuple(f"gene{j}" for j in range(GENES))


def all_rows(ds: Dataset) -> np.ndarray:
    return torch.cat([ds.train, ds.validation, ds.test]).numpy()


def all_names(ds: Dataset) -> tuple[str, ...]:
    assert ds.point_names is not None
    return ds.point_names["train"] + ds.point_names["validation"] + ds.point_names["test"]


def check_counts(ds: Dataset, counts: np.ndarray = COUNTS, cells: tuple[str, ...] | None = CELL_NAMES) -> None:
    """The splits hold exactly the rows of ``counts``, ~80/10/10, each under its cell's name."""
    assert (len(ds.train), len(ds.validation), len(ds.test), ds.data_dim) == (8, 1, 1, counts.shape[1])
    assert ds.train.dtype == torch.float32 and ds.support == "count" and ds.image_shape is None
    rows = all_rows(ds)
    if cells is None:
        assert ds.point_names is None
        assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, counts.astype(np.float32).tolist()))
    else:
        order = [cells.index(name) for name in all_names(ds)]
        np.testing.assert_array_equal(rows, counts[order].astype(np.float32))


# ---- the support ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "support"),
    [
        ([0.0, 1.0, 1.0], "binary"),
        ([0.0, 0.0], "binary"),
        ([0.0, 0.5, 1.0], "unit"),
        (np.arange(17) / 16, "unit"),  # digits / 16
        ([0.0, 1.0, 2.0, 7.0], "count"),
        ([3.0, 400.0], "count"),
        ([0.0, 1.5, 2.0], "real"),
        ([-1.0, 0.0, 2.0], "real"),
        ([0.0, 2.0, -0.5], "real"),
    ],
)
def test_infer_support(values: list[float], support: str) -> None:
    assert infer_support(torch.tensor(values, dtype=torch.float32)) == support


def test_infer_support_takes_the_narrowest_support_of_all_arrays() -> None:
    binary, counts = torch.tensor([0.0, 1.0]), torch.tensor([0.0, 5.0])
    assert infer_support(binary, counts) == "count" and infer_support(binary, torch.tensor([0.5])) == "unit"
    assert SUPPORTS == ("binary", "unit", "count", "real")


def test_integer_npy_with_values_above_one_is_count_data(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", COUNTS)
    assert load(str(tmp_path / "x.npy")).support == "count"
    np.save(tmp_path / "y.npy", COUNTS / 2.0 + 0.25)
    assert load(str(tmp_path / "y.npy")).support == "real"


# ---- .h5ad ---------------------------------------------------------------------------------------------------
def write_h5ad(path: Path, x: object, **layers: object) -> Path:
    anndata = pytest.importorskip("anndata")
    import pandas as pd

    obs, var = pd.DataFrame(index=list(CELL_NAMES)), pd.DataFrame(index=list(GENE_NAMES))
    anndata.AnnData(X=x, obs=obs, var=var, layers=layers or None).write_h5ad(path)
    return path


@pytest.mark.parametrize("layout", ["dense", "csr", "csc"])
def test_h5ad_x_dense_or_sparse(tmp_path: Path, layout: str) -> None:
    x = {"dense": COUNTS.astype(np.float32), "csr": sparse.csr_matrix(COUNTS), "csc": sparse.csc_matrix(COUNTS)}
    path = write_h5ad(tmp_path / "cells.h5ad", x[layout])
    ds = load(str(path), seed=3)
    check_counts(ds)
    assert ds.feature_names == GENE_NAMES and ds.name == str(path) and ds.source == str(path.resolve())
    assert torch.equal(load(str(path), seed=3).train, ds.train)
    assert load(str(path), seed=4).point_names != ds.point_names
    described = ds.describe()
    assert described["feature_names"] == {"count": GENES, "first": list(GENE_NAMES)} and described["point_names"]


def test_h5ad_layer(tmp_path: Path) -> None:
    normalized = np.log1p(COUNTS / COUNTS.sum(1, keepdims=True) * 1e4).astype(np.float32)
    path = write_h5ad(tmp_path / "cells.h5ad", normalized, counts=sparse.csr_matrix(COUNTS))
    check_counts(load(str(path), layer="counts"))
    assert load(str(path)).support == "real"
    assert "(layer counts)" in load(str(path), layer="counts").source


def test_h5ad_without_anndata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_h5ad(tmp_path / "cells.h5ad", COUNTS.astype(np.float32))
    monkeypatch.setitem(sys.modules, "anndata", None)
    with pytest.raises(DataError, match=r"reading \.h5ad files needs anndata: pip install 'elbokit\[counts\]'"):
        load(str(path))


@pytest.mark.parametrize("name", ["x.npy", "x.mtx"])
def test_layer_is_only_for_h5ad(tmp_path: Path, name: str) -> None:
    np.save(tmp_path / "x.npy", COUNTS)
    scipy.io.mmwrite(tmp_path / "x.mtx", sparse.coo_matrix(COUNTS.T))
    with pytest.raises(DataError, match=r"layer applies to \.h5ad files only"):
        load(str(tmp_path / name), layer="counts")
    with pytest.raises(DataError, match=r"dataset 'digits' takes no layer"):
        load("digits", layer="counts")


# ---- .mtx ----------------------------------------------------------------------------------------------------
def write_tsv(path: Path, rows: list[str]) -> None:
    data = "".join(f"{row}\n" for row in rows).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def test_mtx_10x_layout_is_genes_by_cells(tmp_path: Path) -> None:
    """Cell Ranger v3 names: matrix.mtx.gz, features.tsv.gz (id, name, type) and barcodes.tsv.gz."""
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sparse.coo_matrix(COUNTS.T))  # (genes, cells)
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress((folder / "matrix.mtx").read_bytes()))
    (folder / "matrix.mtx").unlink()
    write_tsv(folder / "features.tsv.gz", [f"ENSG{j}\t{g}\tGene Expression" for j, g in enumerate(GENE_NAMES)])
    write_tsv(folder / "barcodes.tsv.gz", list(CELL_NAMES))
    ds = load(str(folder / "matrix.mtx.gz"), seed=1)
    check_counts(ds)
    assert ds.feature_names == GENE_NAMES and ds.source == str((folder / "matrix.mtx.gz").resolve())


def test_mtx_v2_names_with_a_prefix(tmp_path: Path) -> None:
    """Cell Ranger v2 / GEO: GSM1_matrix.mtx, GSM1_genes.tsv (one column here: its first is the name)."""
    scipy.io.mmwrite(tmp_path / "GSM1_matrix.mtx", sparse.coo_matrix(COUNTS.T))
    write_tsv(tmp_path / "GSM1_genes.tsv", list(GENE_NAMES))
    write_tsv(tmp_path / "GSM1_barcodes.tsv", list(CELL_NAMES))
    ds = load(str(tmp_path / "GSM1_matrix.mtx"))
    check_counts(ds)
    assert ds.feature_names == GENE_NAMES


def test_mtx_alone_has_no_names(tmp_path: Path) -> None:
    scipy.io.mmwrite(tmp_path / "counts.mtx", sparse.coo_matrix(COUNTS.T))
    ds = load(str(tmp_path / "counts.mtx"))
    check_counts(ds, cells=None)
    assert ds.feature_names is None and "feature_names" not in ds.describe()


def test_mtx_real_values_are_real_support(tmp_path: Path) -> None:
    scipy.io.mmwrite(tmp_path / "x.mtx", sparse.coo_matrix(COUNTS.T * 0.5))
    assert load(str(tmp_path / "x.mtx")).support == "real"


# ---- pbmc ----------------------------------------------------------------------------------------------------
def _pbmc_or_skip() -> Dataset:
    if not any((folder / "Rdata.rdb").is_file() for folder in pbmc_folders()):
        pytest.skip("pbmc: r-cran-sctransform is not unpacked (run `make pbmc`, which needs apt-get)")
    pytest.importorskip("rdata", reason="pbmc needs rdata: pip install 'elbokit[counts]'")
    return load("pbmc", seed=0)


def test_pbmc_is_283_cells_by_914_genes_of_umi_counts() -> None:
    ds = _pbmc_or_skip()
    x = all_rows(ds).astype(np.float64)
    assert x.shape == PBMC_SHAPE == (283, 914) and (len(ds.train), len(ds.validation), len(ds.test)) == (227, 28, 28)
    assert ds.support == "count" and np.array_equal(x, np.round(x)) and x.min() == 0
    assert x.sum() == PBMC_TOTAL == 352_187
    assert ds.feature_names is not None and len(set(ds.feature_names)) == 914
    assert ds.feature_names[:2] == ("GPI", "CARD8")
    assert len(set(all_names(ds))) == 283 and "r-cran-sctransform" in ds.source and ds.source.endswith("Rdata.rdb")
    assert torch.equal(load("pbmc", seed=0).test, ds.test) and not torch.equal(load("pbmc", seed=1).test, ds.test)


def test_pbmc_from_data_dir(tmp_path: Path) -> None:
    folder = next((f for f in pbmc_folders() if (f / "Rdata.rdb").is_file()), None)
    if folder is None:
        pytest.skip("pbmc: r-cran-sctransform is not unpacked (run `make pbmc`, which needs apt-get)")
    pytest.importorskip("rdata")
    for name in ("Rdata.rdb", "Rdata.rdx"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    assert all_rows(load("pbmc", data_dir=tmp_path)).sum() == PBMC_TOTAL


def test_pbmc_missing_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Rdata\.rdb and Rdata\.rdx not found in data_dir .*make pbmc"):
        load("pbmc", data_dir=tmp_path)
