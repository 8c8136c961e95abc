r"""Posterior collapse: which latent dimensions carry information about x.

.. math::
    \mathrm{KL}_j = \frac1N \sum_n \mathrm{KL}(q(z_j|x_n) \,\|\, p(z_j)), \qquad
    A_j = \operatorname{Cov}_x\!\left(\mathbb E_{q(z|x)}[z_j]\right), \quad \text{unit } j \text{ active iff }
    A_j > \delta

The activity statistic and the threshold δ = 0.01 are Burda, Grosse & Salakhutdinov (2016)'s; the
per-dimension KL uses q's marginals q(z_j|x) (exact for a factorised q, ``Independent(base, 1)`` of any family:
Normal, Beta, Gamma, Bernoulli, ...; a full-covariance Gaussian by its Normal marginals and a Dirichlet by its
Beta marginals z_j ~ Beta(α_j, α_0 − α_j), whose per-dimension KLs need not sum to the joint KL; any other q
that does not factorise is refused), in closed form where registered.
The mutual information I(x; z) comes from :func:`surgery`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Beta, Dirichlet, Distribution, Independent, MultivariateNormal, Normal

from elbokit.diagnostics.surgery import surgery
from elbokit.estimators._weights import (
    check_nonnegative,
    check_positive_int,
    guide_distribution,
    model_prior,
)
from elbokit.estimators.elbo import analytic_kl
from elbokit.models.base import Guide, LatentModel


class Collapse(NamedTuple):
    """Per-dimension use of the latent space.

    Attributes:
        kl_per_dim: (d,) mean over the data of KL(q(z_j|x) || p(z_j)), from q's marginals: closed form where
            the KL registry has the pair, else sampled.
        activity: (d,) Cov_x(E_q[z_j]): the variance over the data (unbiased, N - 1) of q's mean.
        active_units: the number of j with activity > threshold.
        mutual_information: I_q(x; z) over the given points (from :func:`surgery`).
        threshold: the activity threshold used.
    """

    kl_per_dim: Tensor
    activity: Tensor
    active_units: int
    mutual_information: float
    threshold: float


def gaussian_marginals(d: Distribution) -> Normal:
    """The per-coordinate marginals of a factorised or multivariate Gaussian, as a Normal with batch (..., d)."""
    if isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1:
        base = d.base_dist
        loc, scale = torch.broadcast_tensors(base.loc, base.scale)
        return Normal(loc, scale)
    if isinstance(d, MultivariateNormal):
        return Normal(d.loc, d.variance.sqrt())
    raise TypeError(f"expected Independent(Normal, 1) or MultivariateNormal, got {type(d).__name__}")


def marginals(d: Distribution) -> Distribution:
    """The per-coordinate marginals of a q (or p) with event (d,), as one distribution with batch (..., d).

    Gaussians as in :func:`gaussian_marginals`; ``Independent(base, 1)`` by its base (an ``Independent(Beta, 1)``
    has Beta marginals); a Dirichlet(α) by its Beta(α_j, α_0 − α_j) marginals. Any other q does not factorise
    over the coordinates, and its marginals have no closed form here: a ValueError.
    """
    if isinstance(d, Dirichlet):
        concentration = d.concentration.expand(d.batch_shape + d.event_shape)
        return Beta(concentration, concentration.sum(-1, keepdim=True) - concentration)
    if isinstance(d, MultivariateNormal) or (
        isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1
    ):
        return gaussian_marginals(d)
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 and d.base_dist.event_shape == ():
        return d.base_dist.expand(d.batch_shape + d.event_shape)
    raise ValueError(
        "per-dimension KL needs a factorising q and p(z) (Independent(base, 1) over the latent dimensions, or a "
        f"MultivariateNormal or Dirichlet by its marginals), got {type(d).__name__}"
        + (f"({type(d.base_dist).__name__})" if isinstance(d, Independent) else "")
    )


def kl_per_point_and_dim(q_j: Distribution, p_j: Distribution, *, samples: int) -> Tensor:
    r"""KL(q(z_j|x_n) || p(z_j)) for each point and dimension: (N, d); closed form where registered, else
    :math:`rac1S \sum_s \log q(z_s) - \log p(z_s)` from ``samples`` draws of each marginal."""
    kl = analytic_kl(q_j, p_j)
    if kl is not None:
        return kl
    z = q_j.sample((samples,))  # (S, N, d)
    return (q_j.log_prob(z) - p_j.log_prob(z)).mean(0)


def collapse(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    threshold: float = 0.01,
    samples: int = 16,
    kl_samples: int = 1000,
) -> Collapse:
    r"""Per-dimension KL, active units (Burda et al. 2016) and the mutual information I_q(x; z).

    .. math::
        \mathrm{KL}_j = \frac1N \sum_n \mathrm{KL}(q(z_j|x_n) \,\|\, p(z_j)), \qquad
        A_j = \widehat{\operatorname{Var}}_n\, \mathbb E_{q(z|x_n)}[z_j]

    Args:
        model: gives p(z): a Gaussian (factorised, or multivariate whose marginals are used) or any
            ``Independent(base, 1)`` (a factorised Beta, Gamma, Bernoulli, ...).
        guide: x -> q(z|x), batch (N,), event (d,), of the same kinds as p(z); a q that does not factorise
            (a Dirichlet, a flow) is a ValueError.
        x: (N, *event) data, N >= 2.
        threshold: δ, activity above which a unit counts as active.
        samples: draws per point for the mutual-information estimate.
        kl_samples: draws per point and dimension for a per-dimension KL without a closed form.

    Returns:
        Collapse.

    References:
        Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
        Hoffman & Johnson, "ELBO surgery", NIPS 2016 workshop.
    """
    check_nonnegative("threshold", threshold)
    check_positive_int("samples", samples)
    check_positive_int("kl_samples", kl_samples)
    prior = model_prior(model)
    with torch.no_grad():
        q = guide_distribution(model, guide, x, prior)  # checks x
        if x.shape[0] < 2:
            raise ValueError(f"x needs at least 2 data points for a covariance over x, got shape {tuple(x.shape)}")
        q_j = marginals(q)  # batch (N, d)
        p_j = marginals(prior).expand(q_j.batch_shape)  # batch (N, d): torch's Bernoulli KL does not broadcast
        kl_per_dim = kl_per_point_and_dim(q_j, p_j, samples=kl_samples).mean(0)  # (d,)
        activity = q_j.mean.var(0)  # (d,)
    return Collapse(
        kl_per_dim=kl_per_dim,
        activity=activity,
        active_units=int((activity > threshold).sum()),
        mutual_information=surgery(model, guide, x, samples=samples).mutual_information,
        threshold=threshold,
    )
