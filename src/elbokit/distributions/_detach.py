"""A copy of a distribution whose parameters are cut from the autograd graph.

Sticking-the-landing and DReG evaluate log q_{stop(phi)}(z): the density's own parameters carry no gradient
while z = g(eps; phi) still does (Roeder et al. 2017; Tucker et al. 2018). ``torch.distributions`` has no
generic detach, so known families are rebuilt from their defining parameters; any other family is rebuilt
from the constructor arguments it was given (those of its ``arg_constraints`` stored on the instance).
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from torch import Tensor
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
)


@singledispatch
def detach_parameters(d: Distribution) -> Distribution:
    """Return the same distribution with every parameter detached (values shared, no copies)."""
    params: dict[str, Any] = {}
    for name in d.arg_constraints:
        value = d.__dict__.get(name)  # lazily derived parameters (probs from logits, ...) are skipped
        if isinstance(value, Tensor):
            params[name] = value.detach()
    if "logits" in params:  # probs and logits are alternatives: once both are cached, keep the defining one
        params.pop("probs", None)
    if not params:
        raise TypeError(f"cannot detach the parameters of {type(d).__name__}: none found")
    try:
        return type(d)(**params, validate_args=False)
    except TypeError as err:
        raise TypeError(f"cannot detach the parameters of {type(d).__name__}: {err}") from err


@detach_parameters.register
def _(d: Normal) -> Distribution:
    return Normal(d.loc.detach(), d.scale.detach(), validate_args=False)


@detach_parameters.register
def _(d: Independent) -> Distribution:
    return Independent(detach_parameters(d.base_dist), d.reinterpreted_batch_ndims, validate_args=False)


@detach_parameters.register
def _(d: MultivariateNormal) -> Distribution:
    return MultivariateNormal(d.loc.detach(), scale_tril=d.scale_tril.detach(), validate_args=False)


@detach_parameters.register
def _(d: LowRankMultivariateNormal) -> Distribution:
    return LowRankMultivariateNormal(
        d.loc.detach(), d.cov_factor.detach(), d.cov_diag.detach(), validate_args=False
    )
