"""One conformance suite over every estimator configuration.

Configurations: ``ek.elbo`` x gradient (reparam, score, stl) x kl (analytic, mc, auto; stl + analytic is
invalid) x samples (1, 3); ``ek.iwae`` x gradient (reparam, stl, dreg) x k (1, 4), and vimco at k = 4;
``ek.log_marginal`` (k=8).
Each runs on a LinearGaussian model with an amortized encoder and with a full-covariance local guide
(result types and shapes, finiteness, backward, recorded metadata), and with guides equal to the exact
posterior (every bound is log p(x)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

import elbokit as ek
from conftest import Z
from elbokit.models import LinearGaussian

BATCH = 4


class Config(NamedTuple):
    """One estimator configuration."""

    estimator: str  # "elbo" | "iwae" | "log_marginal"
    gradient: str | None
    kl: str | None
    samples: int

    @property
    def id(self) -> str:
        parts = [self.estimator, self.gradient, self.kl, f"K{self.samples}"]
        return "-".join(p for p in parts if p is not None)

    @property
    def kl_method(self) -> str:
        """The KL the result must report: the closed form for Gaussians unless sampled or STL."""
        if self.estimator == "iwae" or self.kl == "mc" or self.gradient == "stl":
            return "mc"
        return "analytic"

    def run(self, model: LinearGaussian, guide: Callable[[Tensor], Distribution], x: Tensor):
        if self.estimator == "elbo":
            return ek.elbo(model, guide, x, samples=self.samples, kl=self.kl, gradient=self.gradient)
        if self.estimator == "iwae":
            return ek.iwae(model, guide, x, k=self.samples, gradient=self.gradient)
        return ek.log_marginal(model, guide, x, k=self.samples)


CONFIGS = [
    *(
        Config("elbo", gradient, kl, samples)
        for gradient in ("reparam", "score", "stl")
        for kl in ("analytic", "mc", "auto")
        for samples in (1, 3)
        if not (gradient == "stl" and kl == "analytic")
    ),
    *(Config("iwae", gradient, None, k) for gradient in ("reparam", "stl", "dreg") for k in (1, 4)),
    Config("iwae", "vimco", None, 4),  # VIMCO's leave-one-out baselines need k >= 2
    Config("log_marginal", None, None, 8),
]
CONFIG_IDS = [c.id for c in CONFIGS]


def _setup(make_model: Callable[..., LinearGaussian]) -> tuple[LinearGaussian, Tensor]:
    model = make_model(20)
    return model, model.sample(BATCH, generator=torch.Generator().manual_seed(21)).x


def _guide(kind: str, model: LinearGaussian, x: Tensor) -> nn.Module:
    """The guides under test: an MLP encoder, or free full-covariance q_n away from the posterior."""
    if kind == "amortized":
        torch.manual_seed(22)  # the encoder's initial weights
        return ek.AmortizedGaussian.mlp(model.data_dim, model.latent_dim, hidden=(8,)).double()
    init_loc = model.posterior(x).loc.detach() + 0.3
    return ek.LocalGaussian(x.shape[0], model.latent_dim, covariance="full", init_loc=init_loc, init_scale=0.7)


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def _exact_amortized_guide(model: LinearGaussian) -> ek.AmortizedGaussian:
    """A full-covariance AmortizedGaussian whose linear encoder outputs the exact posterior for any x:
    mean = A (x - b) with A = Lambda^{-1} W^T Psi^{-1}, and a constant Cholesky factor of Lambda^{-1}."""
    d, data_dim = model.latent_dim, model.data_dim
    guide = ek.AmortizedGaussian(nn.Linear(data_dim, ek.AmortizedGaussian.output_size(d, "full")), d, covariance="full")
    with torch.no_grad():
        precision = model.posterior_precision()
        gain = torch.linalg.solve(precision, model.weight.T / model.noise_scale.expand(data_dim).square())
        tril = torch.linalg.cholesky(torch.linalg.inv(precision))
        raw = tril.tril(-1) + torch.diag_embed(_inverse_softplus(tril.diagonal() - guide.min_scale))
        rows, cols = torch.tril_indices(d, d)
        linear = guide.encoder
        linear.weight.zero_()
        linear.weight[:d] = gain
        linear.bias[:d] = -gain @ model.bias
        linear.bias[d:] = raw[rows, cols]
    return guide


def _exact_guide(kind: str, model: LinearGaussian, x: Tensor) -> Callable[[Tensor], Distribution]:
    """q = p(z|x) three ways: the posterior itself, a LocalGaussian initialised at it, an exact encoder."""
    if kind == "posterior":
        return lambda x_: model.posterior(x_)
    if kind == "local":
        return ek.LocalGaussian.from_distribution(model.posterior(x))
    return _exact_amortized_guide(model)


@pytest.mark.parametrize("guide_kind", ["amortized", "local_full"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_conformance(make_model, config, guide_kind) -> None:
    """Types, (B,) shapes and scalar loss, finite values, recorded samples/gradient/kl_method, the identities
    between value, reconstruction and kl (ELBO at beta=1: value = reconstruction - kl to 1e-12; IWAE: value >=
    reconstruction - kl by Jensen, with equality at k=1), loss = -mean(value), and loss.backward() giving
    finite, non-None, not-all-zero gradients on every guide and model parameter. log_marginal returns a
    detached Estimate (no autograd graph, no gradients written) with stderr >= 0 and ESS in [1, k]."""
    model, x = _setup(make_model)
    guide = _guide(guide_kind, model, x)
    params = [*guide.parameters(), *model.parameters()]
    result = config.run(model, guide, x)

    if config.estimator == "log_marginal":
        assert isinstance(result, ek.Estimate)
        assert result.samples == config.samples
        for t in (result.value, result.stderr, result.ess):
            assert t.shape == (BATCH,)
            assert bool(torch.isfinite(t).all())
            assert not t.requires_grad and t.grad_fn is None
        assert result.pareto_k is None or result.pareto_k.shape == (BATCH,)
        assert bool((result.stderr >= 0).all())
        assert bool(((result.ess >= 1) & (result.ess <= config.samples)).all())
        assert all(p.grad is None for p in params)
        return

    assert isinstance(result, ek.Bound)
    for t in (result.value, result.reconstruction, result.kl):
        assert t.shape == (BATCH,)
        assert bool(torch.isfinite(t).all())
    assert result.loss.shape == ()
    assert bool(torch.isfinite(result.loss))
    assert result.samples == config.samples
    assert result.gradient == config.gradient
    assert result.kl_method == config.kl_method
    torch.testing.assert_close(result.loss, -result.value.mean(), rtol=0, atol=1e-12)
    lower = result.reconstruction - result.kl
    if config.estimator == "elbo" or config.samples == 1:
        torch.testing.assert_close(result.value, lower, rtol=0, atol=1e-12)
    else:
        assert bool((result.value >= lower - 1e-12).all())

    result.loss.backward()
    for p in params:
        assert p.grad is not None
        assert bool(torch.isfinite(p.grad).all())
        assert bool((p.grad != 0).any())


@pytest.mark.parametrize("guide_kind", ["posterior", "local", "amortized"])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_exact_posterior(make_model, config, guide_kind) -> None:
    """With q = p(z|x) (the posterior, a LocalGaussian at it, or an exact linear encoder) each log weight is
    log p(x): sampled-KL ELBOs, IWAE and log_marginal equal log p(x) to 1e-10 (log_marginal with stderr < 1e-6
    and ESS = k). The analytic-KL ELBO, E_q log p(x|z) - KL, is exact only in expectation: its kl equals
    KL(q || p(z)) to 1e-12 and the mean over 500 replicates is within Z stderr of log p(x)."""
    model, x = _setup(make_model)
    log_px = model.log_evidence(x).detach()

    if config.kl_method == "mc" or config.estimator == "log_marginal":
        result = config.run(model, _exact_guide(guide_kind, model, x), x)
        torch.testing.assert_close(result.value.detach(), log_px, rtol=0, atol=1e-10)
        if config.estimator == "log_marginal":
            assert bool((result.stderr < 1e-6).all())
            torch.testing.assert_close(result.ess, torch.full_like(result.ess, config.samples), rtol=1e-10, atol=0)
        return

    repeats = 500
    xr = x.repeat(repeats, 1)
    result = config.run(model, _exact_guide(guide_kind, model, xr), xr)
    assert result.kl_method == "analytic"
    exact_kl = kl_divergence(model.posterior(x), model.prior()).detach().repeat(repeats)
    torch.testing.assert_close(result.kl.detach(), exact_kl, rtol=0, atol=1e-12)
    draws = result.value.detach().reshape(repeats, BATCH)
    z = (draws.mean(0) - log_px) / (draws.std(0) / math.sqrt(repeats))
    assert bool((z.abs() < Z).all()), z
