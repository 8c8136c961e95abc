"""``elbokit diagnose`` and ``elbokit sweep`` on a small real run: the table, diagnostics.json, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from elbokit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only fight on shared cores


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    rng = np.random.default_rng(0)
    prototypes = rng.random((3, 16))
    x = (rng.random((400, 16)) < prototypes[rng.integers(0, 3, 400)]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    argv = ["fit", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run"), "--epochs", "3",
            "--batch-size", "20", "--latent-dim", "3", "--hidden", "16", "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    return tmp_path / "run"


def test_diagnose_prints_the_table_and_writes_json(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", str(run), "--k", "200", "--limit", "40", "--refine-steps", "60", "--ais", "20"]) == 0
    out = capsys.readouterr().out
    for row in ("ELBO (analytic KL)", "IWAE_10", "log p(x), IS k=200", "AIS 20 steps", "approximation gap",
                "amortization gap", "active units", "I(x; z)", "KL(q(z) || p(z))", "KL per dimension"):  # fmt: skip
        assert row in out, row
    r = json.loads((run / "diagnostics.json").read_text())
    assert r["n"] == 40 and r["k"] == 200 and len(r["kl_per_dim"]) == 3 and 0 <= r["active_units"] <= 3
    # The bounds are ordered as they must be, up to Monte-Carlo error (4 standard errors plus optimisation slack).
    assert r["elbo"] <= r["iwae"][-1]["value"] + 4 * r["iwae"][-1]["stderr"]
    assert r["gaps"]["elbo_optimal"] >= r["gaps"]["elbo_amortized"] - 0.05
    assert r["surgery"]["mutual_information"] <= r["surgery"]["log_n"] + 1e-6
    assert abs(r["surgery"]["average_kl"] - r["kl"]) < 1e-3  # both the analytic mean KL over the same points


def test_diagnose_json_and_a_missing_run(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diagnose", str(run), "--k", "50", "--limit", "10", "--refine-steps", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10
    assert main(["diagnose", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elbokit: error: ") and "does not exist" in err and len(err.strip().splitlines()) == 1


def test_sweep_trains_one_model_per_beta(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(run), "--beta", "0.5,4", "--epochs", "2", "--k", "50", "--limit", "40"]) == 0
    rows = json.loads((run / "sweep.json").read_text())
    assert [r["beta"] for r in rows] == [0.5, 4.0]
    assert rows[0]["rate"] > rows[1]["rate"]  # a larger β buys a smaller rate
    assert (run / "sweep" / "beta-0.5" / "checkpoint.safetensors").exists()
    assert "distortion" in capsys.readouterr().out
    assert main(["sweep", str(run), "--beta", "1,x"]) == 2
