r"""Conformance of ``detach_parameters`` over guide families: log q_{stop(phi)}(z) for STL and DReG.

For each family (Independent Normal, MultivariateNormal, LowRankMultivariateNormal, Beta, Kumaraswamy, LogNormal,
Gamma, Dirichlet, Independent of a TransformedDistribution, a TransformedDistribution with an affine and a
learnable coupling transform, zuko flows), built from leaves that require grad:

(a) the detached copy's log_prob equals q's; (b) its gradient in q's parameters at fixed z is zero (or absent);
(c) its gradient in z is that of q.log_prob; (d) ``ek.elbo(gradient="stl")`` and ``ek.iwae(gradient="stl" |
"dreg")`` give finite, non-zero gradients under a model whose prior has the family's support. And (e) where the
family contains the exact posterior (linear-Gaussian, Beta-Bernoulli, Gamma-Poisson, Dirichlet-multinomial), the
STL and DReG guide gradients are 0 for every draw (Roeder et al. 2017; Tucker et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Beta,
    Dirichlet,
    Distribution,
    Gamma,
    Independent,
    Kumaraswamy,
    LogNormal,
    LowRankMultivariateNormal,
    Multinomial,
    MultivariateNormal,
    Normal,
    Poisson,
    TransformedDistribution,
    constraints,
)
from torch.distributions.transforms import AffineTransform, SigmoidTransform, Transform

import elbokit as ek
from conftest import random_linear_gaussian
from elbokit.distributions import detach_parameters
from elbokit.distributions._detach import _StopParameterGradient
from elbokit.estimators import _weights

B, D, N = 3, 2, 6  # data points, latent dimension d, observations per latent coordinate


def _repeat(z: Tensor, n: int) -> Tensor:
    """(*batch, d) -> (*batch, n d): each coordinate observed n times."""
    return z.unsqueeze(-2).expand(*z.shape[:-1], n, z.shape[-1]).flatten(-2)


class BetaBernoulli:
    """z_j ~ Beta(a, b), x_ij ~ Bernoulli(z_j) (event (n d,)); p(z|x) = Beta(a + s_j, b + n - s_j)."""

    def __init__(self, a: float = 2.0, b: float = 3.0, n: int = N) -> None:
        self.a, self.b, self.n = torch.full((D,), a), torch.full((D,), b), n

    def prior(self) -> Distribution:
        return Independent(Beta(self.a, self.b), 1)

    def likelihood(self, z: Tensor) -> Distribution:
        return Independent(Bernoulli(probs=_repeat(z, self.n)), 1)

    def posterior(self, x: Tensor) -> Distribution:
        s = x.unflatten(-1, (self.n, D)).sum(-2)  # (B, d)
        return Independent(Beta(self.a + s, self.b + self.n - s), 1)


class GammaPoisson:
    """z_j ~ Gamma(a, b), x_ij ~ Poisson(z_j) (event (n d,)); p(z|x) = Gamma(a + s_j, b + n)."""

    def __init__(self, a: float = 3.0, b: float = 1.0, n: int = N) -> None:
        self.a, self.b, self.n = torch.full((D,), a), torch.full((D,), b), n

    def prior(self) -> Distribution:
        return Independent(Gamma(self.a, self.b), 1)

    def likelihood(self, z: Tensor) -> Distribution:
        return Independent(Poisson(_repeat(z, self.n)), 1)

    def posterior(self, x: Tensor) -> Distribution:
        s = x.unflatten(-1, (self.n, D)).sum(-2)  # (B, d)
        return Independent(Gamma(self.a + s, self.b + self.n), 1)


class DirichletMultinomial:
    """z ~ Dirichlet(alpha) on the simplex (event (d,)), x ~ Multinomial(n, z); p(z|x) = Dirichlet(alpha + x)."""

    def __init__(self, n: int = N) -> None:
        self.alpha, self.n = torch.tensor([2.0, 1.5]), n

    def prior(self) -> Distribution:
        return Dirichlet(self.alpha)

    def likelihood(self, z: Tensor) -> Distribution:
        return Multinomial(self.n, probs=z)

    def posterior(self, x: Tensor) -> Distribution:
        return Dirichlet(self.alpha + x)


class Coupling(Transform):
    """y = (x_1, x_2 exp(s(x_1)) + t(x_1)) with (t, s) from an ``nn.Linear``: a learnable affine coupling layer."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, net: nn.Linear) -> None:
        super().__init__()
        self.net = net

    def _call(self, x: Tensor) -> Tensor:
        t, s = self.net(x[..., :1]).chunk(2, -1)
        return torch.cat([x[..., :1], x[..., 1:] * s.exp() + t], -1)

    def _inverse(self, y: Tensor) -> Tensor:
        t, s = self.net(y[..., :1]).chunk(2, -1)
        return torch.cat([y[..., :1], (y[..., 1:] - t) * (-s).exp()], -1)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.net(x[..., :1]).chunk(2, -1)[1].sum(-1)


Guide = Callable[[Tensor], Distribution]


def _leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_(True)


def _guide(family: str, x: Tensor) -> tuple[Guide, list[Tensor]]:
    """A guide of the family with batch (B,), event (d,), away from the posterior, and its parameters."""
    g = torch.Generator().manual_seed(5)
    loc, pos, pos2 = (
        _leaf(torch.randn(B, D, generator=g)),
        *(_leaf(0.5 + torch.rand(B, D, generator=g)) for _ in "ab"),
    )
    if family == "independent-normal":
        return lambda _: Independent(Normal(loc, pos), 1), [loc, pos]
    if family == "mvn":
        tril = _leaf(torch.diag_embed(pos) + torch.randn(B, D, D, generator=g).tril(-1))
        return lambda _: MultivariateNormal(loc, scale_tril=tril), [loc, tril]
    if family == "low-rank-mvn":
        factor = _leaf(torch.randn(B, D, 1, generator=g))
        return lambda _: LowRankMultivariateNormal(loc, factor, pos), [loc, factor, pos]
    if family in ("beta", "kumaraswamy", "gamma"):
        kind = {"beta": Beta, "kumaraswamy": Kumaraswamy, "gamma": Gamma}[family]
        return lambda _: Independent(kind(pos * 3, pos2 * 3), 1), [pos, pos2]
    if family == "lognormal":
        return lambda _: Independent(LogNormal(loc, pos), 1), [loc, pos]
    if family == "dirichlet":
        return lambda _: Dirichlet(pos * 3), [pos]
    if family == "independent-transformed":  # a logit-normal on (0, 1) from torch's transforms, one cached
        shift = _leaf(torch.randn(B, D, generator=g))
        return lambda _: Independent(
            TransformedDistribution(Normal(loc, pos), [AffineTransform(shift, pos2), SigmoidTransform(cache_size=1)]), 1
        ), [loc, pos, shift, pos2]
    if family == "transformed-affine-cached":  # cached: log_prob of a draw would return the stored base draw
        base = Independent(Normal(torch.zeros(B, D), 1.0), 1)
        return lambda _: TransformedDistribution(base, AffineTransform(loc, pos, event_dim=1, cache_size=1)), [loc, pos]
    if family == "transformed-learnable":
        torch.manual_seed(6)  # the coupling layer's initial weights
        net = nn.Linear(1, 2)
        affine = AffineTransform(loc, pos, event_dim=1, cache_size=1)  # cached, so the cache is exercised too
        base = Independent(Normal(torch.zeros(B, D), 1.0), 1)
        return lambda _: TransformedDistribution(base, [affine, Coupling(net)]), [loc, pos, *net.parameters()]
    zuko = pytest.importorskip("zuko")
    torch.manual_seed(7)  # the flow's initial weights
    make = {"zuko-maf": zuko.flows.MAF, "zuko-nsf": zuko.flows.NSF}[family]
    flow = make(features=D, context=x.shape[-1], transforms=2, hidden_features=(16, 16))
    return flow, list(flow.parameters())


class Case(NamedTuple):
    family: str
    model: str  # the model whose prior has the family's support
    rebuilt: bool  # rebuilt with detached parameters (else wrapped: two log_prob calls)


CASES = [
    Case("independent-normal", "linear-gaussian", True),
    Case("mvn", "linear-gaussian", True),
    Case("low-rank-mvn", "linear-gaussian", True),
    Case("beta", "beta-bernoulli", True),
    Case("kumaraswamy", "beta-bernoulli", True),
    Case("lognormal", "gamma-poisson", True),
    Case("gamma", "gamma-poisson", True),
    Case("dirichlet", "dirichlet-multinomial", True),
    Case("independent-transformed", "beta-bernoulli", True),
    Case("transformed-affine-cached", "linear-gaussian", True),
    Case("transformed-learnable", "linear-gaussian", False),
    Case("zuko-maf", "linear-gaussian", False),
    Case("zuko-nsf", "linear-gaussian", False),
]


def _model(name: str):
    if name == "linear-gaussian":
        return random_linear_gaussian(torch.Generator().manual_seed(3), data_dim=4, latent_dim=D)
    return {
        "beta-bernoulli": BetaBernoulli,
        "gamma-poisson": GammaPoisson,
        "dirichlet-multinomial": DirichletMultinomial,
    }[name]()


def _data(model) -> Tensor:
    """B data points from the model (torch's global RNG, seeded per test in conftest)."""
    with torch.no_grad():
        return model.likelihood(model.prior().sample((B,))).sample()


@pytest.mark.parametrize("case", CASES, ids=[c.family for c in CASES])
def test_detached_log_prob(case: Case) -> None:
    """(a) same log_prob as q to 1e-12 (exact but where q's cached transform returns its stored input); (b) no
    gradient in q's parameters at fixed z (none at all where rebuilt, < 1e-12 where wrapped); (c) the gradient
    in z equals that of q.log_prob to 1e-12."""
    x = _data(_model(case.model))
    guide, params = _guide(case.family, x)
    q = guide(x)
    detached = detach_parameters(q)
    assert (type(detached) is type(q)) == case.rebuilt
    assert (detached.batch_shape, detached.event_shape) == (q.batch_shape, q.event_shape)
    z = q.sample((4,))  # (4, B, d)

    log_q = detached.log_prob(z)  # (4, B)
    torch.testing.assert_close(log_q, q.log_prob(z).detach(), rtol=0, atol=1e-12)
    assert log_q.requires_grad != case.rebuilt
    if log_q.requires_grad:
        for grad in torch.autograd.grad(log_q.sum(), params, allow_unused=True):
            assert grad is None or float(grad.abs().max()) < 1e-12

    z_leaf = z.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(detached.log_prob(z_leaf).sum(), z_leaf)
    (expected,) = torch.autograd.grad(q.log_prob(z_leaf).sum(), z_leaf)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("estimator", ["elbo-stl", "iwae-stl", "iwae-dreg"])
@pytest.mark.parametrize("case", CASES, ids=[c.family for c in CASES])
def test_path_estimators_run_for_the_family(case: Case, estimator: str) -> None:
    """(d) ek.elbo(kl="mc", gradient="stl") and ek.iwae(k=8, gradient="stl" | "dreg"): finite bound, finite
    gradients in every guide parameter, and not all of them zero."""
    model = _model(case.model)
    x = _data(model)
    guide, params = _guide(case.family, x)
    if estimator == "elbo-stl":
        bound = ek.elbo(model, guide, x, samples=2, kl="mc", gradient="stl")
    else:
        bound = ek.iwae(model, guide, x, k=8, gradient=estimator.removeprefix("iwae-"))
    assert bool(torch.isfinite(bound.value).all())
    grads = torch.autograd.grad(bound.loss, params, allow_unused=True)
    assert all(g is None or bool(torch.isfinite(g).all()) for g in grads)
    assert any(g is not None and bool((g != 0).any()) for g in grads)


@pytest.mark.parametrize("estimator", ["elbo-stl", "iwae-dreg"])
@pytest.mark.parametrize("family", ["independent-normal", "mvn", "transformed-affine-cached"])
def test_wrapped_and_rebuilt_give_the_same_gradient(monkeypatch, family: str, estimator: str) -> None:
    """The generic wrapper (two log_prob calls) and the rebuilt copy give the same STL and DReG gradients for
    the same draws, to 1e-10: the wrapper's gradient in phi reaches z, and so DReG's hook, through z alone (a
    cached transform included)."""
    model = _model("linear-gaussian")
    x = _data(model)
    guide, params = _guide(family, x)

    def gradient() -> tuple[Tensor, ...]:
        torch.manual_seed(11)  # the same draws both times
        if estimator == "iwae-dreg":
            bound = ek.iwae(model, guide, x, k=8, gradient="dreg")
        else:
            bound = ek.elbo(model, guide, x, samples=2, kl="mc", gradient="stl")
        return torch.autograd.grad(bound.loss, params)

    rebuilt = gradient()
    monkeypatch.setattr(_weights, "detach_parameters", _StopParameterGradient)
    wrapped = gradient()
    for a, b in zip(rebuilt, wrapped, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
        assert bool((a != 0).any())


def _exact_guide(name: str, model, x: Tensor) -> tuple[Guide, list[Tensor]]:
    """q = p(z|x) built from leaves: a MultivariateNormal, or the Beta, Gamma or Dirichlet posterior."""
    post = model.posterior(x)
    if name == "linear-gaussian":
        loc, tril = _leaf(post.loc), _leaf(post.scale_tril)
        return lambda _: MultivariateNormal(loc, scale_tril=tril), [loc, tril]
    if name == "dirichlet-multinomial":
        conc = _leaf(post.concentration)
        return lambda _: Dirichlet(conc), [conc]
    base = post.base_dist
    a, b = (
        (_leaf(base.concentration1), _leaf(base.concentration0))
        if isinstance(base, Beta)
        else (_leaf(base.concentration), _leaf(base.rate))
    )
    kind = type(base)
    return lambda _: Independent(kind(a, b), 1), [a, b]


@pytest.mark.parametrize("estimator", ["elbo-stl", "iwae-dreg", "elbo-reparam"])
@pytest.mark.parametrize("name", ["linear-gaussian", "beta-bernoulli", "gamma-poisson", "dirichlet-multinomial"])
def test_guide_gradient_vanishes_at_the_exact_posterior(name: str, estimator: str) -> None:
    """(e) With q = p(z|x), log w = log p(x) for every z, so the STL (ELBO) and DReG (IWAE_8) guide gradients
    are 0 for every draw (< 1e-10, 5 draws), while the pathwise gradient with log q's score term is not."""
    model = _model(name)
    x = _data(model)
    guide, params = _exact_guide(name, model, x)
    largest = 0.0
    for _ in range(5):
        if estimator == "iwae-dreg":
            bound = ek.iwae(model, guide, x, k=8, gradient="dreg")
        else:
            bound = ek.elbo(model, guide, x, kl="mc", gradient=estimator.removeprefix("elbo-"))
        grads = torch.autograd.grad(bound.loss, params)
        largest = max(largest, *(float(g.abs().max()) for g in grads))
    if estimator == "elbo-reparam":
        assert largest > 1e-6
    else:
        assert largest < 1e-10


class ShiftedNormal(Normal):
    """A subclass that changes log_prob (by a constant): never to be rebuilt as a plain Normal."""

    def log_prob(self, value: Tensor) -> Tensor:
        return super().log_prob(value) + 1.0


def test_subclass_of_a_known_family_is_wrapped_not_rebuilt() -> None:
    loc = _leaf(torch.zeros(3))
    q = ShiftedNormal(loc, 1.0)
    z = torch.randn(3)
    detached = detach_parameters(q)
    assert not isinstance(detached, Normal)
    torch.testing.assert_close(detached.log_prob(z), q.log_prob(z), rtol=0, atol=0)


def test_non_distribution_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Distribution"):
        detach_parameters(torch.zeros(3))  # type: ignore[arg-type]
