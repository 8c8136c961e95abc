"""``elbokit fit --guide local``: non-amortized VI as a run. The model's guide is a
:class:`elbokit.NonAmortizedGaussian`: a Gaussian q per training point, trained on minibatches that carry their
points' indices at its own learning rate, saved in the checkpoint and resumed bit for bit; for any other point q
is fitted by maximising that point's ELBO from the prior, so evaluate, diagnose and the report run on the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import elbokit as ek
from conftest import random_linear_gaussian, stop_requested_after
from elbokit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

N = 120  # training points: 8 steps of 16 per epoch
FIT = ["--data", "digits", "--limit", str(N), "--batch-size", "16", "--latent-dim", "3", "--hidden", "16",
       "--quiet", "--device", "cpu", "--guide", "local"]  # fmt: skip


def _tensors(run: Path) -> dict[str, Tensor]:
    return {k: v for k, v in load_file(run / "checkpoint.safetensors").items() if not k.startswith("rng.")}


def _metrics(run: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in rows]


def test_fit_guide_local_trains_each_points_q_and_resumes_bit_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = tmp_path / "straight"
    assert main(["fit", *FIT, "--epochs", "3", "--out", str(straight)]) == 0
    tensors = _tensors(straight)
    # One q per training point, in the model's checkpoint, and its Adam moments at the local learning rate.
    assert tensors["model.encoder.table.loc"].shape == (N, 3)
    assert tensors["model.encoder.table.raw_scale"].shape == (N, 3)
    assert not any(name.startswith("model.encoder.net") for name in tensors)  # no encoder network
    state = json.loads((straight / "state.json").read_text())
    assert [g["lr"] for g in state["param_groups"]] == [1e-3, 0.1]
    # The per-point q moved away from the prior, and the recorded bound (on the training points) rose.
    assert float(tensors["model.encoder.table.loc"].abs().mean()) > 0.05
    rows = _metrics(straight)
    assert rows[-1]["validation_elbo"] > rows[0]["validation_elbo"]  # type: ignore[operator]

    run = tmp_path / "stopped"
    with stop_requested_after(10):  # a stop between steps 10 and 11, in the second epoch
        assert main(["fit", *FIT, "--epochs", "3", "--out", str(run)]) == 130
    assert "resume with" in capsys.readouterr().err
    torch.manual_seed(999)  # everything must come from the checkpoint
    assert main(["fit", "--out", str(run), "--resume", "--quiet"]) == 0
    resumed = _tensors(run)
    assert tensors.keys() == resumed.keys()
    for name in tensors:
        assert torch.equal(tensors[name], resumed[name]), name
    assert _metrics(run) == rows


def test_a_local_run_is_evaluated_and_diagnosed_on_points_it_never_saw(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["fit", *FIT, "--epochs", "15", "--lr", "0.01", "--out", str(out)]) == 0
    run = ek.Run.open(out)
    assert isinstance(run.guide, ek.NonAmortizedGaussian) and run.guide.num_points == N
    x = run.data.test[:10]
    torch.manual_seed(0)
    with torch.no_grad():
        start = ek.elbo(run.model, ek.FixedGuide(run.model.prior().expand((10,))), x, samples=200).value
        fitted = ek.elbo(run.model, ek.FixedGuide(run.guide(x)), x, samples=200).value
    # The fit from the prior gains on every point (the prior's ELBO is the fit's step 0).
    assert bool((fitted > start + 1.0).all()), (fitted - start)
    evaluation = run.evaluate(k=50, limit=10, save=False)
    assert evaluation.n == 10 and evaluation.log_px_stderr < 1.0
    diagnosis = run.diagnose(limit=10, k=50, refine_steps=50, save=False)
    # q fitted for 300 steps in the diagonal family: refinement from it finds little more.
    assert abs(diagnosis.gaps.amortization) < 1.0
    assert diagnosis.latent_dim == 3


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_new_points_q_is_the_best_gaussian_of_its_family(covariance: str, seed: int) -> None:
    """On a linear-Gaussian model the exact posterior is known, and so is the best q of each family: the exact
    posterior for full covariance, and for diagonal N(mean, 1 / diag(precision)) (the KL(q ‖ p)-optimal
    mean-field Gaussian). The fit from the prior ends within 0.01 nats of that optimum's KL on every point
    (measured: at most 0.0025 over these 3 models x 16 points, 300 steps)."""
    model = random_linear_gaussian(torch.Generator().manual_seed(seed), 5, 2).double()
    x = model.sample(16, generator=torch.Generator().manual_seed(seed)).x
    guide = ek.NonAmortizedGaussian(1, 2, covariance=covariance, dtype=torch.float64)  # type: ignore[arg-type]
    guide.bind(model)
    torch.manual_seed(0)
    q = guide(x)
    with torch.no_grad():
        post = model.posterior(x)
        precision = torch.linalg.inv(post.covariance_matrix)
        if covariance == "full":
            assert isinstance(q, MultivariateNormal)
            best_kl = torch.zeros(16, dtype=torch.float64)
        else:
            assert isinstance(q, Independent) and isinstance(q.base_dist, Normal)
            q = MultivariateNormal(q.base_dist.loc, scale_tril=torch.diag_embed(q.base_dist.scale))
            best_var = 1 / torch.diagonal(precision, dim1=-2, dim2=-1)
            best_kl = kl_divergence(MultivariateNormal(post.loc, covariance_matrix=torch.diag_embed(best_var)), post)
        excess = kl_divergence(q, post) - best_kl
    assert bool((excess > -1e-9).all())  # nothing in the family beats its optimum
    assert float(excess.max()) < 0.01, excess


def test_a_local_guide_calls_the_fit_once_per_batch_in_diagnose(monkeypatch: pytest.MonkeyPatch) -> None:
    """dx.diagnose fits a non-amortized guide's q to x once and uses that q for every figure."""
    model = random_linear_gaussian(torch.Generator().manual_seed(0), 5, 2).double()
    x = model.sample(6, generator=torch.Generator().manual_seed(1)).x
    guide = ek.NonAmortizedGaussian(1, 2, steps=50, dtype=torch.float64)
    guide.bind(model)
    calls = {"n": 0}
    forward = ek.NonAmortizedGaussian.forward

    def counted(self: ek.NonAmortizedGaussian, x: Tensor) -> object:
        calls["n"] += 1
        return forward(self, x)

    monkeypatch.setattr(ek.NonAmortizedGaussian, "forward", counted)
    diagnosis = ek.diagnostics.diagnose(model, guide, x, k=20, refine_steps=20)
    assert calls["n"] == 1
    exact = float(model.log_evidence(x).mean().detach())
    assert diagnosis.log_px == pytest.approx(exact, abs=4 * diagnosis.log_px_stderr + 1e-3)
