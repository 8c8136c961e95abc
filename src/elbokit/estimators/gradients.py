r"""How noisy is the gradient of a bound? Mean, variance and signal-to-noise ratio per estimator.

For a gradient estimator \hat g of \nabla \mathcal L, drawn R times independently,

.. math::
    \bar g = \frac1R \sum_r \hat g_r, \quad
    \hat\sigma^2 = \frac{1}{R-1}\sum_r (\hat g_r - \bar g)^2, \quad
    \mathrm{SNR} = \frac{|\bar g|}{\hat\sigma}

per coordinate. The score-function (REINFORCE) estimator is unbiased for any q but typically far noisier than
the reparameterization (pathwise) estimator (Kingma & Welling 2014); sticking the landing removes the entropy's
zero-mean score term (Roeder et al. 2017); for IWAE the guide's SNR decays like 1/sqrt(K) under the pathwise
estimator but not under DReG (Rainforth et al. 2018; Tucker et al. 2018).

Note: the score estimator is built from ``log q``'s dependence on the parameters; with it, model parameters
receive the plain Monte-Carlo gradient of log p(x|z).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from elbokit.estimators._weights import check_positive_int
from elbokit.estimators.elbo import KLChoice, elbo
from elbokit.estimators.iwae import iwae
from elbokit.models.base import Guide, LatentModel
from elbokit.types import Bound, Gradient, GradientStats

Objective = Literal["elbo", "iwae"]


def flat_gradient(loss: Tensor, params: Sequence[Tensor]) -> Tensor:
    """d loss / d params, flattened and concatenated: (P,). Parameters the loss does not reach get 0."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return torch.cat([
        (torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads, strict=True)
    ])


def moments(draws: Tensor, gradient: Gradient) -> GradientStats:
    """Moments of R gradient draws (R, P)."""
    repeats = draws.shape[0]
    mean = draws.mean(0)
    variance = draws.var(0, correction=1)
    sd = variance.sqrt()
    return GradientStats(
        mean=mean,
        variance=variance,
        snr=mean.abs() / sd,
        stderr=(variance / repeats).sqrt(),
        repeats=repeats,
        gradient=gradient,
    )


def gradient_variance(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    params: Sequence[Tensor],
    gradients: Sequence[Gradient] = ("reparam", "score", "stl"),
    objective: Objective = "elbo",
    samples: int = 1,
    kl: KLChoice = "mc",
    repeats: int = 100,
) -> dict[Gradient, GradientStats]:
    """Estimate mean, variance and SNR of the gradient of the mean bound over x, for each estimator.

    The gradient is that of ``mean_b bound(x_b)`` (the negative of ``Bound.loss``) with respect to
    ``params``. Each repeat calls the guide afresh, so ``params`` may belong to the model or to the guide.

    Args:
        model: p(z) and p(x|z).
        guide: x -> q(z|x).
        x: (B, *event) data.
        params: the tensors to differentiate with respect to (requires_grad).
        gradients: estimators to compare; for ``objective="elbo"`` from reparam/score/stl, for
            ``"iwae"`` from reparam/stl/dreg/vimco (vimco: the score function, for samples >= 2).
        objective: ``"elbo"`` (with ``samples`` draws and ``kl``) or ``"iwae"`` (with k = ``samples``).
        samples: draws per data point in one gradient estimate.
        kl: the ELBO's KL choice (ignored for IWAE).
        repeats: R >= 2 independent gradient draws.

    Returns:
        One GradientStats per estimator, keyed by its name, over the P = total size of ``params``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
    check_positive_int("samples", samples)
    if isinstance(params, Tensor) or not isinstance(params, Sequence):
        raise ValueError(f"params must be a sequence of tensors, got {type(params).__name__}")
    if not params:
        raise ValueError("params must name at least one tensor, got an empty sequence")
    if objective not in ("elbo", "iwae"):
        raise ValueError(f"objective must be 'elbo' or 'iwae', got {objective!r}")
    params = list(params)
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.requires_grad:
            given = "a tensor with requires_grad=False" if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"every entry of params must be a tensor with requires_grad=True, got {given} at {i}")
    if isinstance(gradients, str) or not isinstance(gradients, Sequence) or not gradients:
        raise ValueError(f"gradients must be a non-empty sequence of estimator names, got {gradients!r}")
    valid = ("reparam", "stl", "dreg", "vimco") if objective == "iwae" else ("reparam", "score", "stl")
    for gradient in gradients:
        if gradient not in valid:
            names = ", ".join(f"'{name}'" for name in valid[:-1]) + f" or '{valid[-1]}'"
            raise ValueError(f"{objective.upper()} gradient must be {names}, got {gradient!r}")

    def bound(gradient: Gradient) -> Bound:
        if objective == "iwae":
            return iwae(model, guide, x, k=samples, gradient=gradient)  # type: ignore[arg-type]
        return elbo(model, guide, x, samples=samples, kl=kl, gradient=gradient)  # type: ignore[arg-type]

    stats: dict[Gradient, GradientStats] = {}
    for gradient in gradients:
        draws = torch.stack([-flat_gradient(bound(gradient).loss, params) for _ in range(repeats)])  # (R, P)
        stats[gradient] = moments(draws, gradient)
    return stats
