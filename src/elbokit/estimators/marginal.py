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

import math

import torch
from torch import Tensor

from elbokit.estimators._weights import check_positive_int, default_chunk, guide_distribution, log_weights
from elbokit.models.base import Guide, LatentModel
from elbokit.types import Estimate


def weight_moments(log_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Shift m = max_k log w_k and the sums S1 = sum_k e^{log w_k - m}, S2 = sum_k e^{2(log w_k - m)}: (B,)."""
    shift = log_w.max(0).values
    scaled = (log_w - shift).exp()
    return shift, scaled.sum(0), scaled.square().sum(0)


def estimate_from_moments(shift: Tensor, s1: Tensor, s2: Tensor, k: int) -> Estimate:
    """log p-hat, its delta-method standard error and the ESS from the running sums."""
    ess = s1.square() / s2
    # Relative variance of the weights, var(w) / mean(w)^2 = (K / ESS - 1) K / (K - 1), clamped against rounding.
    rel_var = ((k / ess - 1.0) * k / (k - 1)).clamp_min(0.0)
    return Estimate(
        value=shift + s1.log() - math.log(k),
        stderr=(rel_var / k).sqrt(),
        ess=ess,
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
    with torch.no_grad():
        q = guide_distribution(model, guide, x)
        chunk = default_chunk(k, x) if chunk_size is None else chunk_size
        check_positive_int("chunk_size", chunk)
        shift = s1 = s2 = None
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            c_shift, c_s1, c_s2 = weight_moments(log_weights(model, q, x, n, path="score").log_w)
            if shift is None or s1 is None or s2 is None:
                shift, s1, s2 = c_shift, c_s1, c_s2
                continue
            new_shift = torch.maximum(shift, c_shift)
            a, b = (shift - new_shift).exp(), (c_shift - new_shift).exp()
            s1 = s1 * a + c_s1 * b
            s2 = s2 * a.square() + c_s2 * b.square()
            shift = new_shift
        assert shift is not None and s1 is not None and s2 is not None
        return estimate_from_moments(shift, s1, s2, k)
