"""Trust in log p(x): Pareto k-hat, AIS, BDMC and the IWAE_k curve against the linear-Gaussian oracle.

k-hat is checked against ``arviz-stats`` (its PSIS implementation, same tail size and prior) and against
generalized-Pareto samples of known shape (scipy). AIS and BDMC run on a small model (D=5, d=2) with every
draw from a fixed ``torch.Generator``; tolerances are Z standard errors (conftest) plus a stated bias allowance.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal, Normal

import elbokit as ek
from conftest import Z, random_linear_gaussian
from elbokit.diagnostics.evidence import ais, bdmc, iwae_curve, pareto_khat, sigmoid_schedule
from elbokit.estimators._pareto import khat_from_top, merge_top, tail_length
from elbokit.models import LinearGaussian

pytestmark = pytest.mark.usefixtures("one_thread")  # the chains are tiny tensors


def _scaled_posterior_guide(model: LinearGaussian, scale: float) -> Callable[[Tensor], Distribution]:
    """q = N(posterior mean, scale^2 * posterior covariance), parameters detached."""

    def guide(x: Tensor) -> Distribution:
        post = model.posterior(x)
        return MultivariateNormal(post.loc.detach(), scale_tril=scale * post.scale_tril.detach())

    return guide


def _posterior_samples(model: LinearGaussian, x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n exact draws from p(z|x) under ``generator``: (n, B, d)."""
    post = model.posterior(x)
    eps = torch.randn(n, *post.loc.shape, generator=generator)
    return (post.loc + (post.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)).detach()


# ---- Pareto k-hat ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [50, 100, 400, 900, 2500])
def test_pareto_khat_matches_arviz_stats(k) -> None:
    """k-hat equals arviz-stats' PSIS k-hat to 1e-10 on random log weights (normal with scales 0.5 to 5 and a
    Student-t column). K is chosen where arviz's tail floor(min(0.2 K, 3 sqrt K)) equals our ceil(...);
    ``psislw`` takes log-likelihoods and negates them, hence -log_w."""
    array_stats = pytest.importorskip("arviz_stats.base").array_stats
    rng = np.random.default_rng(k)
    log_w = rng.normal(size=(k, 9)) * np.linspace(0.5, 5.0, 9)
    log_w[:, 0] = rng.standard_t(2, size=k)
    log_w[:, 1] += 700.0  # far beyond exp's range: the max shift must keep it finite
    ours = pareto_khat(torch.from_numpy(log_w))
    _, reference = array_stats.psislw(-log_w.T, r_eff=1, axis=-1)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.9, 1.5])
def test_pareto_khat_recovers_generalized_pareto_shape(shape) -> None:
    """Weights drawn from a GPD with shape k (scipy.stats.genpareto): K = 10000 (tail M = 300), 20 columns.
    The mean k-hat is within Z standard errors (sd over columns / sqrt(20)) plus the prior's pull toward 0.5,
    |k - 0.5| * 10 / (M + 10), of k."""
    k, columns = 10_000, 20
    weights = stats.genpareto.rvs(shape, size=(k, columns), random_state=np.random.default_rng(7))
    khat = pareto_khat(torch.from_numpy(np.log(weights)))
    m = tail_length(k)
    assert m == 300
    stderr = float(khat.std()) / math.sqrt(columns)
    allowance = Z * stderr + abs(shape - 0.5) * 10 / (m + 10)
    assert abs(float(khat.mean()) - shape) < allowance, (float(khat.mean()), stderr)


def test_running_top_equals_topk_of_all() -> None:
    """Merging chunk by chunk keeps exactly the largest M + 1 values, so k-hat is unchanged."""
    log_w = torch.randn(503, 6, generator=torch.Generator().manual_seed(3)) * 2
    m = tail_length(503) + 1
    top = None
    for chunk in log_w.split(17):
        top = merge_top(top, chunk, m)
    assert top is not None
    assert torch.equal(top, log_w.topk(m, 0).values)
    assert torch.equal(khat_from_top(top), pareto_khat(log_w))


def test_pareto_khat_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(K, B\)"):
        pareto_khat(torch.zeros(10))
    with pytest.raises(ValueError, match="K >= 2"):
        pareto_khat(torch.zeros(1, 3))


# ---- k-hat in log_marginal ---------------------------------------------------------------------------------


def test_log_marginal_khat_small_for_exact_and_wider_q(make_model) -> None:
    """q = p(z|x): the weights are all equal (k-hat -inf, no warning); q with 1.3 x the posterior's scale: the
    weights are bounded, k-hat < 0.5 at every point."""
    model = make_model(0)
    x = model.sample(4, generator=torch.Generator().manual_seed(1)).x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact = ek.log_marginal(model, _scaled_posterior_guide(model, 1.0), x, k=2000)
        wider = ek.log_marginal(model, _scaled_posterior_guide(model, 1.3), x, k=2000)
    assert exact.pareto_k is not None and wider.pareto_k is not None
    assert exact.pareto_k.shape == (4,) and bool((exact.pareto_k < 0.5).all()), exact.pareto_k
    assert bool((wider.pareto_k < 0.5).all()), wider.pareto_k


def test_log_marginal_warns_once_for_narrow_q(make_model) -> None:
    """q with 0.3 x the posterior's scale: w = p/q has tail index k = 1 - 0.3^2 = 0.91; k-hat > 0.7 at every
    point, and exactly one UserWarning names the count and the max k-hat. warn=False is silent."""
    model = make_model(0)
    x = model.sample(4, generator=torch.Generator().manual_seed(1)).x
    guide = _scaled_posterior_guide(model, 0.3)
    with pytest.warns(UserWarning) as record:
        est = ek.log_marginal(model, guide, x, k=2000, chunk_size=300)
    assert len(record) == 1
    message = str(record[0].message)
    assert "4 of 4 data points" in message and "unreliable" in message and "max k-hat" in message
    assert est.pareto_k is not None and bool((est.pareto_k > 0.7).all()), est.pareto_k
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ek.log_marginal(model, guide, x, k=100, warn=False)


class _RowwiseNormal(Normal):
    """Test-only Normal drawing one ``torch.randn(batch)`` row per sample from the global RNG, so that a run
    chunked into samples sees exactly the z of an unchunked one (as in test_estimators.py)."""

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        rows = [torch.randn(self.batch_shape, dtype=self.loc.dtype) for _ in range(math.prod(sample_shape))]
        return self.loc + torch.stack(rows).reshape(shape) * self.scale

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


def test_log_marginal_khat_is_the_same_chunked(make_model, monkeypatch) -> None:
    """Same draws (row-wise noise), k = 400 in one chunk or chunks of 7: identical k-hat (running top-M)."""
    monkeypatch.setattr("elbokit.guides._gaussian.Normal", _RowwiseNormal)
    model = make_model(16)
    x = model.sample(4, generator=torch.Generator().manual_seed(1)).x
    guide = ek.LocalGaussian(4, 2, init_loc=model.posterior(x).loc.detach() + 0.3, init_scale=0.4)
    results = []
    for chunk_size in (None, 7):
        torch.manual_seed(5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results.append(ek.log_marginal(model, guide, x, k=400, chunk_size=chunk_size).pareto_k)
    whole, chunked = results
    assert whole is not None and chunked is not None and bool(torch.isfinite(whole).all())
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)


# ---- AIS and BDMC ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandwich(one_thread: None) -> dict[str, object]:
    """AIS and BDMC at 10 and 200 temperatures, 32 chains, 6 simulated points of a D=5, d=2 model."""
    model = random_linear_gaussian(torch.Generator().manual_seed(0))
    for p in model.parameters():
        p.requires_grad_(False)
    x = model.sample(6, generator=torch.Generator().manual_seed(1)).x
    out: dict[str, object] = {"exact": model.log_evidence(x)}
    with torch.random.fork_rng():
        for steps in (10, 200):
            gen = torch.Generator().manual_seed(steps)
            out[f"ais{steps}"] = ais(model, x, steps=steps, chains=32, generator=gen)
            z = _posterior_samples(model, x, 32, gen)
            out[f"bdmc{steps}"] = bdmc(model, x, z, steps=steps, generator=gen)
    return out


def test_sigmoid_schedule() -> None:
    betas = sigmoid_schedule(50)
    assert betas.shape == (51,) and float(betas[0]) == 0.0 and float(betas[-1]) == 1.0
    assert bool((betas.diff() > 0).all())
    assert float(betas.diff()[0]) < float(betas.diff()[25])  # denser at the ends


def test_ais_converges_to_log_evidence(sandwich) -> None:
    """At 200 temperatures |AIS - log p(x)| <= Z * stderr + 0.05 nats (bias allowance) at every point, and the
    error (root mean square over points) is smaller than at 10 temperatures."""
    exact, a10, a200 = sandwich["exact"], sandwich["ais10"], sandwich["ais200"]
    assert a200.value.shape == a200.stderr.shape == a200.ess.shape == (6,) and a200.samples == 32
    assert a200.pareto_k is not None and a200.pareto_k.shape == (6,)  # of the 32 chains' weights
    assert bool(((a200.value - exact).abs() <= Z * a200.stderr + 0.05).all()), (a200.value - exact, a200.stderr)
    rms = [float((a.value - exact).square().mean().sqrt()) for a in (a10, a200)]
    assert rms[1] < rms[0], rms


def test_ais_and_bdmc_sandwich_log_evidence(sandwich) -> None:
    """AIS is a lower bound and BDMC an upper bound on average over points (within Z standard errors of the
    point-mean), at both schedules; the sandwich BDMC - AIS (mean over points) shrinks from 10 to 200."""
    exact = sandwich["exact"]
    gaps = []
    for steps in (10, 200):
        a, b = sandwich[f"ais{steps}"], sandwich[f"bdmc{steps}"]
        se_a = float(a.stderr.square().sum().sqrt()) / 6
        se_b = float(b.stderr.square().sum().sqrt()) / 6
        assert float((a.value - exact).mean()) <= Z * se_a
        assert float((b.value - exact).mean()) >= -Z * se_b
        gaps.append(float((b.value - a.value).mean()))
    assert gaps[1] < gaps[0] and gaps[0] > 0, gaps


def test_ais_from_proposal_and_bdmc_from_one_sample(make_model) -> None:
    """Starting AIS at q = p(z|x) gives log p(x) exactly (every weight increment is log p(x) * dbeta); BDMC
    from the z that generated x (one sample, 8 chains) is finite and at most a few nats off."""
    model = make_model(2)
    x, z = model.sample(3, generator=torch.Generator().manual_seed(4))
    exact = model.log_evidence(x).detach()
    gen = torch.Generator().manual_seed(0)
    a = ais(model, x, steps=5, chains=4, proposal=_scaled_posterior_guide(model, 1.0), generator=gen)
    torch.testing.assert_close(a.value, exact, rtol=0, atol=1e-10)
    b = bdmc(model, x, z, steps=20, chains=8, generator=gen)
    assert b.value.shape == (3,) and b.samples == 8 and bool((b.value - exact).abs().lt(3.0).all())


def test_bdmc_rejects_bad_samples(make_model) -> None:
    model = make_model(2)
    x, z = model.sample(3, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="chains"):
        bdmc(model, x, z.expand(4, 3, 2), chains=5, steps=2)
    with pytest.raises(ValueError, match="batch size"):
        bdmc(model, x, z[:2], steps=2)


# ---- IWAE_k curve ------------------------------------------------------------------------------------------


def test_iwae_curve_rises_toward_log_evidence(make_model) -> None:
    """Mean-field q (the posterior's marginal sds, mean shifted by one): IWAE_1 < IWAE_10 < IWAE_100
    <= log p(x) (Z standard errors, stderr over 20 repeats);
    with q = p(z|x) every point is log p(x) with zero stderr."""
    model = make_model(0)
    x = model.sample(8, generator=torch.Generator().manual_seed(1)).x
    exact = float(model.log_evidence(x).detach().mean())
    post = model.posterior(x)
    sd = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt().detach()
    mean_field = lambda _x: torch.distributions.Independent(Normal(post.loc.detach() + sd, sd), 1)  # noqa: E731
    curve = iwae_curve(model, mean_field, x, ks=(1, 10, 100), repeats=20)
    assert [p.k for p in curve] == [1, 10, 100]
    for lo, hi in itertools.pairwise(curve):
        assert hi.value - lo.value > -Z * math.hypot(lo.stderr, hi.stderr)
    assert curve[-1].value - curve[0].value > Z * math.hypot(curve[0].stderr, curve[-1].stderr)
    assert curve[-1].value <= exact + Z * curve[-1].stderr
    for point in iwae_curve(model, _scaled_posterior_guide(model, 1.0), x, ks=(1, 50)):
        assert abs(point.value - exact) < 1e-10 and point.stderr < 1e-10
