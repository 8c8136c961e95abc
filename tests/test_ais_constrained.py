"""AIS and BDMC on constrained latents (HMC in u, z = biject_to(support)(u)) against closed-form evidence.

Two conjugate models with event-shaped latents z (d,), each coordinate observed n times, x (B, d * n):
Beta-Bernoulli, log p(x) = sum_j [ln B(a + s_j, b + n - s_j) - ln B(a, b)], and Gamma-Poisson (the negative
binomial marginal), log p(x) = sum_j [alpha ln beta - ln Gamma(alpha) + ln Gamma(alpha + S_j)
- (alpha + S_j) ln(beta + n)] - sum ln x!, both computed with scipy. Data and the exact posterior samples that
start BDMC come from numpy generators; AIS and BDMC from a fixed ``torch.Generator``. Tolerances: Z standard
errors (conftest), the stderr being the Estimate's delta-method one over chains.

Bias: at the settings used (200 temperatures, 5 leapfrog steps, 64 chains) AIS's error on these data, averaged
over 30 repeats with other seeds, is at most 0.012 nats (standard error of that mean 0.004 to 0.013) at every
point of both models, well below its stderr (0.02 to 0.06 nats); BDMC's is at most 0.037 (+- 0.014) against
a stderr of 0.02 to 0.13. So no bias allowance is added.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from scipy.special import betaln, gammaln
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Beta,
    Categorical,
    Distribution,
    Gamma,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    Poisson,
)

from conftest import Z
from elbokit.diagnostics import ais, bdmc
from elbokit.diagnostics._ais import sample_start
from elbokit.types import Estimate

STEPS, LEAPFROG, CHAINS = 200, 5, 64


pytestmark = pytest.mark.usefixtures("one_thread")  # the chains are tiny tensors


class BetaBernoulli:
    """z ~ Beta(a, b)^d, x_{jk} | z ~ Bernoulli(z_j) for k = 1..n: x has event (d * n,)."""

    def __init__(self, a: float, b: float, d: int, n: int) -> None:
        self.a, self.b, self.d, self.n = a, b, d, n

    def prior(self) -> Distribution:
        return Independent(Beta(torch.full((self.d,), self.a), torch.full((self.d,), self.b)), 1)

    def likelihood(self, z: Tensor) -> Distribution:
        return Independent(Bernoulli(probs=z.repeat_interleave(self.n, -1)), 1)  # (*batch, d * n)

    def simulate(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        z = rng.beta(self.a, self.b, size=(batch, self.d))
        return (rng.random((batch, self.d, self.n)) < z[..., None]).astype(float).reshape(batch, -1)

    def log_evidence(self, x: np.ndarray) -> np.ndarray:
        s = x.reshape(len(x), self.d, self.n).sum(-1)
        return (betaln(self.a + s, self.b + self.n - s) - betaln(self.a, self.b)).sum(-1)

    def posterior_samples(self, x: np.ndarray, chains: int, rng: np.random.Generator) -> np.ndarray:
        s = x.reshape(len(x), self.d, self.n).sum(-1)
        return rng.beta(self.a + s, self.b + self.n - s, size=(chains, *s.shape))


class GammaPoisson:
    """z ~ Gamma(alpha, beta)^d (rate beta), x_{jk} | z ~ Poisson(z_j) for k = 1..n: x has event (d * n,)."""

    def __init__(self, alpha: float, beta: float, d: int, n: int) -> None:
        self.alpha, self.beta, self.d, self.n = alpha, beta, d, n

    def prior(self) -> Distribution:
        return Independent(Gamma(torch.full((self.d,), self.alpha), torch.full((self.d,), self.beta)), 1)

    def likelihood(self, z: Tensor) -> Distribution:
        return Independent(Poisson(z.repeat_interleave(self.n, -1)), 1)

    def simulate(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        z = rng.gamma(self.alpha, 1.0 / self.beta, size=(batch, self.d))
        return rng.poisson(z[..., None], size=(batch, self.d, self.n)).astype(float).reshape(batch, -1)

    def log_evidence(self, x: np.ndarray) -> np.ndarray:
        s = x.reshape(len(x), self.d, self.n).sum(-1)
        alpha, beta = self.alpha, self.beta
        per_coordinate = (
            alpha * np.log(beta) - gammaln(alpha) + gammaln(alpha + s) - (alpha + s) * np.log(beta + self.n)
        )
        return per_coordinate.sum(-1) - gammaln(x + 1).sum(-1)

    def posterior_samples(self, x: np.ndarray, chains: int, rng: np.random.Generator) -> np.ndarray:
        s = x.reshape(len(x), self.d, self.n).sum(-1)
        return rng.gamma(self.alpha + s, 1.0 / (self.beta + self.n), size=(chains, *s.shape))


class Data(NamedTuple):
    model: BetaBernoulli | GammaPoisson
    x: Tensor  # (B, d * n)
    z: Tensor  # (C, B, d) exact posterior samples
    exact: Tensor  # (B,) log p(x)


@pytest.fixture(scope="module", params=["beta", "gamma"])
def conjugate(request: pytest.FixtureRequest) -> Data:
    """3 simulated points of Beta(1.5, 2)-Bernoulli or Gamma(2, 1)-Poisson, d = 2, n = 5."""
    model = BetaBernoulli(1.5, 2.0, d=2, n=5) if request.param == "beta" else GammaPoisson(2.0, 1.0, d=2, n=5)
    rng = np.random.default_rng(0)
    x = model.simulate(3, rng)
    z = model.posterior_samples(x, CHAINS, rng)
    return Data(model, torch.from_numpy(x), torch.from_numpy(z), torch.from_numpy(model.log_evidence(x)))


@pytest.fixture(scope="module")
def forward(conjugate: Data, one_thread: None) -> Estimate:
    """AIS from the prior."""
    gen = torch.Generator().manual_seed(1)
    return ais(conjugate.model, conjugate.x, steps=STEPS, chains=CHAINS, leapfrog=LEAPFROG, generator=gen)


@pytest.fixture(scope="module")
def reverse(conjugate: Data, one_thread: None) -> Estimate:
    """BDMC from the exact posterior samples."""
    gen = torch.Generator().manual_seed(2)
    return bdmc(conjugate.model, conjugate.x, conjugate.z, steps=STEPS, leapfrog=LEAPFROG, generator=gen)


def test_ais_within_z_stderr_of_exact_evidence(conjugate: Data, forward: Estimate) -> None:
    """AIS from the prior: |AIS - log p(x)| <= Z stderr at every point (Beta-Bernoulli and Gamma-Poisson)."""
    exact, a = conjugate.exact, forward
    assert a.value.shape == a.stderr.shape == (3,) and a.samples == CHAINS
    assert bool(torch.isfinite(a.value).all() and (a.stderr > 0).all()), a
    assert bool(((a.value - exact).abs() <= Z * a.stderr).all()), (a.value - exact, a.stderr)


def test_bdmc_within_z_stderr_of_exact_evidence(conjugate: Data, reverse: Estimate) -> None:
    """BDMC from exact Beta / Gamma posterior samples: |BDMC - log p(x)| <= Z stderr at every point."""
    exact, b = conjugate.exact, reverse
    assert b.value.shape == (3,) and b.samples == CHAINS
    assert bool(((b.value - exact).abs() <= Z * b.stderr).all()), (b.value - exact, b.stderr)


def test_ais_and_bdmc_sandwich_exact_evidence(conjugate: Data, forward: Estimate, reverse: Estimate) -> None:
    """AIS <= log p(x) <= BDMC on average over points, within Z standard errors of the point-mean."""
    exact, a, b = conjugate.exact, forward, reverse
    se_a = float(a.stderr.square().sum().sqrt()) / len(exact)
    se_b = float(b.stderr.square().sum().sqrt()) / len(exact)
    assert float((a.value - exact).mean()) <= Z * se_a
    assert float((b.value - exact).mean()) >= -Z * se_b
    assert float((b.value - a.value).mean()) >= -Z * float(np.hypot(se_a, se_b))


def test_out_of_support_leapfrog_states_are_rejected() -> None:
    """Leapfrog steps so large that exp(u) overflows to inf or underflows to 0 (outside the Gamma's support)
    neither crash nor leak: every such proposal is rejected and the weights stay finite."""
    model = GammaPoisson(2.0, 1.0, d=2, n=5)
    x = torch.from_numpy(model.simulate(2, np.random.default_rng(0)))
    gen = torch.Generator().manual_seed(0)
    a = ais(model, x, steps=5, chains=4, step_size=500.0, adapt=False, generator=gen)
    assert bool(torch.isfinite(a.value).all()), a.value


class _Scalar:
    """A Beta latent with event shape (): not the (d,) convention."""

    def prior(self) -> Distribution:
        return Beta(torch.tensor(2.0), torch.tensor(2.0))

    def likelihood(self, z: Tensor) -> Distribution:
        return Independent(Bernoulli(probs=z.unsqueeze(-1).expand(*z.shape, 3)), 1)


class _Discrete:
    """A Bernoulli latent: no bijection onto R^d."""

    def prior(self) -> Distribution:
        return Independent(Bernoulli(probs=torch.full((2,), 0.5)), 1)

    def likelihood(self, z: Tensor) -> Distribution:
        return Independent(Normal(z, 1.0), 1)


def test_scalar_and_discrete_latents_are_rejected() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"event shape \(d,\).*Independent\(dist.expand\(\(1,\)\), 1\)"):
        ais(_Scalar(), x, steps=2)
    with pytest.raises(ValueError, match=r"event shape \(d,\)"):
        bdmc(_Scalar(), x, torch.full((2, 1), 0.5), steps=2)
    with pytest.raises(ValueError, match="continuous latent"):
        ais(_Discrete(), torch.zeros(2, 2), steps=2)


def test_proposal_outside_the_support_is_rejected() -> None:
    """A Normal start for a Beta latent draws z outside (0, 1): a ValueError naming the support, not a NaN."""
    model = BetaBernoulli(1.5, 2.0, d=2, n=5)
    x = torch.from_numpy(model.simulate(2, np.random.default_rng(0)))
    wide = Independent(Normal(torch.zeros(2, 2), 3.0), 1)
    with pytest.raises(ValueError, match="support"):
        ais(model, x, steps=2, chains=8, proposal=wide, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="support"):
        bdmc(model, x, torch.full((2, 2), 1.5), steps=2)
    with pytest.raises(ValueError, match=r"batch shape \(2,\) or \(\)"):
        ais(model, x, steps=2, proposal=Independent(Beta(torch.ones(3, 2), torch.ones(3, 2)), 1))


def test_ais_from_exact_posterior_distribution_is_exact(make_model) -> None:
    """proposal = p(z|x) given as a Distribution (not a guide): every chain's log weight is log p(x), so the
    estimate is log p(x) to float error, its stderr 0 and its ESS the number of chains."""
    model = make_model(2)
    x = model.sample(3, generator=torch.Generator().manual_seed(4)).x
    exact = model.log_evidence(x).detach()
    a = ais(model, x, steps=5, chains=8, proposal=model.posterior(x), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.value, exact, rtol=0, atol=1e-10)
    assert float(a.stderr.abs().max()) < 1e-8 and bool((a.ess - 8).abs().lt(1e-6).all()), (a.stderr, a.ess)


def test_ais_from_mixture_proposal(make_model) -> None:
    """A MixtureSameFamily of two MultivariateNormals per point (no rsample) starts AIS: drawn under the
    generator (the same seed gives the same estimate whatever the global RNG), within Z stderr of log p(x)."""
    model = make_model(2)
    x = model.sample(3, generator=torch.Generator().manual_seed(4)).x
    post = model.posterior(x)
    loc, scale_tril = post.loc.detach(), post.scale_tril.detach()
    locs = torch.stack([loc - 0.5, loc + 0.5], -2)  # (B, 2, d)
    mixture = MixtureSameFamily(
        Categorical(probs=torch.tensor([0.3, 0.7]).expand(3, 2)),
        MultivariateNormal(locs, scale_tril=1.5 * scale_tril.unsqueeze(-3).expand(3, 2, 2, 2)),
    )
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(ais(model, x, steps=50, chains=16, proposal=mixture, generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(runs[0].value, runs[1].value, rtol=0, atol=0)
    a, exact = runs[0], model.log_evidence(x).detach()
    assert bool(((a.value - exact).abs() <= Z * a.stderr).all()), (a.value - exact, a.stderr)


@pytest.mark.parametrize(
    "dist",
    [
        Independent(Gamma(torch.tensor([0.5, 3.0]), torch.tensor([2.0, 1.0])), 1),
        Independent(Beta(torch.tensor([0.5, 3.0]), torch.tensor([2.0, 1.0])), 1),
        MixtureSameFamily(
            Categorical(probs=torch.tensor([0.3, 0.7])),
            MultivariateNormal(torch.tensor([[-1.0, 0.0], [2.0, 1.0]]), scale_tril=0.5 * torch.eye(2).expand(2, 2, 2)),
        ),
        MixtureSameFamily(
            Categorical(probs=torch.tensor([0.6, 0.4])),
            Independent(Normal(torch.tensor([[-1.0, 0.0], [2.0, 1.0]]), 0.3), 1),
        ),
    ],
    ids=["gamma", "beta", "mixture-mvn", "mixture-normal"],
)
def test_sample_start_draws_under_the_generator(dist: Distribution) -> None:
    """The start families AIS draws under its generator: the same seed gives the same draws whatever the
    global RNG, and the mean of 20000 draws is within Z standard errors of the distribution's mean."""
    draws = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        draws.append(sample_start(dist, (20000,), torch.Generator().manual_seed(3)))
    assert draws[0].shape == (20000, 2) and torch.equal(draws[0], draws[1])
    stderr = (dist.variance / 20000).sqrt()
    assert bool(((draws[0].mean(0) - dist.mean).abs() <= Z * stderr).all()), (draws[0].mean(0), dist.mean)
