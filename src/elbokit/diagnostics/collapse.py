r"""Posterior collapse: which latent dimensions carry information about x.

.. math::
    \mathrm{KL}_j = \frac1N \sum_n \mathrm{KL}(q(z_j|x_n) \,\|\, p(z_j)), \qquad
    A_j = \operatorname{Cov}_x\!\left(\mathbb E_{q(z|x)}[z_j]\right), \quad \text{unit } j \text{ active iff }
    A_j > \delta

The activity statistic and the threshold δ = 0.01 are Burda, Grosse & Salakhutdinov (2016)'s; the
per-dimension KL uses q's marginals q(z_j|x) (exact for a diagonal q; for a full-covariance q the per-dimension
KLs need not sum to the joint KL). The mutual information I(x; z) comes from :func:`surgery`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, kl_divergence

from elbokit.diagnostics.surgery import surgery
from elbokit.estimators._weights import (
    check_nonnegative,
    check_positive_int,
    guide_distribution,
    model_prior,
)
from elbokit.models.base import Guide, LatentModel


class Collapse(NamedTuple):
    """Per-dimension use of the latent space.

    Attributes:
        kl_per_dim: (d,) mean over the data of KL(q(z_j|x) || p(z_j)), closed form, from q's marginals.
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


def collapse(model: LatentModel, guide: Guide, x: Tensor, *, threshold: float = 0.01, samples: int = 16) -> Collapse:
    r"""Per-dimension KL, active units (Burda et al. 2016) and the mutual information I_q(x; z).

    .. math::
        \mathrm{KL}_j = \frac1N \sum_n \mathrm{KL}(q(z_j|x_n) \,\|\, p(z_j)), \qquad
        A_j = \widehat{\operatorname{Var}}_n\, \mathbb E_{q(z|x_n)}[z_j]

    Args:
        model: gives p(z), a Gaussian (factorised, or multivariate whose marginals are used).
        guide: x -> q(z|x), Gaussian, batch (N,), event (d,).
        x: (N, *event) data, N >= 2.
        threshold: δ, activity above which a unit counts as active.
        samples: draws per point for the mutual-information estimate.

    Returns:
        Collapse.

    References:
        Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
        Hoffman & Johnson, "ELBO surgery", NIPS 2016 workshop.
    """
    check_nonnegative("threshold", threshold)
    check_positive_int("samples", samples)
    prior = model_prior(model)
    with torch.no_grad():
        q = guide_distribution(model, guide, x, prior)  # checks x
        if x.shape[0] < 2:
            raise ValueError(f"x needs at least 2 data points for a covariance over x, got shape {tuple(x.shape)}")
        q_j = gaussian_marginals(q)  # batch (N, d)
        p_j = gaussian_marginals(prior)  # batch (d,)
        kl_per_dim = kl_divergence(q_j, p_j).mean(0)  # (d,)
        activity = q_j.loc.var(0)  # (d,)
    return Collapse(
        kl_per_dim=kl_per_dim,
        activity=activity,
        active_units=int((activity > threshold).sum()),
        mutual_information=surgery(model, guide, x, samples=samples).mutual_information,
        threshold=threshold,
    )
