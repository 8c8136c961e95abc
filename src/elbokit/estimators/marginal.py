r"""log p(x) by importance sampling with the guide as proposal, with its standard error and ESS.

.. math::
    \log \hat p(x) = \log \frac1K \sum_{k=1}^K w_k, \qquad
    \operatorname{se} \approx \frac{\operatorname{sd}(w)}{\sqrt K\, \bar w} \quad\text{(delta method)},
    \qquad \mathrm{ESS} = \frac{(\sum_k w_k)^2}{\sum_k w_k^2}

The estimate of p(x) is unbiased; its logarithm is a stochastic lower bound (Jensen) whose bias shrinks as
O(1/K) and which equals IWAE_K (Burda et al. 2016). The delta-method error bar is only as good as the weights'
variance is finite: a small ESS relative to K flags a proposal much narrower than the posterior. The Pareto
k-hat of the weights' upper tail (Vehtari et al. 2024, :mod:`elbokit.estimators._pareto`) says whether it is:
above 0.7 neither the estimate nor its error bar can be trusted, and ``log_marginal`` warns.

Samples are drawn in chunks of K without autograd, and the sums are kept in a running, max-shifted form
beside a running top M + 1 of the log weights (all the k-hat fit needs), so memory does not grow with K.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import NamedTuple

import torch
from torch import Tensor

from elbokit.distributions import unvalidated
from elbokit.estimators._pareto import KHAT_THRESHOLD, khat_from_top, merge_top, tail_length
from elbokit.estimators._weights import (
    check_positive_int,
    default_chunk,
    guide_distribution,
    log_weights,
    model_prior,
)
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
    warn: bool = True,
) -> Estimate:
    """Importance-sampled log p(x) per data point, with the guide's q(z|x) as proposal.

    Args:
        model: p(z) and p(x|z).
        guide: x -> q(z|x), batch (B,), event (d,).
        x: (B, *event) data.
        k: K >= 2 importance samples per data point.
        chunk_size: samples drawn at once (``None``: chosen from the data size).
        warn: emit one ``UserWarning`` when any point's Pareto k-hat exceeds 0.7.

    Returns:
        Estimate with ``value``, ``stderr``, ``ess`` and ``pareto_k`` of shape (B,).
    """
    check_positive_int("k", k)
    if k < 2:
        raise ValueError(f"k must be >= 2 to estimate a standard error, got {k}")
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    tail = tail_length(k) + 1  # the M largest weights and the cut-off below them
    with torch.no_grad():
        prior = model_prior(model)
        q = guide_distribution(model, guide, x, prior)
    chunk = default_chunk(k, x) if chunk_size is None else chunk_size  # sized as for the caller's autograd mode
    with torch.no_grad():
        moments: WeightMoments | None = None
        top: Tensor | None = None  # running top M + 1 log weights: (<= M + 1, B)
        for start in range(0, k, chunk):
            with nullcontext() if start == 0 else unvalidated():  # the first chunk checks the arguments
                log_w = log_weights(model, q, x, min(chunk, k - start), path="score", prior=prior).log_w  # (n, B)
            block = weight_moments(log_w)
            moments = block if moments is None else merge_moments(moments, block)
            top = merge_top(top, log_w, tail)
        assert moments is not None and top is not None
        pareto_k = khat_from_top(top)
    if warn:
        warn_pareto_k(pareto_k, "log_marginal")
    return estimate_from_moments(moments)._replace(pareto_k=pareto_k)


def warn_pareto_k(pareto_k: Tensor, source: str) -> None:
    """One ``UserWarning`` if any k-hat (B,) exceeds 0.7, with the count and the largest value."""
    bad = pareto_k > KHAT_THRESHOLD
    if bool(bad.any()):
        warnings.warn(
            f"{source}: Pareto k-hat > {KHAT_THRESHOLD} for {int(bad.sum())} of {pareto_k.numel()} data points "
            f"(max k-hat {float(pareto_k.max()):.2f}): the importance weights are so heavy-tailed there that the "
            "importance-sampling estimate of log p(x) and its standard error are unreliable (Vehtari et al. 2024); "
            "use a proposal closer to the posterior (or wider) rather than more samples",
            UserWarning,
            stacklevel=3,
        )
