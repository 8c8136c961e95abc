"""Bayesian linear regression, the oracle of global latents: its evidence, posterior and ELBO against each other
and against independent computations (a dense Gaussian, a Monte-Carlo average in standard errors)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from elbokit.models import BayesianLinearRegression

N, P = 40, 4


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor, BayesianLinearRegression]:
    g = torch.Generator().manual_seed(seed)
    model = BayesianLinearRegression(prior_scale=0.5 + float(torch.rand((), generator=g)),
                                     noise_scale=0.3 + float(torch.rand((), generator=g)))  # fmt: skip
    x = torch.randn(N, P, generator=g, dtype=torch.float64)
    w = torch.randn(P, generator=g, dtype=torch.float64) * model.prior_scale
    y = x @ w + model.noise_scale * torch.randn(N, generator=g, dtype=torch.float64)
    return x, y, model


def _random_q(seed: int, full: bool) -> torch.distributions.Distribution:
    g = torch.Generator().manual_seed(100 + seed)
    loc = torch.randn(P, generator=g, dtype=torch.float64)
    if full:
        tril = torch.randn(P, P, generator=g, dtype=torch.float64).tril(-1) * 0.3
        tril = tril + torch.diag(0.1 + torch.rand(P, generator=g, dtype=torch.float64))
        return MultivariateNormal(loc, scale_tril=tril)
    return Independent(Normal(loc, 0.1 + torch.rand(P, generator=g, dtype=torch.float64)), 1)


@pytest.mark.parametrize("seed", range(3))
def test_evidence_is_the_dense_gaussian_and_the_posterior_is_bayes_rule(seed: int) -> None:
    x, y, model = _data(seed)
    dense = MultivariateNormal(torch.zeros(N, dtype=torch.float64),
                               model.prior_scale**2 * x @ x.T + model.noise_scale**2 * torch.eye(N))  # fmt: skip
    assert float(model.log_evidence(x, y)) == pytest.approx(float(dense.log_prob(y)), rel=1e-12)
    # Bayes' rule at any w: log p(w | y) = log p(w) + log p(y | w) - log p(y)
    post = model.posterior(x, y)
    w = torch.randn(5, P, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    joint = model.prior(P, like=x).log_prob(w) + model.likelihood(x, w).log_prob(y).sum(-1)
    torch.testing.assert_close(post.log_prob(w), joint - model.log_evidence(x, y), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_the_gap_is_the_kl_to_the_posterior(seed: int, full: bool) -> None:
    """log p(y) - ELBO(q) = KL(q || p(w | y)) to 1e-10, for any Gaussian q."""
    x, y, model = _data(seed)
    q = _random_q(seed, full)
    gap = model.log_evidence(x, y) - model.exact_elbo(x, y, q)
    q_full = q if full else MultivariateNormal(q.mean, scale_tril=torch.diag(q.base_dist.scale))  # type: ignore[attr-defined]
    kl = kl_divergence(q_full, model.posterior(x, y))
    assert float(gap) == pytest.approx(float(kl), rel=1e-10, abs=1e-10)
    assert float(gap) > 0


@pytest.mark.parametrize("seed", range(3))
def test_the_posterior_reaches_the_evidence_and_the_best_mean_field_gap_is_closed_form(seed: int) -> None:
    x, y, model = _data(seed)
    evidence = float(model.log_evidence(x, y))
    assert float(model.exact_elbo(x, y, model.posterior(x, y))) == pytest.approx(evidence, abs=1e-10)
    best = model.best_mean_field(x, y)
    gap = evidence - float(model.exact_elbo(x, y, best))
    assert gap == pytest.approx(float(model.mean_field_gap(x)), abs=1e-10)
    # ... and it is the best: moving any mean or variance lowers the ELBO
    for j in range(P):
        for scale in (0.9, 1.1):
            factor = torch.where(torch.arange(P) == j, scale, 1.0)
            moved = Independent(Normal(best.mean, best.base_dist.scale * factor), 1)  # type: ignore[attr-defined]
            assert float(model.exact_elbo(x, y, moved)) < evidence - gap


def test_the_minibatch_estimate_of_the_elbo_is_unbiased() -> None:
    """(N / B) Σ_{i in batch} log p(y_i | x_i, w), w ~ q, minus the KL: unbiased for the ELBO. 20,000 draws of
    (batch, w); the mean lies within 4 standard errors of the exact value."""
    x, y, model = _data(0)
    q = _random_q(0, full=True)
    g = torch.Generator().manual_seed(7)
    draws = 20_000
    batch = 8
    index = torch.stack([torch.randperm(N, generator=g)[:batch] for _ in range(draws)])  # (draws, B)
    torch.manual_seed(3)
    w = q.sample((draws,))  # (draws, P)
    loc = (x[index] @ w.unsqueeze(-1)).squeeze(-1)  # (draws, B)
    log_lik = Normal(loc, model.noise_scale).log_prob(y[index]).sum(-1) * (N / batch)
    estimate = log_lik - kl_divergence(q, model.prior(P, like=x))
    mean, se = float(estimate.mean()), float(estimate.std()) / math.sqrt(draws)
    assert abs(mean - float(model.exact_elbo(x, y, q))) < 4 * se


@pytest.mark.parametrize(("call", "pattern"), [
    (lambda m, x, y: BayesianLinearRegression(prior_scale=0.0), r"prior_scale must be a finite number > 0"),
    (lambda m, x, y: BayesianLinearRegression(noise_scale=float("nan")), r"noise_scale must be a finite number"),
    (lambda m, x, y: m.log_evidence(x[:, 0], y), r"x must be a non-empty \(N, p\)"),
    (lambda m, x, y: m.log_evidence(x, y[:-1]), r"y must be an \(40,\) tensor"),
    (lambda m, x, y: m.posterior(x, y.float()), r"y must be an \(40,\) tensor of x's dtype"),
    (lambda m, x, y: m.log_evidence(x, y * float("inf")), r"x and y must be finite"),
    (lambda m, x, y: m.exact_elbo(x, y, Normal(0.0, 1.0)), r"q\(w\) must be Independent\(Normal, 1\)"),
])  # fmt: skip
def test_bad_input_is_one_line(call: object, pattern: str) -> None:
    x, y, model = _data(0)
    with pytest.raises((ValueError, TypeError), match=pattern) as caught:
        call(model, x, y)  # type: ignore[operator]
    assert "\n" not in str(caught.value)


# ---- ek.global_elbo: one w for the whole minibatch, the data term scaled by N / B -------------------------------
def test_global_elbo_is_unbiased_on_minibatches() -> None:
    """ek.global_elbo on random minibatches of 8 of the 40 points, one w each: 20,000 estimates average to the
    exact ELBO within 4 standard errors; its parts are stated per point and in total."""
    import elbokit as ek

    x, y, model = _data(1)
    q = _random_q(1, full=False)
    prior = model.prior(P, like=x)
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(5)
    values = []
    for _ in range(20_000):
        index = torch.randperm(N, generator=g)[:8]
        bound = ek.global_elbo(model, q, x[index], y[index], num_data=N, prior=prior)
        values.append(float(bound.value))
    assert bound.scale == N / 8 and bound.kl_method == "analytic"
    assert float(bound.per_point) == pytest.approx(float(bound.value) / N)
    assert float(bound.kl) == pytest.approx(float(kl_divergence(q, prior)))
    estimates = torch.tensor(values, dtype=torch.float64)
    se = float(estimates.std()) / math.sqrt(len(values))
    assert abs(float(estimates.mean()) - float(model.exact_elbo(x, y, q))) < 4 * se


@pytest.mark.parametrize("full", [True, False])
def test_q_trained_by_global_elbo_reaches_the_best_of_its_family(full: bool) -> None:
    """Adam on ek.global_elbo (full batch, 16 draws, the rate decayed to 5e-4) from q = N(0, 0.69² I): the
    full-covariance q reaches the exact posterior's evidence, the mean-field q the closed-form mean-field gap,
    each within 0.02 nats (measured: 0.0026 and 0.0019)."""
    import elbokit as ek
    from elbokit.guides import gaussian

    x, y, model = _data(2)
    prior = model.prior(P, like=x)
    loc = torch.zeros(P, dtype=torch.float64, requires_grad=True)
    raw = torch.zeros(P, P, dtype=torch.float64) if full else torch.zeros(P, dtype=torch.float64)
    raw.requires_grad_(True)
    optimizer = torch.optim.Adam([loc, raw], lr=0.05)
    torch.manual_seed(0)
    for step in range(2000):
        for group in optimizer.param_groups:
            group["lr"] = 0.05 if step < 1000 else 0.05 * 0.1 ** ((step - 1000) / 500)  # to 5e-4
        bound = ek.global_elbo(model, gaussian(loc, raw), x, y, num_data=N, samples=16, prior=prior)
        optimizer.zero_grad()
        bound.loss.backward()
        optimizer.step()
    with torch.no_grad():
        gap = float(model.log_evidence(x, y) - model.exact_elbo(x, y, gaussian(loc, raw)))
    best = 0.0 if full else float(model.mean_field_gap(x))
    assert best - 1e-9 < gap < best + 0.02, (gap, best)


@pytest.mark.parametrize(("call", "pattern"), [
    (lambda m, q, x, y: __import__("elbokit").global_elbo(m, q, x, y, num_data=10, prior=m.prior(P, like=x)),
     r"the minibatch holds 40 points, more than num_data 10"),
    (lambda m, q, x, y: __import__("elbokit").global_elbo(m, q.expand((2,)), x, y, num_data=N),
     r"q\(w\) must be a torch Distribution with batch shape \(\)"),
    (lambda m, q, x, y: __import__("elbokit").global_elbo(m, q, x, y[:3], num_data=N),
     r"x and y must hold the same B >= 1 points, got 40 and 3"),
    (lambda m, q, x, y: __import__("elbokit").global_elbo(m, q, x, y, num_data=N, samples=0),
     r"samples must be"),
])  # fmt: skip
def test_global_elbo_bad_input_is_one_line(call: object, pattern: str) -> None:
    x, y, model = _data(0)
    q = _random_q(0, full=False)
    with pytest.raises(ValueError, match=pattern) as caught:
        call(model, q, x, y)  # type: ignore[operator]
    assert "\n" not in str(caught.value)
