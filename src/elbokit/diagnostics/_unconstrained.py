r"""The unconstrained space AIS and BDMC move in: z = T(u) with T = biject_to(support of p(z)).

HMC needs a density on all of R^n. For a latent constrained to a support S (the unit interval of a Beta, the
positive half-line of a Gamma, a simplex) the chains move on u = T^{-1}(z) instead, with the density of u

.. math::
    \log f(u) = \log f(T(u)) + \log \lvert \det J_T(u) \rvert,

as Stan, Pyro and NumPyro do. Where the support is R^d, T is the identity and is skipped.

References:
    Stan Development Team. Stan Reference Manual, chapter "Constraint Transforms".
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution, biject_to, constraints
from torch.distributions.transforms import IndependentTransform, Transform, identity_transform


def latent_transform(prior: Distribution) -> Transform | None:
    """T = biject_to(p(z).support), or ``None`` where the support is R^d (T the identity).

    Raises:
        ValueError: the prior's event shape is not (d,), or its support is discrete or has no bijection.
    """
    if len(prior.event_shape) != 1:
        raise ValueError(
            "the prior must have event shape (d,): wrap a scalar latent as Independent(dist.expand((1,)), 1), "
            f"got event shape {tuple(prior.event_shape)}"
        )
    support = checkable_support(prior)
    if support is None:
        raise ValueError(f"AIS needs the prior's support to map onto R^n, got {type(prior).__name__} without one")
    if support.is_discrete:
        raise ValueError(f"AIS needs a continuous latent; the prior's support {support} is discrete")
    try:
        transform = biject_to(support)
    except NotImplementedError as err:
        raise ValueError(
            f"AIS needs a continuous latent; torch.distributions.biject_to has no transform onto the prior's "
            f"support {support}"
        ) from err
    base = transform
    while isinstance(base, IndependentTransform):
        base = base.base_transform
    return None if base == identity_transform else transform


def checkable_support(dist: Distribution) -> constraints.Constraint | None:
    """``dist.support`` where it can check values, else ``None`` (undeclared or dependent supports)."""
    try:
        support = dist.support
    except NotImplementedError:
        return None
    return None if support is None or constraints.is_dependent(support) else support


def inside(support: constraints.Constraint, z: Tensor) -> Tensor:
    """Whether each z (*batch, d) lies in ``support``: (*batch,) booleans."""
    ok = support.check(z)
    return ok.all(-1) if ok.dim() == z.dim() else ok


def log_abs_det_jacobian(transform: Transform, u: Tensor, z: Tensor) -> Tensor:
    """log |det J_T(u)| for u (*batch, n) and z = T(u): (*batch,)."""
    log_det = transform.log_abs_det_jacobian(u, z)
    return log_det.sum(-1) if log_det.dim() == u.dim() else log_det  # an elementwise T: sum over the event
