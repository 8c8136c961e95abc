r"""Pareto k-hat of importance weights: how heavy their upper tail is (PSIS diagnostic).

The M largest of K weights are fitted by a generalized Pareto distribution (GPD) above the cut-off
u = w_{(K-M)}, the largest weight outside the tail,

.. math::
    M = \lceil \min(0.2 K,\ 3 \sqrt K) \rceil, \qquad
    p(w - u \mid k, \sigma) = \frac1\sigma \Big(1 + k \frac{w - u}{\sigma}\Big)^{-1/k - 1},

and the shape k-hat is read as: the weights have 1/k finite moments. k-hat < 0.5: finite variance, the
central limit theorem holds; 0.5 < k-hat < 0.7: the estimate still converges, slowly; k-hat > 0.7: the
importance-sampling estimate (and its delta-method standard error) cannot be trusted at any practical K
(Vehtari et al. 2024). The fit is the empirical-Bayes estimator of Zhang & Stephens (2009) followed by the
weakly informative prior of Vehtari et al., k-hat <- (M k-hat + 10 * 0.5) / (M + 10), as in ``loo`` and
``arviz-stats``; it is computed on weights scaled by e^{-max log w}, so it never overflows.

Only the M + 1 largest log weights per data point are needed, so a chunked estimator keeps a running top
(``merge_top``) instead of all K weights.

References:
    Zhang & Stephens (2009). A new and efficient estimation method for the generalized Pareto distribution.
    Technometrics 51(3).
    Vehtari, Simpson, Gelman, Yao & Gabry (2024). Pareto smoothed importance sampling. JMLR 25(72)
    (arXiv:1507.02646).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: k-hat above which importance-sampling estimates are unreliable (Vehtari et al. 2024).
KHAT_THRESHOLD = 0.7

_PRIOR_STRENGTH = 10.0  # pseudo-observations of the prior on k ...
_PRIOR_K = 0.5  # ... centred at k = 0.5
_PRIOR_B = 3.0  # Zhang & Stephens' grid scale for theta = -k / sigma


def tail_length(k: int) -> int:
    """M = ceil(min(0.2 K, 3 sqrt K)): the number of largest weights in the fitted tail (at least 1)."""
    if k < 2:
        raise ValueError(f"the Pareto k-hat needs K >= 2 weights, got {k}")
    return max(1, math.ceil(min(0.2 * k, 3.0 * math.sqrt(k))))


def merge_top(top: Tensor | None, log_w: Tensor, m: int) -> Tensor:
    """The m largest values per column of ``top`` (n, B) and a new block ``log_w`` (k, B), descending."""
    both = log_w if top is None else torch.cat([top, log_w])
    return both.topk(min(m, both.shape[0]), dim=0).values  # (<= m, B)


def khat_from_top(top: Tensor) -> Tensor:
    r"""k-hat from the M + 1 largest log weights per data point, sorted descending: (M + 1, B) -> (B,).

    With the exceedances x_i = w_{(i)} - u > 0 (i = 1..M, ascending, weights scaled by e^{-max log w}),
    Zhang & Stephens average the profile likelihood over a grid of theta = -k / sigma,

    .. math::
        \theta_j = \frac{1}{x_M} + \frac{1 - \sqrt{m/(j - 1/2)}}{3\, x_{\lfloor M/4 + 1/2 \rfloor}}, \quad
        k(\theta) = \overline{\log(1 - \theta x)}, \quad
        \ell(\theta) = M \big(\log(-\theta / k(\theta)) - k(\theta) - 1\big),

    j = 1..m, m = 30 + floor(sqrt M), then \hat\theta = \sum_j \theta_j\, \mathrm{softmax}(\ell)_j and
    \hat k = \overline{\log(1 - \hat\theta x)}. (Their k has the opposite sign to the GPD shape; this is the
    GPD shape, as in ``arviz-stats``.) Where the tail has no spread (all weights equal to rounding, e.g. q is
    the exact posterior) every moment is finite and k-hat is -inf.
    """
    m_tail = top.shape[0] - 1
    if m_tail < 1:
        raise ValueError(f"need the M + 1 >= 2 largest log weights, got {top.shape[0]}")
    shifted = top - top[0]  # log(w / max w) <= 0: (M + 1, B)
    exceed = (shifted[:m_tail].exp() - shifted[m_tail].exp()).flip(0)  # x_1 <= ... <= x_M: (M, B)
    spread = exceed[-1]  # x_M = (max w - u) / max w: (B,)
    degenerate = spread <= math.sqrt(torch.finfo(top.dtype).eps)
    exceed = torch.where(degenerate, torch.ones_like(exceed), exceed)  # any finite fit; replaced below
    m_grid = 30 + int(math.sqrt(m_tail))
    j = torch.arange(1, m_grid + 1, dtype=top.dtype, device=top.device)
    quartile = exceed[int(m_tail / 4 + 0.5) - 1]  # (B,)
    theta = (1 - (m_grid / (j - 0.5)).sqrt()).unsqueeze(-1) / (_PRIOR_B * quartile) + 1 / exceed[-1]  # (m, B)
    k_theta = torch.log1p(-theta.unsqueeze(1) * exceed).mean(1)  # (m, B)
    profile = m_tail * ((-theta / k_theta).log() - k_theta - 1)  # (m, B)
    theta_hat = (theta * profile.softmax(0)).sum(0)  # (B,)
    khat = torch.log1p(-theta_hat * exceed).mean(0)  # (B,)
    khat = (m_tail * khat + _PRIOR_STRENGTH * _PRIOR_K) / (m_tail + _PRIOR_STRENGTH)
    return torch.where(degenerate, torch.full_like(khat, -math.inf), khat)


def pareto_khat(log_w: Tensor) -> Tensor:
    """Pareto k-hat of K importance weights per data point: log_w (K, B) -> (B,), vectorised over B.

    See the module docstring for the tail size M, the fit and how to read k-hat.

    Args:
        log_w: (K, B) log importance weights, K >= 2 (K >= 25 for a tail of at least 5 draws).

    Returns:
        (B,) the shape k-hat of a generalized Pareto fit to the M largest weights.
    """
    if log_w.dim() != 2:
        raise ValueError(f"log_w must have shape (K, B), got shape {tuple(log_w.shape)}")
    m = tail_length(log_w.shape[0])
    return khat_from_top(merge_top(None, log_w, m + 1))
