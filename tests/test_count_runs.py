"""Count data through the command line: the real ``pbmc`` matrix trained with a ZINB likelihood, evaluated and
reported; an ``.h5ad`` file read from a layer; the likelihood ``auto`` picks for counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from elbokit.cli import main
from elbokit.data import pbmc_folders

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--epochs", "3", "--hidden", "32", "--activation", "relu", "--quiet", "--device", "cpu"]


def _pbmc_available() -> bool:
    return any((folder / "Rdata.rdb").exists() for folder in pbmc_folders())


@pytest.mark.skipif(not _pbmc_available(), reason="pbmc needs Debian's r-cran-sctransform: run `make pbmc`")
def test_pbmc_with_zinb_trains_evaluates_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "pbmc"
    assert main(["fit", "--data", "pbmc", "--likelihood", "zinb", "--latent-dim", "10", *SMALL,
                 "--out", str(run)]) == 0  # fmt: skip
    config = json.loads((run / "config.json").read_text())
    assert config["likelihood"] == "zinb"
    described = json.loads((run / "dataset.json").read_text())
    assert described["support"] == "count" and described["data_dim"] == 914
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "100", "--limit", "8"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert math.isfinite(evaluation["log_px"]) and evaluation["n"] == 8
    assert evaluation["bits_per_dim"] is None  # counts are not a code over binary pixels
    # log p(x) >= the ELBO up to the ELBO's one-draw noise (a few nats at this size) and the estimate's error
    assert evaluation["log_px"] > evaluation["elbo"] - 10.0
    assert main(["report", str(run), "--limit", "20", "--k", "50"]) == 0
    page = (run / "report.html").read_text()
    assert "Mean and variance of each gene" in page


def _write_h5ad(path: Path) -> np.ndarray:
    import anndata

    counts = np.random.default_rng(0).poisson(4.0, size=(60, 12)).astype(np.float32)
    counts[:, 0] += 1  # every cell has a count
    normalised = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    adata = anndata.AnnData(X=normalised)
    adata.layers["counts"] = counts
    adata.write_h5ad(path)
    return counts


def test_h5ad_layer_of_counts_gets_a_count_likelihood_and_x_a_gaussian(tmp_path: Path) -> None:
    pytest.importorskip("anndata")
    data = tmp_path / "cells.h5ad"
    _write_h5ad(data)
    common = ["fit", "--data", str(data), "--latent-dim", "2", *SMALL]
    assert main([*common, "--layer", "counts", "--out", str(tmp_path / "counts")]) == 0
    config = json.loads((tmp_path / "counts" / "config.json").read_text())
    assert (config["likelihood"], config["layer"]) == ("nb", "counts")  # auto: NB for counts
    assert main([*common, "--out", str(tmp_path / "x")]) == 0
    assert json.loads((tmp_path / "x" / "config.json").read_text())["likelihood"] == "gaussian:learned"
    # A resumed run keeps its layer.
    assert main(["fit", "--out", str(tmp_path / "counts"), "--resume", "--layer", "other", "--epochs", "4"]) == 2
    assert main(["fit", "--out", str(tmp_path / "counts"), "--resume", "--epochs", "4", "--quiet"]) == 0


def test_a_missing_layer_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("anndata")
    data = tmp_path / "cells.h5ad"
    _write_h5ad(data)
    out = tmp_path / "run"
    assert main(["fit", "--data", str(data), "--layer", "spliced", *SMALL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elbokit: error: ") and "spliced" in err and "counts" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
