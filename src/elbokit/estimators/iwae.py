r"""The importance-weighted bound IWAE_K (Burda, Grosse & Salakhutdinov 2016).

.. math::
    \mathcal L_K(x) = \mathbb E_{z_{1:K} \sim q}\left[\log \frac1K \sum_{k=1}^K w_k\right],
    \qquad w_k = \frac{p(x, z_k)}{q(z_k|x)}

L_1 is the ELBO, L_K is non-decreasing in K and tends to log p(x) as K grows.

Gradient estimators (the ``loss`` attribute of the result), with normalised weights
\tilde w_k = w_k / \sum_j w_j:

- ``"reparam"``: the pathwise gradient sum_k \tilde w_k grad log w_k.
- ``"stl"``: the same with log q's parameters detached (Roeder et al. 2017). Unbiased for K = 1; for K > 1
  it is biased for the guide's parameters (Tucker et al. 2018), and kept for comparison.
- ``"dreg"``: doubly reparameterized gradient (Tucker et al. 2018): the guide's parameters receive
  sum_k \tilde w_k^2 (d log w_k / d z_k)(d z_k / d phi) with log q's parameters detached, unbiased and with
  a signal-to-noise ratio that does not decay in K; the model's parameters receive the IWAE gradient.
  The squared weight is applied by a gradient hook on z, so the decoder runs once.
- ``"vimco"``: the score-function gradient for a q without rsample (discrete latents), with a leave-one-out
  baseline per sample (Mnih & Rezende 2016): z is drawn without gradient and
  grad = sum_k (\hat L - \hat L_{-k}) grad log q(z_k|x) + grad \hat L, where \hat L_{-k} is \hat L with
  log w_k replaced by the mean of the other K - 1 log weights (the geometric-mean baseline). Needs K >= 2.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from elbokit.estimators._weights import (
    CHUNK_ELEMENTS,
    Path,
    check_positive_int,
    guide_distribution,
    log_mean_exp,
    log_weights,
    model_prior,
)
from elbokit.estimators.elbo import check_reparameterizable, surrogate_loss
from elbokit.models.base import Guide, LatentModel
from elbokit.types import Bound

IwaeGradient = Literal["reparam", "stl", "dreg", "vimco"]
_GRADIENTS = ("reparam", "stl", "dreg", "vimco")


def iwae_bound(log_w: Tensor) -> Tensor:
    """IWAE_K from log weights: logsumexp_k(log w_k) - log K, (K, B) -> (B,)."""
    return log_mean_exp(log_w, 0)


def vimco_leave_one_out(log_w: Tensor) -> Tensor:
    r"""\hat L_{-k}: IWAE_K with log w_k replaced by the mean of the other log weights, (K, B) -> (K, B).

    .. math::
        \hat L_{-k} = \log \frac1K \Big(\sum_{j \ne k} w_j + \exp\Big(\frac{1}{K-1} \sum_{j \ne k} \log w_j\Big)\Big)

    Computed on a (k, K, B) block of rows at a time by a logsumexp, so no sum of weights is ever differenced.
    Needs K >= 2.
    """
    k = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (k - 1)  # (K, B)
    eye = torch.eye(k, dtype=torch.bool, device=log_w.device)
    rows = max(1, CHUNK_ELEMENTS // max(1, log_w.numel()))
    parts = []
    for start in range(0, k, rows):
        stop = min(k, start + rows)
        # Row r is log w with its entry r (the sample left out) replaced by that sample's baseline.
        block = torch.where(eye[start:stop, :, None], others_mean[start:stop, None], log_w[None])  # (n, K, B)
        parts.append(log_mean_exp(block, 1))  # (n, B)
    return torch.cat(parts)


def vimco_surrogate(log_w: Tensor, log_qz: Tensor) -> Tensor:
    r"""A (B,) surrogate whose gradient is VIMCO's, for log w and log q(z_k|x) of z drawn without gradient.

    .. math::
        \nabla \mathcal L_K \approx \sum_k \big(\hat L - \hat L_{-k}\big) \nabla \log q(z_k|x) + \nabla \hat L

    Args:
        log_w: (K, B) log weights, carrying gradient through log p(x, z_k) and log q(z_k|x) only.
        log_qz: (K, B) log q(z_k|x).

    Returns:
        (B,) tensor equal to \hat L = IWAE_K in value.

    References:
        Mnih & Rezende (2016), Variational inference for Monte Carlo objectives, ICML.
    """
    value = iwae_bound(log_w)  # (B,)
    with torch.no_grad():
        signal = value[None] - vimco_leave_one_out(log_w)  # (K, B)
    return value + (signal * log_qz).sum(0)


def iwae(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    k: int = 1,
    gradient: IwaeGradient = "reparam",
    chunk_size: int | None = None,
) -> Bound:
    r"""Estimate IWAE_K per data point.

    Args:
        model: p(z) and p(x|z).
        guide: x -> q(z|x) with batch (B,), event (d,); must sample by reparameterization, except for
            ``gradient="vimco"``.
        x: (B, *event) data.
        k: K, importance samples per data point.
        gradient: ``"reparam"``, ``"stl"``, ``"dreg"`` or ``"vimco"`` (score function, k >= 2).
        chunk_size: samples per chunk (``None``: chosen so that k = 5000 on 1,000 MNIST-sized points fits
            in well under 2 GB; with autograd on, each chunk is checkpointed and re-run in the backward pass).

    Returns:
        Bound: ``value`` is IWAE_K (B,); ``reconstruction`` and ``kl`` are the sample means of log p(x|z_k)
        and log q(z_k|x) - log p(z_k), so ``value >= reconstruction - kl`` on average (equal in
        expectation at K = 1); ``kl_method`` is ``"mc"``.
    """
    check_positive_int("k", k)
    if gradient not in _GRADIENTS:
        hint = {"score": " (the score-function estimator for IWAE is 'vimco')"}.get(gradient, "")
        raise ValueError(
            f"gradient must be 'reparam', 'stl' or 'dreg' (pathwise) or 'vimco' (score function) for IWAE, "
            f"got {gradient!r}{hint}"
        )
    if gradient == "vimco" and k < 2:
        raise ValueError(f"gradient='vimco' needs k >= 2 samples for its leave-one-out baselines, got k={k}")
    prior = model_prior(model)
    q = guide_distribution(model, guide, x, prior)
    if gradient != "vimco":
        check_reparameterizable(q, gradient, "gradient='vimco' for IWAE")

    hooks: dict[str, Tensor] = {}

    def scale_by_weight(z: Tensor, start: int, stop: int) -> None:
        # DReG: the gradient reaching z_k is \tilde w_k d log w_k / d z_k; one more \tilde w_k squares it.
        if z.requires_grad:
            extra = (1,) * (z.dim() - 2)
            z.register_hook(lambda g: g * hooks["w"][start:stop].reshape(*g.shape[:2], *extra))

    path: Path = "reparam" if gradient == "reparam" else "score" if gradient == "vimco" else "path"
    terms = log_weights(
        model,
        q,
        x,
        k,
        path=path,
        chunk_size=chunk_size,
        on_sample=scale_by_weight if gradient == "dreg" else None,
        prior=prior,
    )
    log_w = terms.log_w  # (K, B)
    value = iwae_bound(log_w)  # (B,)
    if gradient == "dreg":
        hooks["w"] = log_w.detach().softmax(0)  # normalised weights \tilde w: (K, B)
    loss = surrogate_loss(value, vimco_surrogate(log_w, terms.log_qz)) if gradient == "vimco" else -value.mean()
    return Bound(
        value=value,
        reconstruction=terms.log_px_given_z.mean(0),
        kl=(terms.log_qz - terms.log_pz).mean(0),
        loss=loss,
        kl_method="mc",
        samples=k,
        gradient=gradient,
    )
