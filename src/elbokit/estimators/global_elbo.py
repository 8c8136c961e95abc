r"""The ELBO of a model whose latent is global: one w shared by every data point (a Bayesian model's weights).

.. math::
    \mathcal L(q) = \sum_{i=1}^N \mathbb E_{q(w)}[\log p(y_i \mid x_i, w)] - \mathrm{KL}(q(w) \,\|\, p(w))
    \approx \frac NB \sum_{i \in \text{batch}} \frac1K \sum_{k=1}^K \log p(y_i \mid x_i, w_k) - \mathrm{KL},
    \qquad w_k \sim q

On a minibatch of B of the N points the data term is scaled by N / B, which keeps the estimate unbiased for the
whole set's bound; every draw w_k is shared by the minibatch (as a Bayesian network's weights are). The per-point
estimators (:func:`elbokit.elbo`, ...) are unchanged: a global latent is a different model, not a different
estimator of the same one.

A model with a global latent has ``prior()`` (p(w): batch (), event the weights' shape) and ``likelihood(x, w)``
(p(y | x, w) with batch (*S, B) for w of shape (*S, *event), y's own event summed by the caller's distribution).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.distributions import Distribution

from elbokit.estimators._weights import check_positive_int


class GlobalLatentModel(Protocol):
    """p(w) and p(y | x, w) for a latent w shared by all data points."""

    def prior(self, *args: Any, **kwargs: Any) -> Distribution: ...

    def likelihood(self, x: Tensor, w: Tensor) -> Distribution: ...


class GlobalBound(NamedTuple):
    """The ELBO of a global latent, from one minibatch.

    Attributes:
        value: () the estimate of the whole set's bound, N/B Σ_batch E_q log p(y_i | x_i, w) - KL.
        per_point: () ``value / num_data``, the bound per data point.
        reconstruction: (B,) E_q[log p(y_i | x_i, w)] of each point of the minibatch (K draws).
        reconstruction_total: () ``scale`` times their sum: the estimate of Σ_i over all N points.
        kl: () KL(q(w) ‖ p(w)), exact when ``kl_method == "analytic"``.
        kl_per_point: () ``kl / num_data``.
        scale: N / B, the factor the minibatch's data term was multiplied by.
        loss: () ``-value / num_data`` (per data point, for a learning rate that does not depend on N).
        kl_method: ``"analytic"`` or ``"mc"``.
        samples: K, draws of w.
    """

    value: Tensor
    per_point: Tensor
    reconstruction: Tensor
    reconstruction_total: Tensor
    kl: Tensor
    kl_per_point: Tensor
    scale: float
    loss: Tensor
    kl_method: str
    samples: int


def global_elbo(model: GlobalLatentModel, q: Distribution, x: Tensor, y: Tensor, *, num_data: int,
                samples: int = 1, prior: Distribution | None = None) -> GlobalBound:  # fmt: skip
    """The ELBO of q(w) over a data set of ``num_data`` points, estimated on the minibatch (x, y).

    Args:
        model: ``likelihood(x, w)`` (and ``prior()`` unless ``prior`` is given).
        q: q(w), batch (), reparameterizable (``rsample``).
        x, y: the minibatch, B points.
        num_data: N, the points of the whole data set (N >= B).
        samples: K draws of w, each shared by the minibatch.
        prior: p(w), where the model's ``prior`` needs arguments (e.g. the weights' size).

    Returns:
        :class:`GlobalBound`.
    """
    check_positive_int("samples", samples)
    check_positive_int("num_data", num_data)
    if not isinstance(q, Distribution) or q.batch_shape != ():
        given = tuple(q.batch_shape) if isinstance(q, Distribution) else type(q).__name__
        raise ValueError(f"q(w) must be a torch Distribution with batch shape () (one w for all points), got {given}")
    if not q.has_rsample:
        raise ValueError(f"q(w) must be reparameterizable (rsample), got {type(q).__name__}")
    batch = x.shape[0]
    if batch < 1 or y.shape[0] != batch:
        raise ValueError(f"x and y must hold the same B >= 1 points, got {x.shape[0]} and {y.shape[0]}")
    if batch > num_data:
        raise ValueError(f"the minibatch holds {batch} points, more than num_data {num_data}")
    p_w = model.prior() if prior is None else prior
    w = q.rsample((samples,))  # (K, *event)
    log_lik = model.likelihood(x, w).log_prob(y)  # (K, B)
    reconstruction = log_lik.mean(0)  # (B,)
    try:
        kl = torch.distributions.kl_divergence(q, p_w)
        kl_method = "analytic"
    except NotImplementedError:
        kl = (q.log_prob(w) - p_w.log_prob(w)).mean(0)
        kl_method = "mc"
    scale = num_data / batch
    total = scale * reconstruction.sum()
    value = total - kl
    return GlobalBound(value=value, per_point=value / num_data, reconstruction=reconstruction,
                       reconstruction_total=total, kl=kl, kl_per_point=kl / num_data, scale=scale,
                       loss=-value / num_data, kl_method=kl_method, samples=samples)  # fmt: skip
