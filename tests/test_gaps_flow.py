"""The gaps in the normalizing-flow family: q* as a LocalFlow per point, against linear-Gaussian closed forms.

A LocalFlow's base is a full-covariance Gaussian, so its family contains the exact posterior of a linear-Gaussian
model: its approximation gap must vanish (within Z standard errors plus OPT, the optimisation's allowance) even
where the posterior correlation is 0.999 and the mean-field gap is 2.5 nats.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal

import elbokit as ek
from conftest import Z
from elbokit.cli import main
from elbokit.diagnostics import rate_distortion
from elbokit.diagnostics.gaps import gaps
from elbokit.diagnostics.refine import family_of, refine_with_trace
from test_reference import _hard_instance

pytest.importorskip("zuko")

OPT = 0.02  # nats: the flow family's optimisation allowance (shared network, sampled KL)


def test_flow_family_closes_the_approximation_gap() -> None:
    model, x = _hard_instance(5, 0.0005)
    precision = model.posterior_precision()
    post = model.posterior(x)
    q = Independent(Normal(post.loc + 0.3, 0.7 * precision.diagonal().rsqrt().expand_as(post.loc)), 1)
    g = gaps(model, lambda _: q, x, k=2000, steps=800, samples=1000, family="flow")
    assert g.family == "flow"
    with torch.no_grad():
        mean_field = model.log_evidence(x) - model.exact_elbo(
            x, Independent(Normal(post.loc, precision.diagonal().rsqrt().expand_as(post.loc)), 1)
        )
    assert float(mean_field.min()) > 2.0  # what a mean-field family would lose here
    se = (g.log_px_stderr.square() + g.elbo_optimal_stderr.square()).sqrt()
    assert (g.approximation.abs() <= Z * se + OPT).all(), g.approximation
    assert ((g.log_px - model.log_evidence(x)).abs() <= Z * g.log_px_stderr).all()


def test_refinement_starts_at_the_amortized_flow_and_improves_it() -> None:
    model, x = _hard_instance(2, 0.01)
    torch.manual_seed(0)
    guide = ek.AmortizedFlow.mlp(8, 4, hidden=(16,), transforms=2)
    with torch.no_grad():
        for p in guide.flow.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a flow that is not the identity
        q = guide(x)
        start = ek.LocalFlow.from_amortized(guide, x).distribution()
        z = q.sample((3,))
        torch.testing.assert_close(start.log_prob(z.clone()), q.log_prob(z.clone()), rtol=0, atol=1e-9)
    assert family_of(q) == "flow"
    result = refine_with_trace(model, guide, x, steps=300)
    assert result.q.batch_shape == (8,) and result.q.event_shape == (4,)
    assert float(result.trace[-20:].mean()) > float(result.trace[:20].mean())
    g = gaps(model, guide, x, k=1000, steps=300, samples=500, warn=False)
    assert g.family == "flow"
    se = (g.elbo_optimal_stderr.square() + g.elbo_amortized_stderr.square()).sqrt()
    assert (g.amortization >= -Z * se).all() and float(g.amortization.mean()) > 0
    # From a random flow 300 steps leave q* (and the reference's Gaussian refined from its moments) short of
    # the posterior: whatever k-hat says, the summary counts it.
    assert g.summary().unreliable == int((g.log_px_pareto_k > 0.7).sum())


def test_sampled_rate_of_a_flow_at_its_gaussian_start() -> None:
    """A fresh AmortizedFlow is its Gaussian base: the sampled rate lies within Z of its standard error of the
    base's closed-form KL."""
    model, x = _hard_instance(0, 0.3)
    torch.manual_seed(1)
    guide = ek.AmortizedFlow.mlp(8, 4, hidden=(16,), transforms=2)
    point = rate_distortion(model, guide, x, samples=2000)
    with torch.no_grad():
        base, _ = guide.base(x)
        exact = float(torch.distributions.kl_divergence(base, model.prior()).mean())
    assert 0 < point.rate_stderr < 0.05 and point.elbo_stderr >= point.distortion_stderr
    assert abs(point.rate - exact) <= Z * point.rate_stderr
    assert rate_distortion(model, guide, x, samples=1).rate_stderr == float("inf")


def test_diagnose_and_report_a_flow_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "flow"
    fit = ["fit", "--data", "digits", "--limit", "200", "--epochs", "1", "--latent-dim", "3", "--hidden", "16",
           "--guide", "flow:2", "--quiet", "--device", "cpu", "--out", str(run)]  # fmt: skip
    assert main(fit) == 0
    argv = ["diagnose", str(run), "--k", "100", "--limit", "30", "--refine-steps", "40"]
    assert main([*argv, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["gaps"]["family"] == "flow" and d["elbo_kl"] == "mc"
    assert d["collapse_q"] == "gaussian moment match of the flow q" and len(d["kl_per_dim"]) == 3
    assert d["rate_distortion"]["rate_stderr"] > 0
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "ELBO (sampled KL)" in table and "(flow q*" in table and "Gaussian moment match" in table
    for proposal in ("refined", "encoder"):
        argv = ["evaluate", str(run), "--k", "100", "--limit", "20", "--refine-steps", "30", "--proposal", proposal]
        assert main([*argv, "--json"]) == 0
        e = json.loads(capsys.readouterr().out)
        assert e["proposal"] == proposal and e["kl_method"] == "mc" and e["log_px"] > e["elbo"]
    assert main(["report", str(run), "--k", "100", "--limit", "30"]) == 0
    assert (run / "report.html").read_text(encoding="utf-8").count("ELBO (sampled KL)") == 1
