r"""log p(x) by importance sampling with the guide as proposal, with its standard error and ESS.

.. math::
    \log \hat p(x) = \log \frac1K \sum_{k=1}^K w_k, \qquad
    \operatorname{se} \approx \frac{\operatorname{sd}(w)}{\sqrt K\, \bar w} \quad\text{(delta method)},
    \qquad \mathrm{ESS} = \frac{(\sum_k w_k)^2}{\sum_k w_k^2}

The estimate of p(x) is unbiased; its logarithm is a stochastic lower bound (Jensen) whose bias shrinks as
O(1/K) and which equals IWAE_K (Burda et al. 2016). The delta-method error bar is only as good as the weights'
variance is finite: a small ESS relative to K flags a proposal much narrower than the posterior.

Samples are drawn in chunks of K without autograd, and the sums are kept in a running, max-shifted form,
so memory does not grow with K.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from elbokit.estimators._weights import check_positive_int, default_chunk, guide_distribution, log_weights
from elbokit.models.base import Guide, LatentModel
from elbokit.types import Estimate


class WeightMoments(NamedTuple):
    """Count, mean and centred sum of squares of importance weights scaled by e^{-m}, with m = shift.

    Kept in this centred form (not as raw power sums) so that the variance of nearly equal weights, the
    case of a good proposal, is computed without cancellation.
    """

    shift: Tensor  # m: (B,)
    n: int  # K
    mean: Tensor  # mean_k e^{log w_k - m}: (B,)
    m2: Tensor  # sum_k (e^{log w_k - m} - mean)^2: (B,)


def weight_moments(log_w: Tensor) -> WeightMoments:
    """The moments of one block of log weights (K, B), shifted by m = max_k log w_k."""
    shift = log_w.max(0).values
    scaled = (log_w - shift).exp()
    mean = scaled.mean(0)
    return WeightMoments(shift, log_w.shape[0], mean, (scaled - mean).square().sum(0))


def merge_moments(a: WeightMoments, b: WeightMoments) -> WeightMoments:
    """The moments of the union of two blocks (Chan, Golub & LeVeque 1979), re-shifted to the larger maximum."""
    shift = torch.maximum(a.shift, b.shift)
    scale_a, scale_b = (a.shift - shift).exp(), (b.shift - shift).exp()
    mean_a, mean_b = a.mean * scale_a, b.mean * scale_b
    n = a.n + b.n
    delta = mean_b - mean_a
    mean = mean_a + delta * (b.n / n)
    m2 = a.m2 * scale_a.square() + b.m2 * scale_b.square() + delta.square() * (a.n * b.n / n)
    return WeightMoments(shift, n, mean, m2)


def estimate_from_moments(moments: WeightMoments) -> Estimate:
    """log p-hat, its delta-method standard error and the ESS from the moments of K >= 2 weights."""
    shift, k, mean, m2 = moments
    rel_var = m2 / ((k - 1) * mean.square())  # var(w) / mean(w)^2, unbiased variance
    return Estimate(
        value=shift + mean.log(),
        stderr=(rel_var / k).sqrt(),
        ess=k / (1.0 + m2 / (k * mean.square())),  # (sum w)^2 / sum w^2
        pareto_k=None,
        samples=k,
    )


def log_marginal(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    k: int = 5000,
    chunk_size: int | None = None,
) -> Estimate:
    """Importance-sampled log p(x) per data point, with the guide's q(z|x) as proposal.

    Args:
        model: p(z) and p(x|z).
        guide: x -> q(z|x), batch (B,), event (d,).
        x: (B, *event) data.
        k: K >= 2 importance samples per data point.
        chunk_size: samples drawn at once (``None``: chosen from the data size).

    Returns:
        Estimate with ``value``, ``stderr`` and ``ess`` of shape (B,).
    """
    check_positive_int("k", k)
    if k < 2:
        raise ValueError(f"k must be >= 2 to estimate a standard error, got {k}")
    chunk = default_chunk(k, x) if chunk_size is None else chunk_size
    check_positive_int("chunk_size", chunk)
    with torch.no_grad():
        prior = model.prior()
        q = guide_distribution(model, guide, x, prior)
        moments: WeightMoments | None = None
        for start in range(0, k, chunk):
            block = weight_moments(log_weights(model, q, x, min(chunk, k - start), path="score", prior=prior).log_w)
            moments = block if moments is None else merge_moments(moments, block)
        assert moments is not None
        return estimate_from_moments(moments)
