"""The estimators against the linear-Gaussian oracle (float64).

Exact values come from ``LinearGaussian.log_evidence``, ``exact_elbo`` and ``posterior``. Statistical checks
draw R independent replicates in one vectorised call by repeating the data batch R times (each row of the
repeated batch gets its own z), so an estimator's per-replicate spread is measured directly:
mean over replicates, stderr = sd / sqrt(R), and |mean - exact| <= Z * stderr with Z from conftest.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, kl_divergence

import elbokit as ek
from conftest import Z
from elbokit.estimators import _weights, marginal
from elbokit.estimators._weights import LogWeights, default_chunk
from elbokit.models import LinearGaussian

Guide = Callable[[Tensor], Distribution]


# ---- helpers ---------------------------------------------------------------------------------------------


def _data(model: LinearGaussian, n: int = 3, seed: int = 1) -> Tensor:
    return model.sample(n, generator=torch.Generator().manual_seed(seed)).x


def _posterior_guide(model: LinearGaussian) -> Guide:
    return lambda x: model.posterior(x)


def _mean_field_guide(model: LinearGaussian, *, shift: float, scale: float) -> Guide:
    """A mean-field q that is not the posterior: N(m + shift * s, diag(scale * s)^2), with m and s the
    posterior mean and marginal standard deviations. Parameters are detached (values only)."""

    def guide(x: Tensor) -> Distribution:
        post = model.posterior(x)
        sd = post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt().detach()
        return Independent(Normal(post.loc.detach() + shift * sd, scale * sd), 1)

    return guide


def _assert_finite_weight_variance(model: LinearGaussian, scale: float) -> None:
    """Importance weights p(z|x) / q(z) have finite variance iff 2 Lambda_post - Lambda_q is positive definite;
    checked for the mean-field q of ``_mean_field_guide`` with this ``scale``."""
    precision = model.posterior_precision().detach()
    sd = torch.linalg.inv(precision).diagonal().sqrt()
    q_precision = torch.diag((scale * sd).pow(-2))
    assert bool(torch.linalg.eigvalsh(2 * precision - q_precision).min() > 0)


def _replicates(values: Tensor, batch: int) -> Tensor:
    """(R * B,) values from a batch repeated R times -> (R, B)."""
    return values.reshape(-1, batch)


def _z(draws: Tensor, target: Tensor) -> Tensor:
    """z-scores of the replicate mean of ``draws`` (R, B) against ``target`` (B,), stderr = sd / sqrt(R)."""
    stderr = draws.std(0) / math.sqrt(draws.shape[0])
    return (draws.mean(0) - target) / stderr


def _two_sample_z(a: Tensor, b: Tensor) -> Tensor:
    """z-scores of mean(b) - mean(a) for independent replicates a, b: (R, B) each -> (B,)."""
    stderr = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    return (b.mean(0) - a.mean(0)) / stderr


class RowwiseNormal(Normal):
    """Test-only Normal whose ``rsample((n,))`` draws n separate ``torch.randn(batch)`` rows from the global
    RNG, one sample at a time, so a run chunked into samples sees exactly the z of an unchunked run."""

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        rows = [torch.randn(self.batch_shape, dtype=self.loc.dtype) for _ in range(math.prod(sample_shape))]
        eps = torch.stack(rows).reshape(shape)
        return self.loc + eps * self.scale

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


# ---- exact posterior: every bound is log p(x) ------------------------------------------------------------


@pytest.mark.parametrize("noise", ["diagonal", "scalar"])
@pytest.mark.parametrize("samples", [1, 3])
def test_joint_form_elbo_is_exact_with_posterior_guide(make_model, noise, samples) -> None:
    """With q = p(z|x), log p(x, z) - log q(z|x) = log p(x) for every z: 50 replicates x 4 points of the
    joint-form (kl="mc") ELBO all equal log p(x) to 1e-10 (float64 rounding only)."""
    model = make_model(0, noise=noise)
    x = _data(model, 4)
    draws = ek.elbo(model, _posterior_guide(model), x.repeat(50, 1), samples=samples, kl="mc").value
    expected = model.log_evidence(x).repeat(50)
    torch.testing.assert_close(draws, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gradient", ["reparam", "stl", "dreg"])
@pytest.mark.parametrize("k", [1, 2, 10, 100])
def test_iwae_is_exact_with_posterior_guide(make_model, k, gradient) -> None:
    """With q = p(z|x) every weight is p(x), so IWAE_k = log p(x) to 1e-10 for any k, 20 replicates."""
    model = make_model(1)
    x = _data(model, 4)
    draws = ek.iwae(model, _posterior_guide(model), x.repeat(20, 1), k=k, gradient=gradient).value
    torch.testing.assert_close(draws, model.log_evidence(x).repeat(20), rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("k", [2, 100])
def test_log_marginal_is_exact_with_posterior_guide(make_model, k, chunk_size) -> None:
    """With q = p(z|x) the importance weights are all equal: value = log p(x) to 1e-10, stderr ~ 0
    (< 1e-6: rounding only) and ESS = k (relative 1e-10)."""
    model = make_model(2)
    x = _data(model, 4)
    est = ek.log_marginal(model, _posterior_guide(model), x, k=k, chunk_size=chunk_size)
    torch.testing.assert_close(est.value, model.log_evidence(x).detach(), rtol=0, atol=1e-10)
    assert bool((est.stderr < 1e-6).all()), est.stderr
    torch.testing.assert_close(est.ess, torch.full_like(est.ess, float(k)), rtol=1e-10, atol=0)
    assert est.samples == k


# ---- the two ELBO forms --------------------------------------------------------------------------------


@pytest.mark.parametrize("samples", [1, 3])
@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize(("shift", "scale"), [(0.5, 1.5), (1.0, 0.7)])
def test_elbo_forms_are_unbiased_for_exact_elbo(make_model, kl, samples, shift, scale) -> None:
    """For a mean-field q that is not the posterior (mean shifted by ``shift`` sd, sds scaled by ``scale``),
    the mean of 4000 replicate ELBO estimates equals exact_elbo within Z stderr; the gap to log p(x) is
    > 0.2 nats here, so the estimate is distinguishable from log p(x)."""
    model = make_model(3)
    x = _data(model)
    guide = _mean_field_guide(model, shift=shift, scale=scale)
    with torch.no_grad():
        b = ek.elbo(model, guide, x.repeat(4000, 1), samples=samples, kl=kl)
        exact = model.exact_elbo(x, guide(x))
        assert bool((model.log_evidence(x) - exact > 0.2).all())
    assert b.kl_method == kl
    z = _z(_replicates(b.value, 3), exact)
    assert bool((z.abs() < Z).all()), z


def test_analytic_kl_is_the_closed_form_and_mc_kl_is_sampled(make_model) -> None:
    """kl="analytic" reports KL(q || p(z)) from the registry exactly (no sampling noise); kl="mc" reports a
    sampled KL, unbiased for it (Z stderr over 4000 replicates) but not constant."""
    model = make_model(4)
    x = _data(model)
    guide = _mean_field_guide(model, shift=1.0, scale=0.7)
    with torch.no_grad():
        exact_kl = kl_divergence(guide(x), model.prior())
        analytic = ek.elbo(model, guide, x.repeat(4000, 1), kl="analytic")
        mc = ek.elbo(model, guide, x.repeat(4000, 1), kl="mc")
    torch.testing.assert_close(analytic.kl, exact_kl.repeat(4000), rtol=0, atol=1e-12)
    mc_kl = _replicates(mc.kl, 3)
    assert bool((mc_kl.std(0) > 0.1).all())
    z = _z(mc_kl, exact_kl)
    assert bool((z.abs() < Z).all()), z


def test_analytic_form_has_lower_variance_when_kl_noise_dominates(make_model) -> None:
    """With a weak likelihood (loadings scaled by 0.1) and a narrow q offset by 2 sd, the KL's sampling noise
    dominates the single-sample joint form, and the closed-form KL removes it: var(analytic) < 0.5 var(mc)
    over 2000 single-sample replicates (observed ratios below 0.05; a 2000-draw sample variance has a few
    percent relative error, so the margin is many standard errors).

    Not a general law: with q close to the posterior the joint form has the lower variance (it is
    zero-variance at q = p(z|x)), so this is checked only in the regime where the analytic KL pays."""
    base = make_model(5)
    model = LinearGaussian(0.1 * base.weight.detach(), base.bias.detach(), base.noise_scale.detach())
    x = _data(model)
    guide = _mean_field_guide(model, shift=2.0, scale=0.5)
    with torch.no_grad():
        analytic = _replicates(ek.elbo(model, guide, x.repeat(2000, 1), kl="analytic").value, 3)
        mc = _replicates(ek.elbo(model, guide, x.repeat(2000, 1), kl="mc").value, 3)
    ratio = analytic.var(0) / mc.var(0)
    assert bool((ratio < 0.5).all()), ratio


# ---- beta ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gradient", ["reparam", "score"])
@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 2.5])
def test_beta_value_is_reconstruction_minus_beta_kl(make_model, beta, kl, gradient) -> None:
    """value == reconstruction - beta * kl to 1e-12 (an identity up to float64 rounding) and loss ==
    -mean(value), with samples=3."""
    model = make_model(6)
    x = _data(model, 5)
    b = ek.elbo(
        model, _mean_field_guide(model, shift=0.5, scale=1.5), x, samples=3, kl=kl, beta=beta, gradient=gradient
    )
    torch.testing.assert_close(b.value, b.reconstruction - beta * b.kl, rtol=0, atol=1e-12)
    torch.testing.assert_close(b.loss, -b.value.mean(), rtol=0, atol=1e-12)
    assert b.kl_method == kl


@pytest.mark.parametrize("kl", ["analytic", "mc"])
@pytest.mark.parametrize("beta", [0.0, 2.5])
def test_beta_elbo_is_unbiased(make_model, beta, kl) -> None:
    """E[value] = E_q log p(x|z) - beta KL, with the exact reconstruction = exact_elbo + KL(q || p(z)):
    replicate mean within Z stderr over 4000 single-sample replicates."""
    model = make_model(6)
    x = _data(model)
    guide = _mean_field_guide(model, shift=0.5, scale=1.5)
    with torch.no_grad():
        q = guide(x)
        exact_kl = kl_divergence(q, model.prior())
        target = model.exact_elbo(x, q) + exact_kl - beta * exact_kl
        b = ek.elbo(model, guide, x.repeat(4000, 1), kl=kl, beta=beta)
    z = _z(_replicates(b.value, 3), target)
    assert bool((z.abs() < Z).all()), z


@pytest.mark.parametrize(
    ("covariance", "kl", "gradient", "expected"),
    [
        ("diagonal", "auto", "reparam", "analytic"),
        ("diagonal", "auto", "score", "analytic"),
        ("diagonal", "auto", "stl", "mc"),
        ("full", "auto", "reparam", "analytic"),
        ("full", "auto", "stl", "mc"),
        ("diagonal", "analytic", "reparam", "analytic"),
        ("full", "mc", "reparam", "mc"),
        ("full", "mc", "stl", "mc"),
    ],
)
def test_kl_method_is_recorded(make_model, covariance, kl, gradient, expected) -> None:
    """Bound.kl_method says which KL was used: "auto" takes the closed form for Gaussian q (diagonal or full
    covariance, the latter through the mixed MultivariateNormal/Independent pair) except under
    gradient="stl", which is defined on the sampled KL."""
    model = make_model(7)
    x = _data(model)
    guide = ek.LocalGaussian(3, 2, covariance=covariance)
    b = ek.elbo(model, guide, x, kl=kl, gradient=gradient)
    assert b.kl_method == expected
    assert b.gradient == gradient
    if expected == "analytic":
        torch.testing.assert_close(b.kl, kl_divergence(guide(x), model.prior()), rtol=0, atol=1e-12)


def _student_t_guide(x: Tensor) -> Distribution:
    """A q with no closed-form KL to the Gaussian prior in torch's registry."""
    zeros = torch.zeros(x.shape[0], 2)
    return Independent(torch.distributions.StudentT(5.0, zeros, torch.ones_like(zeros)), 1)


def test_auto_kl_falls_back_to_sampled_kl_without_closed_form(make_model) -> None:
    """kl="auto" with a q that has no registered KL to p(z) (Student-t) uses the sampled KL and says so; the
    value is then the joint form: value = reconstruction - kl to 1e-12."""
    model = make_model(7)
    x = _data(model)
    b = ek.elbo(model, _student_t_guide, x, samples=3, kl="auto")
    assert b.kl_method == "mc"
    torch.testing.assert_close(b.value, b.reconstruction - b.kl, rtol=0, atol=1e-12)


# ---- IWAE ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gradient", ["reparam", "dreg"])
def test_iwae_1_is_unbiased_for_exact_elbo(make_model, gradient) -> None:
    """IWAE_1 is the ELBO: the mean of 4000 replicates equals exact_elbo within Z stderr."""
    model = make_model(8)
    x = _data(model)
    guide = _mean_field_guide(model, shift=0.5, scale=1.5)
    with torch.no_grad():
        b = ek.iwae(model, guide, x.repeat(4000, 1), k=1, gradient=gradient)
        exact = model.exact_elbo(x, guide(x))
    z = _z(_replicates(b.value, 3), exact)
    assert bool((z.abs() < Z).all()), z


def test_iwae_increases_in_k_and_stays_below_log_evidence(make_model) -> None:
    """For k = 1, 2, 5, 20, 100 with a poor mean-field q (narrow and offset), each from 2000 independent
    replicates: consecutive means are non-decreasing, mean(IWAE_k') - mean(IWAE_k) > -Z * stderr of the
    difference; every mean <= log p(x) + Z * stderr; and the gap log p(x) - IWAE_k shrinks by more than
    Z stderr from k = 1 to k = 100."""
    model = make_model(9)
    x = _data(model)
    guide = _mean_field_guide(model, shift=1.0, scale=0.7)
    log_px = model.log_evidence(x).detach()
    with torch.no_grad():
        draws = {k: _replicates(ek.iwae(model, guide, x.repeat(2000, 1), k=k).value, 3) for k in (1, 2, 5, 20, 100)}
    ks = sorted(draws)
    for small, large in itertools.pairwise(ks):
        z = _two_sample_z(draws[small], draws[large])
        assert bool((z > -Z).all()), (small, large, z)
    for k in ks:
        z = _z(draws[k], log_px)
        assert bool((z < Z).all()), (k, z)
    z_shrink = _two_sample_z(draws[1], draws[100])
    assert bool((z_shrink > Z).all()), z_shrink


def test_iwae_converges_to_log_evidence(make_model) -> None:
    """With a mean-field q broader than the posterior (finite-variance weights), IWAE_5000 over 100
    replicates is within Z stderr of log p(x), and its gap is significantly smaller (by > Z stderr of the
    difference) than IWAE_5's gap over 2000 replicates."""
    model = make_model(10)
    _assert_finite_weight_variance(model, 1.5)
    x = _data(model)
    guide = _mean_field_guide(model, shift=0.5, scale=1.5)
    log_px = model.log_evidence(x).detach()
    with torch.no_grad():
        large = _replicates(ek.iwae(model, guide, x.repeat(100, 1), k=5000).value, 3)
        small = _replicates(ek.iwae(model, guide, x.repeat(2000, 1), k=5).value, 3)
    z = _z(large, log_px)
    assert bool((z.abs() < Z).all()), z
    z_shrink = _two_sample_z(small, large)
    assert bool((z_shrink > Z).all()), z_shrink


# ---- log_marginal --------------------------------------------------------------------------------------


def test_log_marginal_stderr_is_calibrated(make_model) -> None:
    """Across 1000 independent repetitions at k = 100 with a broad mean-field q (finite-variance weights),
    the empirical sd of the estimate matches the mean reported stderr within 12% (a 1000-draw sample sd has
    about 2.5% relative error, and the delta method's own finite-k bias is a few percent: ratios seen over
    5 models x 3 q's lie in [0.94, 1.07]); ESS lies in [1, k]."""
    model = make_model(11)
    _assert_finite_weight_variance(model, 1.3)
    x = _data(model)
    guide = _mean_field_guide(model, shift=0.3, scale=1.3)
    est = ek.log_marginal(model, guide, x.repeat(1000, 1), k=100)
    value, stderr = _replicates(est.value, 3), _replicates(est.stderr, 3)
    ratio = stderr.mean(0) / value.std(0)
    assert bool(((ratio - 1).abs() < 0.12).all()), ratio
    assert bool(((est.ess >= 1) & (est.ess <= 100)).all())
    assert not est.value.requires_grad


def test_log_marginal_is_within_its_stderr_at_large_k(make_model) -> None:
    """At k = 5000, |estimate - log p(x)| / reported stderr < Z for each of 5 points; the stderr is
    positive (q is not the posterior) and the ESS is in [1, k]."""
    model = make_model(12)
    _assert_finite_weight_variance(model, 1.3)
    x = _data(model, 5)
    est = ek.log_marginal(model, _mean_field_guide(model, shift=0.3, scale=1.3), x, k=5000)
    assert bool((est.stderr > 0).all())
    z = (est.value - model.log_evidence(x).detach()) / est.stderr
    assert bool((z.abs() < Z).all()), z
    assert bool(((est.ess >= 1) & (est.ess <= 5000)).all())


def test_log_marginal_chunking_keeps_the_distribution(make_model) -> None:
    """chunk_size=7 vs None at k = 100, 300 repetitions each: means agree (two-sample |z| < Z), sds agree
    within 25% (the ratio of two 300-draw sample sds has about 6% relative sd), reported stderrs agree
    within 10% on average, and ESS stays in [1, k]."""
    model = make_model(13)
    _assert_finite_weight_variance(model, 1.3)
    x = _data(model)
    guide = _mean_field_guide(model, shift=0.3, scale=1.3)
    whole = ek.log_marginal(model, guide, x.repeat(300, 1), k=100)
    chunked = ek.log_marginal(model, guide, x.repeat(300, 1), k=100, chunk_size=7)
    a, b = _replicates(whole.value, 3), _replicates(chunked.value, 3)
    z = _two_sample_z(a, b)
    assert bool((z.abs() < Z).all()), z
    assert bool(((b.std(0) / a.std(0) - 1).abs() < 0.25).all())
    se_ratio = _replicates(chunked.stderr, 3).mean(0) / _replicates(whole.stderr, 3).mean(0)
    assert bool(((se_ratio - 1).abs() < 0.1).all()), se_ratio
    for est in (whole, chunked):
        assert bool(((est.ess >= 1) & (est.ess <= 100)).all())


# ---- chunking ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["iwae", "elbo"])
def test_chunking_keeps_the_distribution(make_model, estimator) -> None:
    """chunk_size=3 vs None with 10 samples per point, 1000 replicates each (autograd on, so the chunked
    run goes through checkpointing): the replicate means agree within Z stderr of their difference."""
    model = make_model(14)
    x = _data(model)
    guide = _mean_field_guide(model, shift=0.5, scale=1.5)
    xr = x.repeat(1000, 1)

    def run(chunk_size: int | None) -> Tensor:
        if estimator == "iwae":
            return ek.iwae(model, guide, xr, k=10, chunk_size=chunk_size).value.detach()
        return ek.elbo(model, guide, xr, samples=10, kl="mc", chunk_size=chunk_size).value.detach()

    z = _two_sample_z(_replicates(run(None), 3), _replicates(run(3), 3))
    assert bool((z.abs() < Z).all()), z


CHUNK_CONFIGS = [
    ("iwae", "reparam", "mc"),
    ("iwae", "stl", "mc"),
    ("iwae", "dreg", "mc"),
    ("elbo", "reparam", "mc"),
    ("elbo", "reparam", "analytic"),
    ("elbo", "score", "mc"),
    ("elbo", "score", "analytic"),
    ("elbo", "stl", "mc"),
]


@pytest.mark.parametrize(("estimator", "gradient", "kl"), CHUNK_CONFIGS)
def test_chunked_values_and_gradients_are_exact(make_model, monkeypatch, estimator, gradient, kl) -> None:
    """With noise drawn one sample at a time (RowwiseNormal in a diagonal LocalGaussian), chunk_size=3 and
    chunk_size=None see the same z: the values are bit-for-bit identical (same operations on the same
    numbers) and loss.backward() gives the same gradients on the guide's loc and raw_scale and on the
    model's weight to 1e-10. The chunked run must re-run the decoder in the backward pass (activation
    checkpointing): with k = 10 the likelihood is called 4 times forward and once more per chunk in backward."""
    monkeypatch.setattr("elbokit.guides._gaussian.Normal", RowwiseNormal)
    model = make_model(15)
    x = _data(model, 4)
    init_loc = model.posterior(x).loc.detach() + 0.3
    calls = []
    likelihood = model.likelihood
    monkeypatch.setattr(model, "likelihood", lambda z: calls.append(z.shape[0]) or likelihood(z))

    def run(chunk_size: int | None) -> tuple[Tensor, list[Tensor]]:
        guide = ek.LocalGaussian(4, 2, init_loc=init_loc, init_scale=0.8)
        assert isinstance(guide(x).base_dist, RowwiseNormal)
        model.zero_grad()
        calls.clear()
        torch.manual_seed(99)
        if estimator == "iwae":
            b = ek.iwae(model, guide, x, k=10, gradient=gradient, chunk_size=chunk_size)
        else:
            b = ek.elbo(model, guide, x, samples=10, kl=kl, gradient=gradient, chunk_size=chunk_size)
        b.loss.backward()
        grads = [guide.loc.grad, guide.raw_scale.grad, model.weight.grad]
        return b.value.detach(), [g.clone() for g in grads]

    value, grads = run(None)
    assert calls == [10]
    value_chunked, grads_chunked = run(3)
    assert calls[:4] == [3, 3, 3, 1]  # forward, chunk by chunk
    assert sorted(calls[4:]) == [1, 3, 3, 3]  # each chunk re-run once in backward (in reverse order)
    assert torch.equal(value_chunked, value), (value_chunked - value).abs().max()
    for g_chunked, g in zip(grads_chunked, grads, strict=True):
        assert bool(g.abs().sum() > 0)
        torch.testing.assert_close(g_chunked, g, rtol=0, atol=1e-10)


def test_chunked_log_marginal_is_exact(make_model, monkeypatch) -> None:
    """log_marginal's running max-shifted sums give the same value, stderr and ESS (to 1e-12 relative) as
    one pass when chunked (chunk_size=3, k=20) over the same z (RowwiseNormal noise)."""
    monkeypatch.setattr("elbokit.guides._gaussian.Normal", RowwiseNormal)
    model = make_model(16)
    x = _data(model, 4)
    guide = ek.LocalGaussian(4, 2, init_loc=model.posterior(x).loc.detach() + 0.3, init_scale=0.8)
    torch.manual_seed(5)
    whole = ek.log_marginal(model, guide, x, k=20)
    torch.manual_seed(5)
    chunked = ek.log_marginal(model, guide, x, k=20, chunk_size=3)
    for a, b in [(whole.value, chunked.value), (whole.stderr, chunked.stderr), (whole.ess, chunked.ess)]:
        torch.testing.assert_close(b, a, rtol=1e-12, atol=0)
    assert bool((whole.stderr > 0).all())


# ---- memory ----------------------------------------------------------------------------------------------


def test_default_chunk_bounds_memory_at_mnist_scale() -> None:
    """k = 5000 on 1000 points of dimension 784: one (chunk, B, D) float32 tensor stays under 2 GiB, and the
    samples really are split (chunk < k)."""
    chunk = default_chunk(5000, torch.empty(1000, 784))
    assert 1 <= chunk < 5000
    assert chunk * 1000 * 784 * 4 < 2**31


def test_default_chunk_is_cache_sized_without_autograd_on_cpu() -> None:
    """Without autograd a CPU chunk stays under CPU_EVAL_CHUNK_ELEMENTS (2^21: 26 samples of 100 x 784); under
    autograd, where a chunk is checkpointed and re-run, the memory bound CHUNK_ELEMENTS (2^24) applies, so
    training-sized calls (k = 50 at batch 128) are not chunked."""
    x = torch.empty(100, 784)
    with torch.no_grad():
        assert default_chunk(5000, x) == _weights.CPU_EVAL_CHUNK_ELEMENTS // (100 * 784) == 26
    assert default_chunk(5000, x) == _weights.CHUNK_ELEMENTS // (100 * 784) == 213
    assert default_chunk(50, torch.empty(128, 784)) == 50


class _TinyDecoderModel(torch.nn.Module):
    """A small MLP-like model: z (2,) -> Bernoulli logits over 784 pixels."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = torch.nn.Linear(2, 784)
        self.event_shape = torch.Size((784,))

    def prior(self) -> Distribution:
        return Independent(Normal(torch.zeros(2), torch.ones(2)), 1)

    def likelihood(self, z: Tensor) -> Distribution:
        return Independent(torch.distributions.Bernoulli(logits=self.decoder(z)), 1)


def test_log_marginal_draws_in_chunks_at_mnist_scale(monkeypatch) -> None:
    """ek.log_marginal(k=5000) on 1000 x 784 asks log_weights for chunks of at most default_chunk samples
    (each under 2 GiB as float32), k in total; log_weights is replaced by a stub returning zero log weights,
    so nothing large is computed, and the merged estimate is then exactly log 1 = 0 with ESS = k."""
    requested = []

    def stub(model, q, x, k, **kwargs) -> LogWeights:
        requested.append(k)
        zeros = torch.zeros(k, x.shape[0])
        return LogWeights(zeros, zeros, zeros)

    monkeypatch.setattr(marginal, "log_weights", stub)
    model = _TinyDecoderModel()
    guide = ek.AmortizedGaussian.mlp(784, 2, hidden=(8,))
    x = torch.bernoulli(torch.full((1000, 784), 0.3))
    est = ek.log_marginal(model, guide, x, k=5000)
    assert sum(requested) == 5000
    assert len(requested) > 1
    assert max(requested) * 1000 * 784 * 4 < 2**31
    torch.testing.assert_close(est.value, torch.zeros(1000), rtol=0, atol=1e-12)
    torch.testing.assert_close(est.ess, torch.full((1000,), 5000.0), rtol=1e-12, atol=0)


def test_chunk_elements_controls_the_split(make_model, monkeypatch) -> None:
    """default_chunk follows CHUNK_ELEMENTS: with a budget of 60 elements and 4 x 5 data, log_marginal draws
    3 samples at a time (60 // 20), 10 in total."""
    monkeypatch.setattr(_weights, "CHUNK_ELEMENTS", 60)
    requested = []
    real = marginal.log_weights

    def spy(model, q, x, k, **kwargs) -> LogWeights:
        requested.append(k)
        return real(model, q, x, k, **kwargs)

    monkeypatch.setattr(marginal, "log_weights", spy)
    model = make_model(17)
    x = _data(model, 4)
    ek.log_marginal(model, _mean_field_guide(model, shift=0.3, scale=1.3), x, k=10)
    assert requested == [3, 3, 3, 1]


def test_checkpointed_chunks_take_x_as_a_tensor_argument(make_model, monkeypatch) -> None:
    """torch's checkpoint restores the RNG state only of devices of its tensor arguments; a chunk re-run in
    the backward pass must redraw the same z on CUDA too, so x (on the data's device) must be one of them."""
    seen = []
    real = _weights.checkpoint

    def spy(function, *args, **kwargs):
        seen.append([a for a in args if isinstance(a, Tensor)])
        return real(function, *args, **kwargs)

    monkeypatch.setattr(_weights, "checkpoint", spy)
    model = make_model(17)
    x = _data(model, 4)
    guide = ek.LocalGaussian(4, 2)
    ek.iwae(model, guide, x, k=6, chunk_size=2, gradient="dreg").loss.backward()
    assert len(seen) == 3
    assert all(any(t is x for t in tensors) for tensors in seen)


# ---- bad arguments -------------------------------------------------------------------------------------


def _with_nan(x: Tensor) -> Tensor:
    x = x.clone()
    x[1, 2] = float("nan")
    return x


def _wrong_event_guide(x: Tensor) -> Distribution:
    return Independent(Normal(torch.zeros(x.shape[0], 3), torch.ones(x.shape[0], 3)), 1)


def _short_batch_guide(x: Tensor) -> Distribution:
    return Independent(Normal(torch.zeros(x.shape[0] - 1, 2), torch.ones(x.shape[0] - 1, 2)), 1)


def _tuple_guide(x: Tensor) -> tuple[Tensor, Tensor]:
    return torch.zeros(x.shape[0], 2), torch.zeros(x.shape[0], 2)


# (call(model, guide, x), regex naming what was expected and what was given, raised before the guide runs?)
BAD_CALLS = [
    pytest.param(lambda m, g, x: ek.elbo(m, g, x, beta=-0.5), r"beta must be .*>= 0.*-0\.5", True, id="beta<0"),
    pytest.param(lambda m, g, x: ek.elbo(m, g, x, beta=float("nan")), r"beta must be .*>= 0.*nan", True, id="beta=nan"),
    pytest.param(lambda m, g, x: ek.iwae(m, g, x, k=0), r"k must be .*>= 1.*got 0", True, id="iwae k=0"),
    pytest.param(lambda m, g, x: ek.iwae(m, g, x, k=-3), r"k must be .*>= 1.*got -3", True, id="iwae k<0"),
    pytest.param(lambda m, g, x: ek.log_marginal(m, g, x, k=0), r"k must be .*>= 1.*got 0", True, id="marginal k=0"),
    pytest.param(lambda m, g, x: ek.log_marginal(m, g, x, k=1), r"k must be >= 2.*got 1", True, id="marginal k=1"),
    pytest.param(lambda m, g, x: ek.elbo(m, g, x, samples=-1), r"samples must be .*>= 1.*got -1", True, id="samples<0"),
    pytest.param(lambda m, g, x: ek.elbo(m, g, x, samples=0), r"samples must be .*>= 1.*got 0", True, id="samples=0"),
    pytest.param(lambda m, g, x: ek.iwae(m, g, x, k=4, chunk_size=0), r"chunk_size .*>= 1.*got 0", False, id="chunk=0"),
    pytest.param(lambda m, g, x: ek.elbo(m, g, x[:, :4]), r"event shape \(5,\).*got \(4,\)", True, id="x event"),
    pytest.param(lambda m, g, x: ek.iwae(m, g, x[0], k=2), r"\(B, \*event\).*got shape \(5,\)", True, id="x 1-D"),
    pytest.param(
        lambda m, g, x: ek.log_marginal(m, g, _with_nan(x), k=4), r"x must be finite, got 1 NaN", True, id="x NaN"
    ),
    pytest.param(
        lambda m, g, x: ek.elbo(m, _short_batch_guide, x), r"batch shape \(3,\).*got \(2,\)", False, id="q batch"
    ),
    pytest.param(
        lambda m, g, x: ek.iwae(m, _wrong_event_guide, x, k=2), r"event shape \(2,\).*got \(3,\)", False, id="q event"
    ),
    pytest.param(
        lambda m, g, x: ek.elbo(m, _tuple_guide, x), r"Distribution.*got tuple", False, id="q not a Distribution"
    ),
    pytest.param(
        lambda m, g, x: ek.elbo(m, _student_t_guide, x, kl="analytic"),
        r"no closed-form KL.*kl='mc' or kl='auto'",
        False,
        id="analytic kl not registered",
    ),
    pytest.param(
        lambda m, g, x: ek.elbo(m, g, x, kl="banana"), r"'analytic', 'mc' or 'auto'.*banana", True, id="kl=banana"
    ),
    pytest.param(
        lambda m, g, x: ek.elbo(m, g, x, gradient="banana"),
        r"'reparam', 'score' or 'stl'.*banana",
        True,
        id="elbo gradient=banana",
    ),
    pytest.param(
        lambda m, g, x: ek.iwae(m, g, x, gradient="banana"),
        r"'reparam', 'stl' or 'dreg'.*banana",
        True,
        id="iwae gradient=banana",
    ),
    pytest.param(
        lambda m, g, x: ek.elbo(m, g, x, gradient="stl", kl="analytic"),
        r"gradient='stl'.*kl='mc' or kl='auto'",
        True,
        id="stl with analytic kl",
    ),
    pytest.param(
        lambda m, g, x: ek.elbo(m, g, x, gradient="dreg"),
        r"'reparam', 'score' or 'stl'.*dreg",
        True,
        id="elbo gradient=dreg",
    ),
    pytest.param(
        lambda m, g, x: ek.iwae(m, g, x, gradient="score"),
        r"'reparam', 'stl' or 'dreg'.*score",
        True,
        id="iwae gradient=score",
    ),
]


@pytest.mark.parametrize(("call", "match", "before_guide"), BAD_CALLS)
def test_bad_arguments_raise_value_error(make_model, call, match, before_guide) -> None:
    """Each bad argument raises ValueError with a message naming what was expected and what was given;
    argument and data errors are raised before the guide is called (checked early)."""
    model = make_model(18)
    x = _data(model)
    guide_calls = []

    def guide(x_: Tensor) -> Distribution:
        guide_calls.append(x_.shape)
        return model.posterior(x_)

    with pytest.raises(ValueError, match=match):
        call(model, guide, x)
    if before_guide:
        assert guide_calls == []
