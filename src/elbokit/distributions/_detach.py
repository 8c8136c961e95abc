r"""A distribution whose parameters are cut from the autograd graph: log q_{stop(phi)}(z).

Sticking-the-landing and DReG evaluate the density with its own parameters held fixed while z = g(eps; phi)
keeps its gradient (Roeder et al. 2017; Tucker et al. 2018):

.. math::
    \nabla_\phi \log q_{\mathrm{stop}(\phi)}(z_\phi) = \nabla_z \log q_\phi(z)\big|_{z = z_\phi}\,
    \frac{\partial z_\phi}{\partial \phi}.

``torch.distributions`` has no generic detach, so :func:`detach_parameters` works in two ways:

- Rebuild (one ``log_prob``): torch families of a known exact type are rebuilt from their defining parameters,
  detached (Normal, LogNormal, Beta, Gamma, Dirichlet, Kumaraswamy, MultivariateNormal, ...); ``Independent``
  recursively; ``TransformedDistribution`` from its detached base and fresh copies of torch's own transforms
  (affine, power, exp, sigmoid, ...), their tensors detached and their caches off.
- Otherwise (two ``log_prob`` calls): anything else, e.g. a normalizing flow whose parameters live in
  ``nn.Module`` transforms (zuko), a transform of unknown type, or a subclass of a known family, is wrapped so
  that

  .. math::
      \log \tilde q(z) = \log q_\phi(z) + \big[\log q_\phi(\bar z)\big]_{\mathrm{stop}} - \log q_\phi(\bar z),
      \qquad \bar z = \mathrm{stop}(z):

  its value is log q(z), its gradient in z is that of log q, and its gradient in phi at fixed z cancels, which
  is the equation above. What remains flows through z alone, so DReG's hook on z scales all of it. It needs
  log q to be a deterministic function of (z, phi): dropout active in a flow's network would break the
  cancellation.

Matching is by exact type: a subclass may redefine ``log_prob``, and is never rebuilt as its parent.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import singledispatch
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Beta,
    Categorical,
    Cauchy,
    Chi2,
    Dirichlet,
    Distribution,
    Exponential,
    FisherSnedecor,
    Gamma,
    Geometric,
    Gumbel,
    HalfCauchy,
    HalfNormal,
    Independent,
    InverseGamma,
    Kumaraswamy,
    Laplace,
    LogisticNormal,
    LogNormal,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    Pareto,
    Poisson,
    StudentT,
    TransformedDistribution,
    Uniform,
    Weibull,
    constraints,
    transforms,
)

_Shape = torch.Size | list[int] | tuple[int, ...]

#: Exact torch families rebuilt as ``type(q)(**{name: getattr(q, name).detach()})``: the constructor's keywords.
_PARAMETERS: dict[type[Distribution], tuple[str, ...]] = {
    Normal: ("loc", "scale"),
    LogNormal: ("loc", "scale"),
    Laplace: ("loc", "scale"),
    Cauchy: ("loc", "scale"),
    Gumbel: ("loc", "scale"),
    LogisticNormal: ("loc", "scale"),
    HalfNormal: ("scale",),
    HalfCauchy: ("scale",),
    StudentT: ("df", "loc", "scale"),
    Uniform: ("low", "high"),
    Exponential: ("rate",),
    Poisson: ("rate",),
    Chi2: ("df",),
    Gamma: ("concentration", "rate"),
    InverseGamma: ("concentration", "rate"),
    Beta: ("concentration1", "concentration0"),
    Kumaraswamy: ("concentration1", "concentration0"),
    Weibull: ("scale", "concentration"),
    Pareto: ("scale", "alpha"),
    FisherSnedecor: ("df1", "df2"),
    Dirichlet: ("concentration",),
}
#: Exact torch families given by ``probs`` or ``logits``, rebuilt from the one the instance holds.
_PROBS_OR_LOGITS: tuple[type[Distribution], ...] = (Bernoulli, Categorical, Geometric)
#: torch transforms without tensors of their own (copied with their cache off).
_PARAMETER_FREE = (
    transforms.ExpTransform,
    transforms.SigmoidTransform,
    transforms.TanhTransform,
    transforms.SoftplusTransform,
    transforms.AbsTransform,
    transforms.SoftmaxTransform,
    transforms.StickBreakingTransform,
    transforms.LowerCholeskyTransform,
    transforms.PositiveDefiniteTransform,
    transforms.CorrCholeskyTransform,
    transforms.ReshapeTransform,
)


class _UnknownTransform(Exception):
    """A transform of a type whose tensors are not known: the whole distribution is wrapped instead."""


def _stop(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


def _detach_transform(t: Any) -> transforms.Transform:
    """A fresh copy of a torch transform with its tensors detached and no cache.

    The cache must go: a cached transform inverts the very tensor it produced by returning its stored input,
    with that input's graph back to phi, which would bypass both the detaching and z.
    """
    kind = type(t)
    if kind in _PARAMETER_FREE:
        return t.with_cache(0)
    if kind is transforms.AffineTransform:
        return transforms.AffineTransform(_stop(t.loc), _stop(t.scale), event_dim=t.event_dim)
    if kind is transforms.PowerTransform:
        return transforms.PowerTransform(_stop(t.exponent))
    if kind is transforms.ComposeTransform:
        return transforms.ComposeTransform([_detach_transform(part) for part in t.parts])
    if kind is transforms.IndependentTransform:
        return transforms.IndependentTransform(_detach_transform(t.base_transform), t.reinterpreted_batch_ndims)
    if kind is transforms._InverseTransform:
        return _detach_transform(t.inv).inv
    raise _UnknownTransform(kind.__name__)


def _transformed(q: TransformedDistribution) -> Distribution:
    base = detach_parameters(q.base_dist)
    return TransformedDistribution(base, [_detach_transform(t) for t in q.transforms], validate_args=False)


def _independent(q: Independent) -> Distribution:
    return Independent(detach_parameters(q.base_dist), q.reinterpreted_batch_ndims, validate_args=False)


def _multivariate_normal(q: MultivariateNormal) -> Distribution:
    # The unbroadcasted factor: the copy's log_prob repeats the original's arithmetic exactly.
    return MultivariateNormal(q.loc.detach(), scale_tril=q._unbroadcasted_scale_tril.detach(), validate_args=False)


def _low_rank_normal(q: LowRankMultivariateNormal) -> Distribution:
    factor, diag = q._unbroadcasted_cov_factor.detach(), q._unbroadcasted_cov_diag.detach()
    return LowRankMultivariateNormal(q.loc.detach(), factor, diag, validate_args=False)


_REBUILD: dict[type[Distribution], Callable[[Any], Distribution]] = {
    Independent: _independent,
    TransformedDistribution: _transformed,
    MultivariateNormal: _multivariate_normal,
    LowRankMultivariateNormal: _low_rank_normal,
}


def _rebuild(q: Distribution) -> Distribution | None:
    """The rebuilt copy of q, or ``None`` when q's exact type (or one of its transforms) is not known."""
    kind: Any = type(q)
    if kind in _REBUILD:
        try:
            return _REBUILD[kind](q)
        except _UnknownTransform:
            return None
    if kind in _PARAMETERS:
        return kind(**{name: getattr(q, name).detach() for name in _PARAMETERS[kind]}, validate_args=False)
    if kind in _PROBS_OR_LOGITS:
        # Either may also be cached, lazily derived from the other: then logits, the unconstrained one.
        name = "logits" if "logits" in q.__dict__ else "probs"
        return kind(**{name: q.__dict__[name].detach()}, validate_args=False)
    return None


class _StopParameterGradient(Distribution):
    r"""q with log_prob(z) = log q(z) + [log q(stop(z))]_stop - log q(stop(z)): log q_{stop(phi)}(z).

    Draws carry no gradient (the parameters are cut and eps is noise), as for a rebuilt copy.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}

    def __init__(self, q: Distribution) -> None:
        self.q = q
        self.has_rsample = q.has_rsample
        super().__init__(q.batch_shape, q.event_shape, validate_args=False)

    @property
    def support(self) -> Any:
        return self.q.support

    @property
    def mean(self) -> Tensor:
        return self.q.mean.detach()

    @property
    def variance(self) -> Tensor:
        return self.q.variance.detach()

    def entropy(self) -> Tensor:
        return self.q.entropy().detach()

    def sample(self, sample_shape: _Shape = torch.Size()) -> Tensor:  # noqa: B008  (torch's signature)
        with torch.no_grad():
            return self.q.sample(sample_shape)

    def rsample(self, sample_shape: _Shape = torch.Size()) -> Tensor:  # noqa: B008
        return self.sample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        # A new tensor object: a transform's cache, matched by identity, cannot route the gradient around z.
        log_q = self.q.log_prob(value.view_as(value))
        at_fixed_z = self.q.log_prob(value.detach())  # carries d/dphi log q at fixed z, to be cancelled
        # 0 in value; where log q is infinite (z outside the support) 0 rather than inf - inf = nan.
        score = (at_fixed_z.detach() - at_fixed_z).nan_to_num(nan=0.0)
        return log_q + score


@singledispatch
def detach_parameters(q: Distribution) -> Distribution:
    r"""Return q with every parameter cut from the graph: log_prob(z) is log q_{stop(phi)}(z).

    .. math::
        \tilde q.\mathrm{log\_prob}(z) = \log q_\phi(z) \text{ in value}, \qquad
        \nabla \tilde q.\mathrm{log\_prob}(z) = \nabla_z \log q_\phi(z)\, \nabla z

    Known torch families are rebuilt with detached parameters (values shared, no copies); any other
    distribution is wrapped (see the module docstring). Register a rebuild for a family of your own with
    ``@detach_parameters.register``.

    Args:
        q: any ``torch.distributions.Distribution``, batch and event shapes kept.

    Returns:
        A distribution with q's shapes and log_prob values whose log_prob has no gradient in q's parameters.

    Raises:
        TypeError: if q is not a ``Distribution``.
    """
    if not isinstance(q, Distribution):
        raise TypeError(f"detach_parameters expects a torch.distributions.Distribution, got {type(q).__name__}")
    rebuilt = _rebuild(q)
    return _StopParameterGradient(q) if rebuilt is None else rebuilt
