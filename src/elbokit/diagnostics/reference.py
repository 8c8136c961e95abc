r"""A reference log p(x) that does not share the guide family's blind spot.

An importance-sampling estimate of log p(x) is only as good as its proposal covers the posterior. Using the
refined q* of the guide's own family (as the gaps once did) inherits exactly the shape error the approximation
gap is meant to measure: a mean-field q* is too narrow across a correlated posterior, its weights are
heavy-tailed, and log p̂(x) falls short of log p(x) by about as much as the gap it should reveal. The reference
proposal here is instead

.. math::
    r(z) = (1 - \alpha_w - \alpha_f)\, \mathcal N(z; \mu^*, c_1^2 \Sigma^*)
         + \alpha_w\, \mathcal N(z; \mu^*, c_2^2 \Sigma^*) + \alpha_f\, q^*_{\mathcal F}(z),

with N(μ*, Σ*) the best full-covariance Gaussian per data point (refined by the ELBO from the family's q*,
whatever the family), slightly widened (c_1 = 1.1: the ELBO's optimum under-disperses, since the reverse KL
it minimises penalises mass where the posterior has little), a wider copy (c_2 = 1.5, α_w = 0.2) that bounds
the weights' tail defensively (Hesterberg 1995), and optionally (``family_q``, α_f = 0.2, else 0) a
non-Gaussian family's own q*. :func:`elbokit.diagnostics.gaps` leaves that last one out: a flow's density at
the other components' draws costs d sequential passes per step, and k = 5000 such evaluations per point are too
many. Where the posterior is Gaussian (the linear-Gaussian model) N(μ*, Σ*) is exact, every weight is bounded,
p(x, z) / r(z) <= c_1^d p(x) / (1 - α_w - α_f), and the estimate is exact up to a small standard error. On the
demo's MNIST VAE (d = 50), refining the encoder's q for 300 steps at lr 0.05 leaves k̂ > 0.7 on 5 of its first
200 test images, against 186 of 200 with the encoder's q as proposal (``benchmarks/gap_table.py``; from the
refined mean-field q*, as the gaps do, on 2). Where even r is too narrow
the Pareto k̂ of its weights says so; annealed importance sampling started from r (``method="ais"``) then moves
the draws toward the posterior. For a q of another parametric family (Beta, Gamma, Dirichlet, discrete) the
Gaussians live in the unconstrained space of the prior's support, with moments taken from q*, and q* and the
prior join the mixture (:func:`unconstrained_proposal`).

References:
    Hesterberg (1995). Weighted average importance sampling and defensive mixture distributions.
    Technometrics 37(2).
    Cremer, Li & Duvenaud (2018). Inference suboptimality in variational autoencoders. ICML.
    Vehtari, Simpson, Gelman, Yao & Gabry (2024). Pareto smoothed importance sampling. JMLR 25(72).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal, TransformedDistribution

from elbokit.diagnostics._unconstrained import latent_transform
from elbokit.diagnostics.evidence import ais
from elbokit.diagnostics.refine import FULL_LR, as_full_gaussian, refine
from elbokit.distributions.mixture import DefensiveMixture
from elbokit.estimators.marginal import log_marginal
from elbokit.models.base import FixedGuide, Guide, LatentModel
from elbokit.types import Estimate

ReferenceMethod = Literal["is", "ais"]

#: Scale factor c_1 of the main component: the ELBO-optimal Gaussian, widened a little.
MAIN_FACTOR = 1.1
#: Weight and scale factor c_2 of the defensive, wider copy.
WIDE_WEIGHT, WIDE_FACTOR = 0.2, 1.5
#: Weight of the family's own q* where that family is not Gaussian.
FAMILY_WEIGHT = 0.2
#: Weight of p(z) in the proposal for a constrained latent (:func:`unconstrained_proposal`).
PRIOR_WEIGHT = 0.05


def defensive_proposal(full: MultivariateNormal, family_q: Distribution | None = None) -> DefensiveMixture:
    """The reference proposal r: the full Gaussian widened by c_1, a wider copy and (if given) the family's q*."""
    main = MultivariateNormal(full.loc, scale_tril=MAIN_FACTOR * full.scale_tril)
    wide = MultivariateNormal(full.loc, scale_tril=WIDE_FACTOR * full.scale_tril)
    if family_q is None:
        return DefensiveMixture([main, wide], [1 - WIDE_WEIGHT, WIDE_WEIGHT])
    return DefensiveMixture([main, wide, family_q], [1 - WIDE_WEIGHT - FAMILY_WEIGHT, WIDE_WEIGHT, FAMILY_WEIGHT])


def refined_proposal(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    steps: int = 300,
    lr: float = FULL_LR,
    samples: int = 16,
    family_q: Distribution | None = None,
) -> DefensiveMixture:
    r"""The reference proposal r for a guide: its q(z|x) refined per point in the full-covariance Gaussian family
    (:func:`elbokit.diagnostics.refine`, ``family="full"``), mixed defensively with a widened copy.

    ``FixedGuide(r)`` is a guide, so ``ek.log_marginal(model, FixedGuide(r), x, k=...)`` estimates log p(x) from
    it; where the encoder's q is narrower than the posterior (the usual case, a mean-field q under the
    reverse KL) r's weights are far lighter-tailed than the encoder's.

    Args:
        model: p(z) and p(x|z).
        guide: x -> q(z|x), a Gaussian (diagonal or full), batch (B,), event (d,).
        x: (B, *event) data.
        steps, lr, samples: as in :func:`elbokit.diagnostics.refine` (lr 0.05: at 0.1 the full covariance's
            noisy steps leave it further from the optimum after 300 steps on the demo's VAE).
        family_q: a non-Gaussian family's own q* (a flow) to mix in as a third component.

    Returns:
        DefensiveMixture with batch (B,), event (d,), detached.
    """
    full = as_full_gaussian(refine(model, guide, x, steps=steps, lr=lr, samples=samples, family="full"))
    return defensive_proposal(full, family_q)


def unconstrained_proposal(q_star: Distribution, prior: Distribution, *, samples: int = 512) -> DefensiveMixture:
    r"""The reference proposal for a q* of another parametric family (Beta, Gamma, Dirichlet, ..., discrete).

    Continuous latents: in the unconstrained space u = T^{-1}(z) of the prior's support (T = ``biject_to``, as
    for AIS; the identity on R^d) the Gaussian of q*'s moments, widened and mixed as in
    :func:`defensive_proposal` and pushed through T, with q* itself as the third component and, for a
    constrained support, the prior as a fourth (α_p = 0.05; the others' densities vanish at the support's
    boundary, the posterior's need not, and p(z) bounds the weights there by p(x|z) / α_p):

    .. math::
        r = (1 - \alpha_w - \alpha_f - \alpha_p)\, T_\# \mathcal N(\mu_u, c_1^2 \Sigma_u)
          + \alpha_w\, T_\# \mathcal N(\mu_u, c_2^2 \Sigma_u) + \alpha_f\, q^* + \alpha_p\, p(z).

    The Gaussian is q*'s moment match, not refined by the ELBO as for a Gaussian q: on a Beta latent near the
    boundary of (0, 1) the reverse KL's refinement left it narrower and the weights' k̂ above 0.7 where the
    moment match kept it below.

    Discrete latents (no Gaussian to fit): r = (1 - α_w) q* + α_w p(z), whose weights are bounded by
    p(x|z) / α_w.

    Args:
        q_star: batch (B,), event (d,).
        prior: p(z), event (d,).
        samples: draws of q* for its moments in u.

    Returns:
        DefensiveMixture with batch (B,), event (d,), detached.
    """
    support = q_star.support
    if support is not None and support.is_discrete:
        return DefensiveMixture([q_star, prior.expand(q_star.batch_shape)], [1 - WIDE_WEIGHT, WIDE_WEIGHT])
    transform = latent_transform(prior)
    unconstrained = q_star if transform is None else TransformedDistribution(q_star, [transform.inv])
    full = as_full_gaussian(unconstrained, samples=samples)
    components: list[Distribution] = [
        MultivariateNormal(full.loc, scale_tril=MAIN_FACTOR * full.scale_tril),
        MultivariateNormal(full.loc, scale_tril=WIDE_FACTOR * full.scale_tril),
    ]
    if transform is None:
        return DefensiveMixture([*components, q_star], [1 - WIDE_WEIGHT - FAMILY_WEIGHT, WIDE_WEIGHT, FAMILY_WEIGHT])
    components = [TransformedDistribution(c, [transform]) for c in components]
    # A Gaussian pushed onto a bounded support, and q*, vanish at its boundary, where the posterior need not (a
    # Dirichlet(1) prior): p(z) bounds the weights there, p(x, z) / r(z) <= p(x|z) / alpha_p.
    weights = [1 - WIDE_WEIGHT - FAMILY_WEIGHT - PRIOR_WEIGHT, WIDE_WEIGHT, FAMILY_WEIGHT, PRIOR_WEIGHT]
    return DefensiveMixture([*components, q_star, prior.expand(q_star.batch_shape)], weights)


def reference_log_px(
    model: LatentModel,
    x: Tensor,
    proposal: Distribution,
    *,
    method: ReferenceMethod = "is",
    k: int = 5000,
    ais_steps: int = 500,
    chains: int = 16,
    generator: torch.Generator | None = None,
) -> Estimate:
    r"""log p(x) per point from the reference proposal r: importance sampling, or AIS started at r.

    .. math::
        \text{is:}\ \log \frac1K \sum_k \frac{p(x, z_k)}{r(z_k)},\ z_k \sim r; \qquad
        \text{ais:}\ \log \frac1C \sum_c w_c \ \text{along}\ r^{1-\beta} p(x, z)^\beta

    Both are stochastic lower bounds whose bias vanishes as K (or the AIS steps) grow. ``pareto_k`` is the
    Pareto k̂ of the weights: of the K importance weights, or of the C AIS chains' weights (with few chains
    a coarse check; the prior in the k̂ fit pulls it toward 0.5).

    Args:
        model: p(z) and p(x|z).
        x: (B, *event) data.
        proposal: r, batch (B,), event (d,).
        method: ``"is"`` or ``"ais"``.
        k: importance samples (``"is"``).
        ais_steps, chains: AIS temperatures and chains (``"ais"``).
        generator: the AIS draws' source.

    Returns:
        Estimate with ``value``, ``stderr``, ``ess`` and ``pareto_k`` (B,).
    """
    if method == "is":
        return log_marginal(model, FixedGuide(proposal), x, k=k, warn=False)
    if method != "ais":
        raise ValueError(f"reference must be 'is' or 'ais', got {method!r}")
    if chains < 2:
        raise ValueError(f"the AIS reference needs chains >= 2 for a standard error, got {chains}")
    estimate = ais(model, x, steps=ais_steps, chains=chains, proposal=proposal, generator=generator)
    assert estimate.pareto_k is not None  # chains >= 2
    return estimate
