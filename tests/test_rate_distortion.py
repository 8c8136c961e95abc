"""Rate and distortion (Alemi et al. 2018): exact on the linear-Gaussian model, and a real β sweep."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import elbokit as ek
from conftest import Z
from elbokit.diagnostics.rate_distortion import SweepPoint, elbo_line, rate_distortion
from elbokit.models import LinearGaussian
from elbokit.runs import open_run
from elbokit.sweeps import sweep


def _data(model: LinearGaussian, n: int = 64) -> torch.Tensor:
    model.requires_grad_(False)  # exact quantities are compared as floats
    return model.sample(n, generator=torch.Generator().manual_seed(7)).x


def test_rate_plus_distortion_is_minus_log_px_under_the_exact_posterior(
    make_model: Callable[..., LinearGaussian],
) -> None:
    """With q = p(z|x) the ELBO equals log p(x), so R + D = -log p(x): the rate is exact (analytic KL) and
    the sampled distortion must match -log p(x) - R within Z standard errors."""
    model = make_model(0, data_dim=6, latent_dim=3)
    x = _data(model)
    point = rate_distortion(model, model.posterior, x, samples=200)
    neg_log_px = -float(model.log_evidence(x).mean())
    exact_rate = float(kl_divergence(model.posterior(x), model.prior()).mean())
    assert point.rate == pytest.approx(exact_rate, rel=1e-12)
    assert point.rate_stderr == 0.0
    assert point.elbo == pytest.approx(-(point.rate + point.distortion), rel=1e-12)
    assert 0 < point.distortion_stderr < 0.05
    assert abs(point.rate + point.distortion - neg_log_px) < Z * point.distortion_stderr
    assert (point.n, point.samples) == (64, 200)


@pytest.mark.parametrize("exact", [True, False], ids=["posterior", "mean-field"])
def test_distortion_matches_the_exact_expectation(make_model: Callable[..., LinearGaussian], exact: bool) -> None:
    """The exact ELBO of the linear-Gaussian model gives the exact distortion D = -(ELBO + KL). With q the
    posterior R + D_exact = -log p(x) to rounding; with any Gaussian q, R + D_exact = -ELBO >= -log p(x), and
    the sampled D matches D_exact within Z standard errors."""
    model = make_model(1, data_dim=5, latent_dim=2)
    x = _data(model, 40)
    posterior = model.posterior(x)
    if exact:
        q = posterior
    else:  # the posterior's marginals, shifted: a worse q
        q = Independent(Normal(posterior.loc + 0.3, posterior.variance.sqrt() * 1.5), 1)
    exact_elbo = model.exact_elbo(x, q)  # (B,)
    exact_distortion = float(-(exact_elbo + kl_divergence(q, model.prior())).mean())
    point = rate_distortion(model, lambda _x: q, x, samples=400)
    assert abs(point.distortion - exact_distortion) < Z * point.distortion_stderr
    neg_log_px = -float(model.log_evidence(x).mean())
    if exact:
        assert point.rate + exact_distortion == pytest.approx(neg_log_px, abs=1e-10)
    else:
        assert point.rate + exact_distortion > neg_log_px + 0.1


def test_batches_and_single_samples(make_model: Callable[..., LinearGaussian]) -> None:
    """Batching does not change the rate; with one sample per point the error bar falls back to the spread
    over points, which is finite and at least the within-point Monte-Carlo error."""
    model = make_model(2)
    x = _data(model, 50)
    whole = rate_distortion(model, model.posterior, x, samples=4)
    batched = rate_distortion(model, model.posterior, x, samples=4, batch_size=7)
    assert batched.rate == pytest.approx(whole.rate, rel=1e-12)
    single = rate_distortion(model, model.posterior, x, samples=1)
    assert math.isfinite(single.distortion_stderr) and single.distortion_stderr > 0
    many = rate_distortion(model, model.posterior, x, samples=400)
    assert single.distortion_stderr > 2 * many.distortion_stderr


def test_bad_arguments_are_refused(make_model: Callable[..., LinearGaussian]) -> None:
    model = make_model(3)
    x = _data(model, 4)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        rate_distortion(model, model.posterior, x, samples=0)
    with pytest.raises(ValueError, match="at least one data point"):
        rate_distortion(model, model.posterior, x[:0])
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.ones(4, 2)),
        Independent(Normal(torch.zeros(4, 2, 2), torch.ones(4, 2, 2)), 1),
    )
    # No closed-form KL: the rate is sampled, with its standard error, against an independent estimate.
    point = rate_distortion(model, lambda _x: mixture, x, samples=2000)
    z = mixture.sample((4000,))
    terms = mixture.log_prob(z) - model.prior().log_prob(z)  # (4000, B)
    independent_se = float((terms.var(0) / 4000).sum().sqrt()) / terms.shape[1]
    se = (point.rate_stderr**2 + independent_se**2) ** 0.5
    assert point.rate_stderr > 0 and abs(point.rate - float(terms.mean())) <= Z * se
    config = ek.RunConfig(data="synthetic")
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        sweep(config, [1.0, -1.0])
    with pytest.raises(ValueError, match="distinct"):
        sweep(config, [1.0, 1])


def test_elbo_line() -> None:
    assert elbo_line(-10.0, [0.0, 2.5, 10.0]) == [10.0, 7.5, 0.0]


@pytest.mark.filterwarnings("ignore:log_marginal. Pareto k-hat")
def test_a_beta_sweep_trades_rate_for_distortion(tmp_path: Path) -> None:
    """Three small VAEs on the synthetic linear-Gaussian data (1,000 training points, 10 epochs, one thread),
    β in (0.5, 1, 4). Measured on 200 test points: R = 7.18, 5.47, 1.99 and D = 32.53, 33.54, 41.88 (standard
    errors 0.04-0.15); ELBO -39.71, -39.01, -43.87; log p(x) -38.15, -37.46, -39.53 (± 0.02). The rate falls
    and the distortion rises with β by far more than Z standard errors; each run directory is a normal run.
    These briefly trained models give heavy-tailed importance weights (Pareto k-hat > 0.7 on 15-70% of the
    points, which ``log_marginal`` warns about), so log p(x)'s error bar is only indicative; the gap log p(x) -
    ELBO at β = 1, 1.6 nats, is far larger than any plausible error."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add spinning on shared cores
    config = ek.RunConfig(
        data="synthetic", limit=1000, latent_dim=5, hidden=(32,), likelihood="gaussian:learned", epochs=10,
        batch_size=50, lr=3e-3, quiet=True, device="cpu",
    )  # fmt: skip
    try:
        points = sweep(config, (0.5, 1, 4), tmp_path, k=500, limit=200)
    finally:
        torch.set_num_threads(threads)
    assert [p.beta for p in points] == [0.5, 1.0, 4.0]
    for lo, hi in itertools.pairwise(points):
        assert lo.rate > hi.rate  # analytic: no standard error
        assert hi.distortion - lo.distortion > Z * math.hypot(lo.distortion_stderr, hi.distortion_stderr)
    one = points[1]
    assert isinstance(one, SweepPoint)
    assert one.elbo == pytest.approx(-(one.rate + one.distortion))
    assert one.log_px - one.elbo > -Z * math.hypot(one.log_px_stderr, one.distortion_stderr)
    for p in points:
        assert p.path == tmp_path / f"beta-{p.beta:g}"
        for name in ("config.json", "dataset.json", "metrics.jsonl", "checkpoint.safetensors", "evaluation.json"):
            assert (p.path / name).is_file(), name
        assert json.loads((p.path / "config.json").read_text())["beta"] == p.beta
    run = open_run(one.path)  # readable as any run written by `elbokit fit`
    assert run.config.beta == 1.0
    with pytest.raises(ValueError, match="already holds a run"):
        sweep(config, (1,), tmp_path)
