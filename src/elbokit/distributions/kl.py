r"""Extra closed-form KL pairs for ``torch.distributions.kl_divergence``.

torch registers KL(MultivariateNormal || MultivariateNormal) and KL(Independent || Independent) but not the
mixed pairs a full-covariance guide meets with a mean-field prior (or the reverse). A diagonal Gaussian
``Independent(Normal(m, s), 1)`` is the ``MultivariateNormal`` with ``scale_tril = diag(s)``, so each mixed
pair is the Gaussian-Gaussian KL

.. math::
    \mathrm{KL}(\mathcal N_0 \,\|\, \mathcal N_1) = \tfrac12 \left[\operatorname{tr}(\Sigma_1^{-1}\Sigma_0)
      + (\mu_1-\mu_0)^T \Sigma_1^{-1} (\mu_1-\mu_0) - d + \log\frac{\det\Sigma_1}{\det\Sigma_0}\right]

evaluated by torch's own implementation after that conversion.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence, register_kl


def _as_multivariate_normal(d: Independent) -> MultivariateNormal:
    """Independent(Normal(m, s), 1) as N(m, diag(s^2)); NotImplementedError for anything else."""
    if not (isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    scale = d.base_dist.scale.expand(d.base_dist.loc.shape)
    return MultivariateNormal(d.base_dist.loc, scale_tril=torch.diag_embed(scale))


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal(q: MultivariateNormal, p: Independent) -> Tensor:
    return kl_divergence(q, _as_multivariate_normal(p))


@register_kl(Independent, MultivariateNormal)
def _kl_diagonal_mvn(q: Independent, p: MultivariateNormal) -> Tensor:
    return kl_divergence(_as_multivariate_normal(q), p)
