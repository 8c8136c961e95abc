"""Guides q(z|x), each returning a ``torch.distributions`` object with batch (B,) and event (d,).

- Gaussian (:mod:`elbokit.guides._gaussian`): :class:`AmortizedGaussian` (an encoder network) and
  :class:`LocalGaussian` (free per data point), diagonal or full covariance; :func:`gaussian` builds q from
  unconstrained parameters.
- :class:`NonAmortizedGaussian` (:mod:`elbokit.guides.nonamortized`): a LocalGaussian over the training points
  and, for any other x, q fitted per point from the prior: the guide of a ``guide="local"`` run.
- Normalizing flows (:mod:`elbokit.guides.flow`, on the optional ``zuko``): :class:`AmortizedFlow` and
  :class:`LocalFlow`, a Gaussian base pushed through inverse autoregressive steps; their q is a
  :class:`FlowDistribution`.
"""

from elbokit.guides._gaussian import (
    AmortizedGaussian,
    Covariance,
    LocalGaussian,
    _check_covariance,
    _inverse_softplus,
    _scale_tril,
    gaussian,
)
from elbokit.guides._iaf import MISSING_ZUKO, FlowDistribution, InverseAutoregressiveFlow, MissingExtraError
from elbokit.guides.flow import AmortizedFlow, LocalFlow
from elbokit.guides.nonamortized import NonAmortizedGaussian

__all__ = [
    "MISSING_ZUKO",
    "AmortizedFlow",
    "AmortizedGaussian",
    "Covariance",
    "FlowDistribution",
    "InverseAutoregressiveFlow",
    "LocalFlow",
    "LocalGaussian",
    "MissingExtraError",
    "NonAmortizedGaussian",
    "_check_covariance",
    "_inverse_softplus",
    "_scale_tril",
    "gaussian",
]
