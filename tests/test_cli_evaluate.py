"""``elbokit evaluate --proposal`` and ``elbokit diagnose --reference``: the proposal behind each log p(x), what
the run directory records about it, and bad input (exit 2, one line, nothing on disk changed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from elbokit.cli import main
from elbokit.diagnostics.reference import refined_proposal
from elbokit.estimators import log_marginal
from elbokit.models import LinearGaussian

FAST = ["--epochs", "2", "--batch-size", "20", "--latent-dim", "3", "--hidden", "16", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    prototypes = rng.random((3, 16))
    x = (rng.random((300, 16)) < prototypes[rng.integers(0, 3, 300)]).astype(np.float32)
    np.save(folder / "x.npy", x)
    assert main(["fit", "--data", str(folder / "x.npy"), "--out", str(folder / "run"), *FAST]) == 0
    return folder / "run"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("proposal", ["encoder", "refined"])
def test_evaluate_records_its_proposal(
    trained: Path, proposal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", str(trained), "--k", "200", "--limit", "20", "--proposal", proposal, "--json"]
    assert main([*argv, "--refine-steps", "100"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["proposal"] == proposal
    assert json.loads((trained / "evaluation.json").read_text()) == result
    assert result["log_px"] > result["elbo"] and 0 <= result["pareto_k_over_threshold"] <= 20


def test_refined_proposal_is_the_default_and_tighter(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both estimates are stochastic lower bounds of one log p(x); the refined proposal's is the higher (the
    encoder's weights are heavier-tailed), within the two standard errors."""
    assert main(["evaluate", str(trained), "--k", "500", "--limit", "30", "--json"]) == 0
    refined = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(trained), "--k", "500", "--limit", "30", "--proposal", "encoder", "--json"]) == 0
    encoder = json.loads(capsys.readouterr().out)
    assert refined["proposal"] == "refined"
    se = (refined["log_px_stderr"] ** 2 + encoder["log_px_stderr"] ** 2) ** 0.5
    assert refined["log_px"] >= encoder["log_px"] - 4 * se
    assert refined["pareto_k_over_threshold"] <= encoder["pareto_k_over_threshold"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--proposal", "prior"], "--proposal"),
        (["--refine-steps", "0"], "--refine-steps"),
        (["--refine-steps", "x"], "--refine-steps"),
    ],
)
def test_evaluate_bad_proposal_options(
    trained: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(trained)
    assert main(["evaluate", str(trained), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("elbokit: error:") and needle in err and "Traceback" not in err
    assert _snapshot(trained) == before


def test_diagnose_bad_reference(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(trained)
    assert main(["diagnose", str(trained), "--reference", "exact"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reference" in err and "Traceback" not in err
    assert _snapshot(trained) == before


def test_diagnose_reports_the_reference_and_its_reliability(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["diagnose", str(trained), "--k", "200", "--limit", "20", "--refine-steps", "50", "--json"]
    assert main([*argv, "--reference", "ais", "--ais", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    gaps = result["gaps"]
    assert gaps["reference"] == "ais" and 0 <= gaps["unreliable"] <= 20 and "pareto_k_max" in gaps
    assert main(argv) == 0
    default = json.loads(capsys.readouterr().out)["gaps"]
    assert default["reference"] == "is"
    assert main(argv[:-1]) == 0
    assert "log p(x), reference IS" in capsys.readouterr().out


def test_refined_proposal_exact_on_linear_gaussian() -> None:
    """From a mean-field guide on a correlated posterior, the refined proposal is (up to optimisation) the exact
    posterior: log p(x) within Z standard errors at every point, with light-tailed weights; the guide's own
    weights are heavy-tailed and its estimate falls short."""
    gen = torch.Generator().manual_seed(4)
    weight = 3 * torch.randn(8, 3, generator=gen)
    weight[:, 1] = weight[:, 0] + 0.01 * torch.randn(8, generator=gen)
    model = LinearGaussian(weight, torch.zeros(8), 0.5)
    x = model.sample(10, generator=gen).x
    post = model.posterior(x)
    q = torch.distributions.Independent(
        torch.distributions.Normal(post.loc, model.posterior_precision().diagonal().rsqrt().expand_as(post.loc)), 1
    )
    r = refined_proposal(model, lambda _: q, x, steps=1000)
    refined = log_marginal(model, lambda _: r, x, k=4000, warn=False)
    exact = model.log_evidence(x)
    assert ((refined.value - exact).abs() <= 4 * refined.stderr).all()
    assert refined.pareto_k is not None and (refined.pareto_k < 0.5).all()
    mean_field = log_marginal(model, lambda _: q, x, k=4000, warn=False)
    assert (mean_field.value - exact).mean() < -0.05
