"""Approximation and amortization gaps and refine(), against the linear-Gaussian closed forms.

With a diagonal Gaussian family the best q* of a linear-Gaussian posterior N(mu, Lambda^{-1}) has mean mu and
variances 1 / diag(Lambda), so the approximation gap is 1/2 (sum_j log Lambda_jj - log det Lambda) for every x.
Tolerances: Z standard errors of the Monte-Carlo estimates plus OPT, a stated allowance for the stochastic
optimisation's residual ELBO deficit (measured < 4e-3 nats on these models).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Distribution, Independent, Normal

from conftest import Z
from elbokit.diagnostics.gaps import gaps, refine, refine_with_trace
from elbokit.models import VAE, LinearGaussian

OPT = 0.01  # nats: allowance for q* found by stochastic optimisation instead of in closed form


def _setup(make_model: Callable[..., LinearGaussian], n: int = 8) -> tuple[LinearGaussian, torch.Tensor]:
    model = make_model(3, data_dim=5, latent_dim=2)
    with torch.no_grad():  # nearly collinear loadings: a correlated posterior, a clear approximation gap
        model.weight[:, 1] = model.weight[:, 0] + 0.3 * model.weight[:, 1]
    return model, model.sample(n, generator=torch.Generator().manual_seed(1)).x


def _poor_diagonal(x: torch.Tensor) -> Distribution:
    return Independent(Normal(torch.ones(x.shape[0], 2), torch.full((x.shape[0], 2), 2.0)), 1)


def _diagonal_optimum(model: LinearGaussian, x: torch.Tensor) -> Distribution:
    precision = model.posterior_precision()
    loc = model.posterior(x).loc
    return Independent(Normal(loc, precision.diagonal().rsqrt().expand_as(loc)), 1)


def test_refine_reaches_diagonal_optimum(make_model: Callable[..., LinearGaussian]) -> None:
    model, x = _setup(make_model)
    result = refine_with_trace(model, _poor_diagonal, x, steps=1000)
    q, q_star = result.q, _diagonal_optimum(model, x)
    assert isinstance(q, Independent) and q.batch_shape == (8,)
    assert result.steps < 1000  # stopped early
    assert (q.mean - q_star.mean).abs().max() < 0.05
    assert (q.stddev / q_star.stddev - 1).abs().max() < 0.08
    deficit = model.exact_elbo(x, q_star) - model.exact_elbo(x, q)
    assert deficit.min() > -1e-10  # q* is the optimum of the family
    assert deficit.max() < OPT


def test_refine_full_covariance_reaches_posterior(make_model: Callable[..., LinearGaussian]) -> None:
    model, x = _setup(make_model)
    post = model.posterior(x)
    start = post.__class__(post.loc + 1.0, scale_tril=2 * post.scale_tril.expand(8, 2, 2))
    q = refine(model, lambda _: start, x, steps=1000)
    gap = model.log_evidence(x) - model.exact_elbo(x, q)  # KL(q || p(z|x))
    assert gap.max() < OPT


def test_gaps_diagonal_guide_exact(make_model: Callable[..., LinearGaussian]) -> None:
    model, x = _setup(make_model)
    precision = model.posterior_precision()
    approximation = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))
    kl_guide = model.log_evidence(x) - model.exact_elbo(x, _poor_diagonal(x))  # KL(q || p(z|x))
    g = gaps(model, _poor_diagonal, x, k=4000, samples=2000, steps=1000)
    assert g.family == "diagonal" and g.kl_method == "analytic"
    se_approx = (g.log_px_stderr.square() + g.elbo_optimal_stderr.square()).sqrt()
    assert ((g.approximation - approximation).abs() <= Z * se_approx + OPT).all()
    se_amort = (g.elbo_optimal_stderr.square() + g.elbo_amortized_stderr.square()).sqrt()
    assert ((g.amortization - (kl_guide - approximation)).abs() <= Z * se_amort + OPT).all()
    # q* (mean-field) is narrower than the correlated posterior: ESS is only ~15-55 of 4000 here, and the
    # delta-method stderr understates the error; log p-hat is a stochastic lower bound, measured 0.03-0.12 low.
    error = g.log_px - model.log_evidence(x)
    assert (error <= Z * g.log_px_stderr).all() and (error >= -0.2).all()
    assert ((g.elbo_amortized - model.exact_elbo(x, _poor_diagonal(x))).abs() <= Z * g.elbo_amortized_stderr).all()


def test_gaps_full_covariance_no_approximation_gap(make_model: Callable[..., LinearGaussian]) -> None:
    model, x = _setup(make_model)
    post = model.posterior(x)

    def guide(data: torch.Tensor) -> Distribution:
        return post.__class__(post.loc + 0.5, scale_tril=1.5 * post.scale_tril.expand(data.shape[0], 2, 2))

    g = gaps(model, guide, x, k=2000, samples=1000, steps=1000)
    assert g.family == "full"
    se = (g.log_px_stderr.square() + g.elbo_optimal_stderr.square()).sqrt()
    assert (g.approximation.abs() <= Z * se + OPT).all()
    expected_amortization = model.log_evidence(x) - model.exact_elbo(x, guide(x))
    se_amort = (g.elbo_optimal_stderr.square() + g.elbo_amortized_stderr.square()).sqrt()
    assert ((g.amortization - expected_amortization).abs() <= Z * se_amort + OPT).all()


def test_gaps_vae_shapes_and_model_untouched() -> None:
    torch.manual_seed(0)
    vae = VAE.mlp(12, 3, hidden=(16,))
    x = (torch.rand(8, 12, generator=torch.Generator().manual_seed(2)) < 0.3).double()
    before = {name: p.detach().clone() for name, p in vae.named_parameters()}
    g = gaps(vae, vae.encoder, x, k=500, samples=200, steps=300)
    q = refine(vae, vae.encoder, x, steps=50)
    for field in (g.log_px, g.elbo_amortized, g.elbo_optimal, g.approximation, g.amortization, g.log_px_stderr):
        assert field.shape == (8,) and torch.isfinite(field).all()
    assert q.batch_shape == (8,) and q.event_shape == (3,)
    assert (g.approximation >= -Z * (g.log_px_stderr.square() + g.elbo_optimal_stderr.square()).sqrt()).all()
    assert (g.amortization >= -Z * (g.elbo_optimal_stderr.square() + g.elbo_amortized_stderr.square()).sqrt()).all()
    for name, p in vae.named_parameters():
        assert p.grad is None, name
        assert torch.equal(p, before[name]), name


def test_summary_means_and_the_single_draw_noise(make_model: Callable[..., LinearGaussian]) -> None:
    """GapSummary holds the per-point means, the standard errors of those means, and the sd of a one-draw ELBO:
    that sd is checked against the empirical sd of 4,000 one-draw ELBOs of the encoder's q."""
    from elbokit.estimators import elbo

    model, x = _setup(make_model)
    torch.manual_seed(0)
    g = gaps(model, _poor_diagonal, x, k=2000, steps=200, samples=400)
    s = g.summary()
    assert s.n == 8 and s.steps == g.steps and s.family == "diagonal"
    for name in ("log_px", "elbo_optimal", "elbo_amortized", "approximation", "amortization"):
        assert abs(getattr(s, name) - float(getattr(g, name).detach().mean())) < 1e-12
    assert abs(s.elbo_amortized_stderr - float(g.elbo_amortized_stderr.detach().square().sum().sqrt()) / 8) < 1e-12
    with torch.no_grad():
        draws = torch.stack([elbo(model, _poor_diagonal, x).value for _ in range(4000)])  # (R, B), one draw each
    empirical = float(draws.std(0).mean())
    # The sd estimate from 400 draws per point has relative error about 1 / sqrt(2 * 400) per point.
    assert abs(s.elbo_sample_sd / empirical - 1) < Z / (2 * 400 * 8) ** 0.5 + Z / (2 * 4000 * 8) ** 0.5
