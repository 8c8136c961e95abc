r"""The evidence lower bound, in either of its two forms, β-weighted.

.. math::
    \mathcal L_\beta(x) = \mathbb E_{q(z|x)}[\log p(x|z)] - \beta\, \mathrm{KL}(q(z|x) \,\|\, p(z))

With ``kl="mc"`` the KL is sampled with the same z as the reconstruction, which at β = 1 is the joint form
E_q[log p(x, z) - log q(z|x)]; with ``kl="analytic"`` it is the closed form from torch's KL registry, which
has the same expectation and lower variance. ``kl="auto"`` takes the closed form where one is registered.

Gradient estimators (the ``loss`` attribute of the result):

- ``"reparam"``: pathwise gradient through z = g(eps; phi) (Kingma & Welling 2014; Rezende et al. 2014).
- ``"score"``: REINFORCE, grad = E[f(z) grad log q(z)] + E[grad f(z)], with a leave-one-out baseline when
  ``samples > 1`` (Williams 1992; Mnih & Gregor 2014; Kool et al. 2019). With an analytic KL only the
  reconstruction is scored; the KL's gradient is exact. The one choice for a q without rsample (discrete
  latents); for IWAE it is ``ek.iwae(..., gradient="vimco")``.
- ``"stl"``: sticking the landing: the pathwise gradient with log q's parameters detached, which drops the
  zero-mean score term of the entropy (Roeder et al. 2017). Sampled KL only.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from elbokit.estimators._weights import (
    check_nonnegative,
    check_positive_int,
    guide_distribution,
    log_likelihood_samples,
    log_weights,
    model_prior,
)
from elbokit.models.base import Guide, LatentModel
from elbokit.types import Bound, KLMethod

KLChoice = Literal["analytic", "mc", "auto"]
ElboGradient = Literal["reparam", "score", "stl"]


def describe(q: Distribution) -> str:
    """A distribution's family for messages: ``Independent(Bernoulli)`` rather than ``Independent``."""
    base = getattr(q, "base_dist", None)
    return f"{type(q).__name__}({describe(base)})" if isinstance(base, Distribution) else type(q).__name__


def analytic_kl(q: Distribution, p: Distribution) -> Tensor | None:
    """KL(q || p) from torch's KL registry, or ``None`` when no closed form is registered for the pair.

    The result has the pair's broadcast batch shape. Some registered closed forms do not broadcast (torch's
    Bernoulli-Bernoulli KL indexes with p's mask, so a prior of batch () against a q of batch (B,) raises
    IndexError): on such an error the KL is tried once more with p expanded to q's batch shape. Any other
    failure, or a result of the wrong shape, is a one-line ValueError naming the pair.
    """
    pair = f"({describe(q)}, {describe(p)})"
    try:
        kl = kl_divergence(q, p)
    except NotImplementedError:
        return None
    except _KL_ERRORS as failure:
        expanded = _kl_expanded(q, p)
        if expanded is None:
            reason = " ".join(str(failure).split())  # one line
            raise ValueError(
                f"the closed-form KL registered for {pair} failed ({type(failure).__name__}: {reason}): use kl='mc'"
            ) from failure
        kl = expanded
    try:
        expected = torch.broadcast_shapes(q.batch_shape, p.batch_shape)
    except RuntimeError:  # a registered KL that ignored p's batch shape
        expected = q.batch_shape
    if kl.shape != expected:
        raise ValueError(
            f"the closed-form KL registered for {pair} must have the pair's batch shape {tuple(expected)}, "
            f"got {tuple(kl.shape)}: use kl='mc'"
        )
    return kl


_KL_ERRORS = (IndexError, RuntimeError, TypeError, ValueError)


def _kl_expanded(q: Distribution, p: Distribution) -> Tensor | None:
    """KL(q || p) with p expanded to q's batch shape, or ``None`` if the shapes already agree or this fails too."""
    if p.batch_shape == q.batch_shape:
        return None
    try:
        return kl_divergence(q, p.expand(q.batch_shape))
    except (NotImplementedError, *_KL_ERRORS):
        return None


def check_reparameterizable(q: Distribution, gradient: str, alternatives: str) -> None:
    """Raise unless q has rsample, which the pathwise ``gradient`` needs; ``alternatives`` names what works."""
    if not q.has_rsample:
        raise ValueError(
            f"gradient={gradient!r} needs a reparameterizable q (rsample), but the guide's {describe(q)} has none: "
            f"use {alternatives}"
        )


def leave_one_out_baseline(f: Tensor) -> Tensor:
    """b_k = mean of f over the other K - 1 samples: (K, B) -> (K, B). Needs K >= 2."""
    k = f.shape[0]
    return (f.sum(0, keepdim=True) - f) / (k - 1)


def surrogate_loss(value: Tensor, surrogate: Tensor) -> Tensor:
    """Scalar equal to -mean(value) whose gradient is that of -mean(surrogate)."""
    return -(value.detach() + surrogate - surrogate.detach()).mean()


def _mean_over_samples(f: Tensor) -> Tensor:
    """f.mean(0) for (K, B); for K = 1 the same values as a view (no kernel forward or backward: the usual
    training step draws one sample)."""
    return f.squeeze(0) if f.shape[0] == 1 else f.mean(0)


def elbo(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    samples: int = 1,
    kl: KLChoice = "auto",
    beta: float = 1.0,
    gradient: ElboGradient = "reparam",
    chunk_size: int | None = None,
) -> Bound:
    r"""Estimate the β-ELBO per data point from ``samples`` draws of q(z|x).

    .. math::
        \hat{\mathcal L}_\beta = \frac1K \sum_{k=1}^K \left[\log p(x|z_k) - \beta\, \widehat{\mathrm{KL}}_k\right],
        \quad \widehat{\mathrm{KL}}_k = \log q(z_k|x) - \log p(z_k) \text{ (mc)},
        \text{ or } \mathrm{KL}(q\|p) \text{ (analytic)}

    Args:
        model: p(z) and p(x|z).
        guide: x -> q(z|x) with batch (B,), event (d,).
        x: (B, *event) data.
        samples: K, draws of z per data point.
        kl: ``"analytic"`` (closed form, error if none is registered), ``"mc"`` (sampled) or ``"auto"``
            (closed form where registered; sampled for ``gradient="stl"``, which is defined on the sampled form).
        beta: weight of the KL term, a finite number >= 0 (β-VAE, Higgins et al. 2017; KL annealing).
        gradient: ``"reparam"``, ``"score"`` or ``"stl"``.
        chunk_size: samples per chunk for large K (``None``: chosen from the data size).

    Returns:
        Bound with ``value``, ``reconstruction``, ``kl`` of shape (B,); ``kl_method`` says which KL was used.
    """
    check_positive_int("samples", samples)
    check_nonnegative("beta", beta)
    if kl not in ("analytic", "mc", "auto"):
        raise ValueError(f"kl must be 'analytic', 'mc' or 'auto', got {kl!r}")
    if gradient not in ("reparam", "score", "stl"):
        raise ValueError(f"gradient must be 'reparam', 'score' or 'stl' for the ELBO, got {gradient!r}")
    if gradient == "stl" and kl == "analytic":
        raise ValueError("gradient='stl' is defined on the sampled KL: use kl='mc' or kl='auto'")

    prior = model_prior(model)
    q = guide_distribution(model, guide, x, prior)
    if gradient != "score":
        check_reparameterizable(q, gradient, "gradient='score' for the ELBO, or ek.iwae with gradient='vimco'")
    closed_form = None if kl == "mc" or gradient == "stl" else analytic_kl(q, prior)
    if kl == "analytic" and closed_form is None:
        raise ValueError(
            f"no closed-form KL is registered for ({type(q).__name__}, {type(prior).__name__}): "
            "use kl='mc' or kl='auto', or register one with torch.distributions.register_kl"
        )
    kl_method: KLMethod = "mc" if closed_form is None else "analytic"

    log_qz: Tensor | None = None
    if closed_form is not None and gradient == "reparam":
        # Nothing but the reconstruction depends on z: log p(z) and log q(z) are not needed.
        log_px_given_z = log_likelihood_samples(model, q, x, samples, chunk_size=chunk_size)  # (K, B)
        kl_k = closed_form.expand_as(log_px_given_z)
    else:
        path = "path" if gradient == "stl" else gradient
        terms = log_weights(model, q, x, samples, path=path, chunk_size=chunk_size, prior=prior)
        log_px_given_z, log_qz = terms.log_px_given_z, terms.log_qz  # (K, B)
        kl_k = log_qz - terms.log_pz if closed_form is None else closed_form.expand_as(log_px_given_z)
    f = log_px_given_z - kl_k if beta == 1 else log_px_given_z - beta * kl_k  # (K, B)
    value = _mean_over_samples(f)  # (B,)

    if gradient == "score":
        # Score only what depends on z: with an analytic KL that is the reconstruction alone.
        scored = f if closed_form is None else log_px_given_z
        baseline = leave_one_out_baseline(scored) if samples > 1 else torch.zeros_like(scored)
        assert log_qz is not None
        score_term = ((scored - baseline).detach() * log_qz).mean(0)  # (B,)
        loss = surrogate_loss(value, value + score_term)
    else:
        loss = -value.mean()

    return Bound(
        value=value,
        reconstruction=_mean_over_samples(log_px_given_z),
        kl=_mean_over_samples(kl_k),
        loss=loss,
        kl_method=kl_method,
        samples=samples,
        gradient=gradient,
    )
