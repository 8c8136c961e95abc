"""The gaps' reference log p(x) on hard posteriors, against closed forms and quadrature.

Linear-Gaussian instances with posterior correlations up to 0.999 and a dead latent (a column of zeros in W,
whose posterior is the prior): the mean-field q* is far too narrow across the correlated pair, so a reference
that used it as proposal would fall short of log p(x) by a good part of the approximation gap. The reference
(a defensive mixture around the best full-covariance Gaussian) must give log p(x) within Z standard errors of
the exact value at every point, and the approximation and amortization gaps within Z standard errors plus OPT,
the allowance for the stochastic optimisation of q* (measured < 0.01 nats on these instances).

A 2-d nonlinear model (a random tanh decoder, Bernoulli likelihood) has no closed form; its log p(x) comes from
quadrature on a 701 x 701 grid over [-7, 7]^2 (the prior's mass outside is < 1e-11).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from conftest import Z
from elbokit.diagnostics.gaps import gaps
from elbokit.diagnostics.reference import defensive_proposal, reference_log_px, refined_proposal
from elbokit.distributions.mixture import DefensiveMixture
from elbokit.models import VAE, LinearGaussian

OPT = 0.01  # nats: allowance for q* found by stochastic optimisation instead of in closed form


def _hard_instance(seed: int, eps: float) -> tuple[LinearGaussian, torch.Tensor]:
    """D = 8, d = 4: columns 0 and 1 nearly collinear (eps), column 3 zero (a dead latent)."""
    gen = torch.Generator().manual_seed(seed)
    weight = 3 * torch.randn(8, 4, generator=gen)
    weight[:, 1] = weight[:, 0] + eps * torch.randn(8, generator=gen)
    weight[:, 3] = 0.0
    model = LinearGaussian(weight, torch.randn(8, generator=gen), 0.3 + 0.4 * torch.rand(8, generator=gen))
    return model, model.sample(8, generator=gen).x


@pytest.mark.parametrize(("seed", "eps"), [(0, 0.3), (2, 0.01), (3, 0.003), (5, 0.0005)])
def test_gaps_exact_on_correlated_posteriors(seed: int, eps: float) -> None:
    model, x = _hard_instance(seed, eps)
    with torch.no_grad():
        precision = model.posterior_precision()
        cov = torch.linalg.inv(precision)
        correlation = float(cov[0, 1].abs() / (cov[0, 0] * cov[1, 1]).sqrt())
        post = model.posterior(x)
        marginal_scale = precision.diagonal().rsqrt().expand_as(post.loc)
        q_opt = Independent(Normal(post.loc, marginal_scale), 1)  # the mean-field optimum, in closed form
        q_guide = Independent(Normal(post.loc + 0.3, 0.7 * marginal_scale), 1)
        exact_log_px = model.log_evidence(x)
        exact_approximation = model.log_evidence(x) - model.exact_elbo(x, q_opt)
        exact_amortization = model.exact_elbo(x, q_opt) - model.exact_elbo(x, q_guide)
    assert correlation > 0.99 or eps > 0.1
    assert float(cov[3, 3]) == pytest.approx(1.0) and float(precision[3, :3].abs().max()) == 0  # dead unit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a reliable reference: no k-hat warning
        g = gaps(model, lambda _: q_guide, x, k=5000, steps=1000, samples=2000)
    assert (g.log_px_pareto_k < 0.7).all() and g.summary().unreliable == 0
    assert ((g.log_px - exact_log_px).abs() <= Z * g.log_px_stderr).all()
    se = (g.log_px_stderr.square() + g.elbo_optimal_stderr.square()).sqrt()
    assert ((g.approximation - exact_approximation).abs() <= Z * se + OPT).all()
    se = (g.elbo_optimal_stderr.square() + g.elbo_amortized_stderr.square()).sqrt()
    assert ((g.amortization - exact_amortization).abs() <= Z * se + OPT).all()


def test_full_family_gaps_on_correlated_posterior() -> None:
    """A full-covariance guide's family contains the posterior: no approximation gap, even at rho = 0.999."""
    model, x = _hard_instance(5, 0.0005)
    post = model.posterior(x)
    start = MultivariateNormal(post.loc + 0.2, scale_tril=1.3 * post.scale_tril.expand(8, 4, 4))
    g = gaps(model, lambda _: start, x, k=2000, steps=1000, samples=1000)
    assert g.family == "full"
    se = (g.log_px_stderr.square() + g.elbo_optimal_stderr.square()).sqrt()
    assert (g.approximation.abs() <= Z * se + OPT).all()
    assert ((g.log_px - model.log_evidence(x)).abs() <= Z * g.log_px_stderr).all()


def _nonlinear() -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """A 2-d latent, random tanh decoder (weights x 3), Bernoulli likelihood on 30 pixels; exact log p(x)."""
    torch.manual_seed(0)
    vae = VAE.mlp(30, 2, hidden=(32,))
    with torch.no_grad():
        for p in vae.decoder.parameters():
            p.mul_(3.0)
        x = vae.likelihood(torch.randn(32, 2)).sample()
        grid = torch.linspace(-7, 7, 701)
        z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)  # (G, 1, 2)
        log_joint = vae.prior().log_prob(z) + vae.likelihood(z).log_prob(x)  # (G, B)
        exact = torch.logsumexp(log_joint, 0) + 2 * math.log(float(grid[1] - grid[0]))
    return vae, x, exact


def test_nonlinear_reference_flags_unreliable_points_and_ais_agrees() -> None:
    vae, x, exact = _nonlinear()
    with pytest.warns(UserWarning, match=r"gaps \(the reference log p\(x\)\): Pareto k-hat > 0.7 for \d+ of 32"):
        g = gaps(vae, vae.encoder, x, k=5000, steps=500)
    summary = g.summary()
    assert summary.unreliable == int((g.log_px_pareto_k > 0.7).sum()) > 0
    assert summary.pareto_k_max == pytest.approx(float(g.log_px_pareto_k.max()))
    reliable = ~g.unreliable
    # Where k-hat says the weights are fine, the estimate is within Z standard errors of quadrature.
    assert ((g.log_px - exact).abs() <= Z * g.log_px_stderr)[reliable].all()
    # Importance sampling is a stochastic lower bound: no point far above the truth.
    assert (g.log_px - exact <= Z * g.log_px_stderr + 1e-3).all()
    gen = torch.Generator().manual_seed(0)
    proposal = defensive_proposal(MultivariateNormal(torch.zeros(32, 2), scale_tril=torch.eye(2).expand(32, 2, 2)))
    a = reference_log_px(vae, x, proposal, method="ais", ais_steps=300, chains=32, generator=gen)
    assert a.pareto_k is not None and a.pareto_k.shape == (32,)
    # AIS from even a poor start: within Z of its chains' standard error of the truth on average over points.
    error = (a.value - exact).mean()
    assert abs(float(error)) <= Z * float(a.stderr.square().sum().sqrt()) / 32 + 0.01


def test_ais_reference_through_gaps() -> None:
    model, x = _hard_instance(2, 0.01)
    q = Independent(Normal(model.posterior(x).loc, torch.ones(8, 4)), 1)
    g = gaps(model, lambda _: q, x, k=500, steps=300, samples=200, reference="ais", ais_steps=100, chains=8,
             warn=False)  # eight chains: too few for a k-hat to mean much
    assert g.reference == "ais" and g.summary().reference == "ais"
    assert ((g.log_px - model.log_evidence(x)).abs() <= Z * g.log_px_stderr + 0.02).all()
    with pytest.raises(ValueError, match="reference must be 'is' or 'ais', got 'exact'"):
        gaps(model, lambda _: q, x, reference="exact")  # type: ignore[arg-type]


def test_defensive_mixture_density_and_draws() -> None:
    a = Independent(Normal(torch.zeros(3, 2), torch.ones(3, 2)), 1)
    b = MultivariateNormal(torch.full((3, 2), 20.0), scale_tril=torch.eye(2).expand(3, 2, 2))
    mix = DefensiveMixture([a, b], [3.0, 1.0])  # weights normalised to 0.75, 0.25
    z = torch.randn(5, 3, 2)
    expected = torch.logaddexp(a.log_prob(z) + math.log(0.75), b.log_prob(z) + math.log(0.25))
    assert torch.allclose(mix.log_prob(z), expected, atol=1e-12)
    draws = mix.sample((4000,))
    assert draws.shape == (4000, 3, 2) and not mix.has_rsample
    from_b = (draws[..., 0] > 10).double()  # the components are 20 sd apart: each draw's source is plain
    assert torch.equal((draws[..., 0] > 10), (draws[..., 1] > 10))  # both coordinates from one component
    share, n = float(from_b.mean()), from_b.numel()
    assert abs(share - 0.25) <= Z * math.sqrt(0.25 * 0.75 / n)


@pytest.mark.parametrize(
    ("components", "weights", "message"),
    [
        ([], [], "need as many weights as components"),
        ([Normal(0.0, 1.0)], [0.0], "mixture weights must be finite and > 0"),
        ([Normal(torch.zeros(2), 1.0), Normal(torch.zeros(3), 1.0)], [1.0, 1.0], "must share batch and event"),
    ],
)
def test_defensive_mixture_bad_arguments(components: list, weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DefensiveMixture(components, weights)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, g, x: gaps(m, g, x, family="nonsense"), "family must be 'diagonal', 'full' or 'flow'"),
        (lambda m, g, x: gaps(m, g, x, reference="exact"), "reference must be 'is' or 'ais'"),
        (lambda m, g, x: gaps(m, g, x, k=0), "k must be an integer >= 1"),
        (lambda m, g, x: gaps(m, g, x, steps=0), "steps must be an integer >= 1"),
        (lambda m, g, x: refined_proposal(m, g, x, steps=0), "steps must be an integer >= 1"),
        (lambda m, g, x: refined_proposal(m, g, x, lr=-1.0), "lr and min_lr must be > 0"),
        (lambda m, g, x: reference_log_px(m, x, g(x), method="ais", chains=1), "chains >= 2"),
        (lambda m, g, x: reference_log_px(m, x, g(x), method="exact"), "reference must be 'is' or 'ais'"),
        (lambda m, g, x: gaps(m, g, x[:, :3]), "event shape"),
        (lambda m, g, x: gaps(m, g, torch.full_like(x, math.nan)), "finite"),
    ],
)
def test_reference_bad_arguments(call: object, message: str) -> None:
    """Bad input to the gaps and their reference: one ValueError naming the problem, before any work."""
    model, x = _hard_instance(0, 0.3)
    q = Independent(Normal(torch.zeros(8, 4), torch.ones(8, 4)), 1)
    with pytest.raises(ValueError, match=message):
        call(model, lambda _: q, x)  # type: ignore[operator]
