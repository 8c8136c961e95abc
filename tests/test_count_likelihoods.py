"""Count likelihoods (Poisson, NB, ZINB with an observed library) against closed forms: mpmath at 50 digits
(the NB density at every θ), scipy in float64 (where scipy itself is exact: its NB loses 1.6e-5 nats at θ = 1e6
and 41 nats at θ = 1e12, from lgamma differences), and sums over the support for ZINB's normalisation and
moments."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

import elbokit as ek
from elbokit.models import VAE, CountLikelihood, ZeroInflatedNegativeBinomial, make_likelihood, nb_log_prob
from elbokit.models.counts import Log1pFlatten, NegativeBinomialMean

mpmath.mp.dps = 50


def _exact_nb(x: float, mu: float, theta: float) -> float:
    x_, mu_, th = mpmath.mpf(x), mpmath.mpf(mu), mpmath.mpf(theta)
    value = (mpmath.loggamma(x_ + th) - mpmath.loggamma(th) - mpmath.loggamma(x_ + 1)
             + th * mpmath.log(th / (th + mu_)) + x_ * mpmath.log(mu_ / (th + mu_)))  # fmt: skip
    return float(value)


def _random_parameters(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    theta = 10 ** g.uniform(-3, 12, n)  # from overdispersed to Poisson-like, far past float32's range of care
    mu = 10 ** g.uniform(-4, 5, n)
    x = np.where(g.random(n) < 0.2, 0, np.floor(10 ** g.uniform(0, 4, n)))
    return x, mu, theta


def test_nb_log_density_matches_the_closed_form_to_1e_10_at_every_dispersion() -> None:
    x, mu, theta = _random_parameters(0, 400)
    exact = np.array([_exact_nb(*args) for args in zip(x, mu, theta, strict=True)])
    ours = nb_log_prob(*(torch.tensor(a, dtype=torch.float64) for a in (x, mu, theta))).numpy()
    error = np.abs(ours - exact) / np.maximum(1.0, np.abs(exact))
    assert error.max() < 1e-10, (error.max(), theta[error.argmax()])  # measured: 4e-13


def test_nb_log_density_matches_scipy_where_scipy_is_exact() -> None:
    x, mu, theta = _random_parameters(1, 400)
    theta = np.minimum(theta, 100.0)  # scipy's own error grows past θ ~ 1e2 (1.8e-8 nats at 1e3)
    ours = nb_log_prob(*(torch.tensor(a, dtype=torch.float64) for a in (x, mu, theta))).numpy()
    reference = stats.nbinom.logpmf(x, theta, theta / (theta + mu))
    assert np.abs(ours - reference).max() / max(1.0, np.abs(reference).max()) < 1e-10
    # The torch distribution by (total_count = θ, logits = log μ - log θ) is the same density.
    torch_nb = torch.distributions.NegativeBinomial(torch.tensor(theta), logits=torch.log(torch.tensor(mu / theta)))
    torch_error = np.abs(torch_nb.log_prob(torch.tensor(x)).numpy() - reference) / np.maximum(1.0, np.abs(reference))
    assert torch_error.max() < 1e-9  # measured 3e-11 relative: torch's lgamma differences


@pytest.mark.parametrize("theta", [1e3, 1e6, 1e9])
def test_float32_nb_keeps_its_accuracy_where_torchs_does_not(theta: float) -> None:
    g = np.random.default_rng(2)
    mu, x = 10 ** g.uniform(-2, 3, 200), np.floor(10 ** g.uniform(0, 3, 200))
    exact = np.array([_exact_nb(a, m, theta) for a, m in zip(x, mu, strict=True)])
    f32 = [torch.tensor(a, dtype=torch.float32) for a in (x, mu, theta)]
    ours = nb_log_prob(*f32).double().numpy()
    theirs = torch.distributions.NegativeBinomial(f32[2], logits=torch.log(f32[1]) - torch.log(f32[2]))
    theirs_error = np.abs(theirs.log_prob(f32[0]).double().numpy() - exact).max()
    ours_error = np.abs(ours - exact).max()
    # float32 resolution of values up to ~1e4 nats: ~1e-3; measured 0.004 at every θ, torch's 0.008 / 1.3 / 2500.
    assert ours_error < 0.05, ours_error
    if theta >= 1e6:
        assert theirs_error > 20 * ours_error


def test_poisson_likelihood_is_scipys() -> None:
    g = np.random.default_rng(3)
    x, rate = np.floor(10 ** g.uniform(0, 4, 300)), 10 ** g.uniform(-3, 4, 300)
    ours = torch.distributions.Poisson(torch.tensor(rate)).log_prob(torch.tensor(x)).numpy()
    assert np.abs(ours - stats.poisson.logpmf(x, rate)).max() < 1e-10 * np.abs(ours).max()


@pytest.mark.parametrize(("mu", "theta", "gate"), [(0.3, 0.5, -2.0), (5.0, 2.0, 0.0), (40.0, 1e4, 1.5)])
def test_zinb_is_the_closed_form_and_normalised(mu: float, theta: float, gate: float) -> None:
    d = ZeroInflatedNegativeBinomial(torch.tensor(mu, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64),
                                     torch.tensor(gate, dtype=torch.float64))  # fmt: skip
    x = np.arange(0, 4000)
    log_pi, log_keep = -math.log1p(math.exp(-gate)), -math.log1p(math.exp(gate))
    head = x[:300]  # the closed form at 50 digits on the first 300 counts (all but < 1e-12 of the mass)
    nb = np.array([_exact_nb(float(k), mu, theta) for k in head])
    closed = np.where(head == 0, np.logaddexp(log_pi, log_keep + nb), log_keep + nb)
    ours = d.log_prob(torch.tensor(x, dtype=torch.float64)).numpy()
    assert np.abs(ours[:300] - closed).max() < 1e-10 * max(1.0, np.abs(closed).max())
    pmf = np.exp(ours)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert float(d.mean) == pytest.approx((pmf * x).sum(), rel=1e-10)
    assert float(d.variance) == pytest.approx((pmf * (x - (pmf * x).sum()) ** 2).sum(), rel=1e-9)


def test_zinb_samples_match_its_moments() -> None:
    torch.manual_seed(0)
    d = ZeroInflatedNegativeBinomial(torch.tensor(6.0), torch.tensor(2.0), torch.tensor(-0.5))
    draws = d.sample((200_000,)).double()
    se = math.sqrt(float(d.variance) / draws.numel())
    assert abs(float(draws.mean()) - float(d.mean)) < 4 * se  # 4 standard errors
    zero = float(torch.sigmoid(torch.tensor(-0.5)) + (1 - torch.sigmoid(torch.tensor(-0.5))) * (2 / 8) ** 2)
    assert abs(float((draws == 0).double().mean()) - zero) < 4 * math.sqrt(zero * (1 - zero) / draws.numel())


# ---- the likelihood objects -------------------------------------------------------------------------------
D = 7


SIZES = [("poisson", D), ("nb", D), ("nb:cell", 2 * D), ("nb:4.5", D), ("zinb", 2 * D), ("zinb:cell", 3 * D),
         ("zinb:0.5", 2 * D)]  # fmt: skip


@pytest.mark.parametrize(("spec", "outputs"), SIZES)
def test_count_specs_round_trip_and_size_the_decoder(spec: str, outputs: int) -> None:
    likelihood = make_likelihood(spec, data_dim=D)
    assert isinstance(likelihood, CountLikelihood) and likelihood.support == "count"
    assert likelihood.output_size(D) == outputs
    assert make_likelihood(likelihood.spec(), data_dim=D).spec() == likelihood.spec()


@pytest.mark.parametrize("spec", ["poisson", "nb", "nb:cell", "zinb", "zinb:3.0"])
def test_observed_library_log_density_is_the_sum_over_genes_at_the_cells_total(spec: str) -> None:
    torch.manual_seed(1)
    likelihood = make_likelihood(spec, data_dim=D).double()
    out = torch.randn(3, 4, likelihood.output_size(D), dtype=torch.float64)  # (K, B, outputs)
    x = torch.randint(0, 30, (4, D)).double()
    logits = out[..., :D]
    mu = x.sum(-1, keepdim=True) * torch.softmax(logits, -1)
    rest = out[..., D:]
    if spec == "poisson":
        per_gene = torch.distributions.Poisson(mu).log_prob(x)
    else:
        if spec.endswith("cell"):
            theta, rest = rest[..., :D].exp(), rest[..., D:]
        elif spec.endswith(".0"):
            theta = torch.tensor(3.0, dtype=torch.float64)
        else:
            theta = torch.ones(D, dtype=torch.float64)  # log θ starts at 0
        theta = theta.expand_as(mu)
        per_gene = torch.tensor(np.vectorize(_exact_nb)(x.expand_as(mu).numpy(), mu.numpy(), theta.numpy()))
        if spec.startswith("zinb"):
            pi = torch.sigmoid(rest)
            per_gene = torch.where(x == 0, torch.log(pi + (1 - pi) * per_gene.exp()), torch.log(1 - pi) + per_gene)
    assert torch.allclose(likelihood(out).log_prob(x), per_gene.sum(-1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("x", "pattern"), [
    (torch.tensor([[1.0, -2.0]]), r"needs counts >= 0; 1 values are negative"),
    (torch.tensor([[1.0, 2.5]]), r"needs integer counts; 1 values are not integers \(e\.g\. 2\.5\)"),
    (torch.tensor([[1.0, math.nan]]), r"needs finite counts; 1 values are NaN or infinite"),
    (torch.tensor([[1.0, 2.0], [0.0, 0.0]]), r"2 cells have no counts|1 cells have no counts at all \(first: row 1\)"),
])  # fmt: skip
def test_bad_counts_are_refused_in_one_line(x: torch.Tensor, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as caught:
        make_likelihood("zinb", data_dim=2).check(x)
    assert "\n" not in str(caught.value)


def test_count_vae_sees_log1p_x_and_generates_at_the_median_library() -> None:
    torch.manual_seed(0)
    model = VAE.mlp(D, 2, hidden=(8,), likelihood="nb")
    assert isinstance(model.encoder.encoder[0], Log1pFlatten)
    x = torch.poisson(torch.full((50, D), 6.0))
    model.init_output_bias(x.mean(0))
    likelihood = model.observation
    assert isinstance(likelihood, CountLikelihood)
    assert float(likelihood.library) == pytest.approx(float(x.mean(0).sum()), rel=1e-6)
    likelihood.set_library(100.0)
    with torch.no_grad():
        # E[x | z] sums to the library (NB's mean is ℓ ρ); a reconstruction sums to the cell's own total.
        assert torch.allclose(model.decode(torch.randn(5, 2)).sum(-1), torch.tensor(100.0), rtol=1e-5)
        assert torch.allclose(model.reconstruct(x).sum(-1), x.sum(-1), rtol=1e-5)
        draws = model.sample(4000, mean=False)
    se = float(draws.sum(-1).std()) / math.sqrt(4000)
    assert abs(float(draws.sum(-1).mean()) - 100.0) < 4 * se
    bound = ek.elbo(model, model.encoder, x)
    assert torch.isfinite(bound.value).all()


def test_nb_by_mean_is_torchs_negative_binomial() -> None:
    d = NegativeBinomialMean(torch.tensor([2.0, 50.0]), torch.tensor([0.5, 7.0]))
    assert torch.allclose(d.mean, torch.tensor([2.0, 50.0]))
    assert torch.allclose(d.variance, torch.tensor([2.0 + 4.0 / 0.5, 50.0 + 2500.0 / 7.0]), rtol=1e-5)


def test_a_latent_library_is_z_last_coordinate_with_the_data_log_normal_prior() -> None:
    torch.manual_seed(0)
    model = VAE.mlp(D, 2, hidden=(8,), likelihood="nb:latent")
    likelihood = model.observation
    assert isinstance(likelihood, CountLikelihood) and likelihood.latent_library
    assert likelihood.spec() == "nb:latent"
    assert make_likelihood("zinb:cell:latent", data_dim=D).spec() == "zinb:cell:latent"
    assert model.latent_dim == 3 and model.encoder(torch.ones(4, D)).event_shape == (3,)
    x = torch.poisson(torch.exp(torch.randn(200, 1) * 0.5 + 4.0) * torch.full((200, D), 1.0 / D))
    x = x[x.sum(-1) > 0]
    log_totals = torch.log(x.sum(-1).double())
    likelihood.set_library_prior(log_totals)
    prior = model.prior()
    assert float(prior.base_dist.loc[-1]) == pytest.approx(float(log_totals.mean()), rel=1e-6)
    assert float(prior.base_dist.scale[-1]) == pytest.approx(float(log_totals.std()), rel=1e-6)
    assert torch.equal(prior.base_dist.loc[:2], torch.zeros(2))
    assert torch.equal(prior.base_dist.scale[:2], torch.ones(2))
    # The mean count at z sums to exp(z's last coordinate): the library is z's, not the data's.
    z = torch.randn(5, 3)
    with torch.no_grad():
        assert torch.allclose(model.decode(z).sum(-1), z[:, -1].exp(), rtol=1e-5)
        draws = model.sample(3000, mean=True).sum(-1).log()
    # log ℓ of p(z) draws: the prior's mean within 4 standard errors
    se = float(log_totals.std()) / math.sqrt(3000)
    assert abs(float(draws.mean()) - float(log_totals.mean())) < 4 * se
    assert torch.isfinite(ek.elbo(model, model.encoder, x).value).all()
