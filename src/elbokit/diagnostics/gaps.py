r"""The inference gap and its two parts: approximation and amortization (Cremer, Li & Duvenaud 2018).

.. math::
    \underbrace{\log p(x) - \mathcal L[q_\phi(z|x)]}_{\text{inference gap}}
    = \underbrace{\log p(x) - \mathcal L[q^*]}_{\text{approximation}}
    + \underbrace{\mathcal L[q^*] - \mathcal L[q_\phi(z|x)]}_{\text{amortization}},
    \qquad q^* = \arg\max_{q \in \mathcal Q} \mathcal L[q]

q* is the best member of a family Q (by default the encoder's own: diagonal or full-covariance Gaussian) for
each data point, found by :func:`refine`: the encoder's q is the starting point of a per-point stochastic
optimisation of the ELBO, all points of a batch in one vectorised problem (semi-amortized refinement, Kim et
al. 2018). log p(x) comes from a reference that does not share Q's blind spot
(:mod:`elbokit.diagnostics.reference`): importance sampling (or AIS) from a defensive mixture around the best
full-covariance Gaussian, with the Pareto k̂ of its weights per point.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from elbokit.diagnostics.reference import (
    ReferenceMethod,
    defensive_proposal,
    reference_log_px,
    refined_proposal,
    unconstrained_proposal,
)
from elbokit.diagnostics.refine import Family, Refined, as_full_gaussian, family_of, refine, refine_with_trace
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.estimators._weights import check_positive_int, guide_distribution, log_likelihood_samples, log_weights
from elbokit.estimators.elbo import analytic_kl
from elbokit.estimators.marginal import warn_pareto_k
from elbokit.models.base import FixedGuide, Guide, LatentModel
from elbokit.types import KLMethod

__all__ = [
    "Family", "GapSummary", "Gaps", "Refined", "elbo_with_stderr", "family_of", "gaps", "refine", "refine_with_trace",
]  # fmt: skip


class Gaps(NamedTuple):
    """The inference gap of a guide split into its approximation and amortization parts, per data point.

    Attributes:
        log_px: (B,) the reference log p(x): importance-sampled (or AIS) from a defensive mixture around the
            best full-covariance Gaussian per point (:mod:`elbokit.diagnostics.reference`), whatever the family.
        log_px_stderr: (B,) delta-method standard error of ``log_px``.
        log_px_ess: (B,) effective sample size of the reference's weights (out of ``k``, or of the AIS chains).
        elbo_amortized: (B,) ELBO of the encoder's q(z|x).
        elbo_amortized_stderr: (B,) its Monte-Carlo standard error.
        elbo_optimal: (B,) ELBO of q*, the per-point optimum within the guide's family.
        elbo_optimal_stderr: (B,) its Monte-Carlo standard error.
        approximation: (B,) log_px - elbo_optimal (>= 0 up to Monte-Carlo error).
        amortization: (B,) elbo_optimal - elbo_amortized (>= 0 up to Monte-Carlo and optimisation error).
        family: the family q* was optimised in: ``"diagonal"`` or ``"full"`` (Gaussian), ``"flow"``, or
            ``"local"`` (the guide's own parametric family: Beta, Gamma, Dirichlet, Bernoulli, Categorical, ...).
        kl_method: how the KL terms of the ELBOs were computed.
        steps: optimisation steps taken by :func:`refine` (fewer than asked when it stopped early).
        samples: draws behind each ELBO estimate.
        log_px_pareto_k: (B,) Pareto k̂ of the reference's weights; above 0.7 ``log_px`` (and so the
            approximation gap) cannot be trusted at that point (Vehtari et al. 2024).
        reference: ``"is"`` or ``"ais"``: how ``log_px`` was estimated.
    """

    log_px: Tensor
    log_px_stderr: Tensor
    log_px_ess: Tensor
    elbo_amortized: Tensor
    elbo_amortized_stderr: Tensor
    elbo_optimal: Tensor
    elbo_optimal_stderr: Tensor
    approximation: Tensor
    amortization: Tensor
    family: Family
    kl_method: KLMethod
    steps: int
    samples: int
    log_px_pareto_k: Tensor
    reference: ReferenceMethod = "is"

    @property
    def unreliable(self) -> Tensor:
        """(B,) True where the reference's k̂ exceeds 0.7: log p(x) and the approximation gap are unreliable."""
        return self.log_px_pareto_k > KHAT_THRESHOLD

    def summary(self) -> GapSummary:
        """Means over the data points, with the standard errors of those means."""
        n = self.log_px.numel()

        def mean(t: Tensor) -> float:
            return float(t.detach().double().mean())

        def se(t: Tensor) -> float:  # of the mean of independent per-point estimates
            return float(t.detach().double().square().sum().sqrt()) / n

        return GapSummary(
            log_px=mean(self.log_px), log_px_stderr=se(self.log_px_stderr),
            elbo_optimal=mean(self.elbo_optimal), elbo_optimal_stderr=se(self.elbo_optimal_stderr),
            elbo_amortized=mean(self.elbo_amortized), elbo_amortized_stderr=se(self.elbo_amortized_stderr),
            approximation=mean(self.approximation), amortization=mean(self.amortization),
            elbo_sample_sd=mean(self.elbo_amortized_stderr) * math.sqrt(self.samples),
            n=n, family=self.family, steps=self.steps, unreliable=int(self.unreliable.sum()),
            pareto_k_max=float(self.log_px_pareto_k.nan_to_num(-math.inf).max()), reference=self.reference,
        )  # fmt: skip


class GapSummary(NamedTuple):
    """:class:`Gaps` averaged over the data points, in nats per point: what a table or a plot shows.

    Attributes:
        log_px, elbo_optimal, elbo_amortized: means of the per-point values, each with ``*_stderr``, the
            Monte-Carlo standard error of that mean.
        approximation: mean log p(x) - L[q*].
        amortization: mean L[q*] - L[q].
        elbo_sample_sd: the standard deviation of a single-draw ELBO estimate of one point under the encoder's
            q, averaged over the points: the noise a one-sample training step sees, beside the gaps.
        n: the number of data points.
        family: the Gaussian family of q*.
        steps: refinement steps taken.
        unreliable: points whose reference k̂ exceeds 0.7 (their log p(x) cannot be trusted).
        pareto_k_max: the largest reference k̂ over the points.
        reference: ``"is"`` or ``"ais"``.
    """

    log_px: float
    log_px_stderr: float
    elbo_optimal: float
    elbo_optimal_stderr: float
    elbo_amortized: float
    elbo_amortized_stderr: float
    approximation: float
    amortization: float
    elbo_sample_sd: float
    n: int
    family: str
    steps: int
    unreliable: int = 0
    pareto_k_max: float = -math.inf
    reference: str = "is"


def elbo_with_stderr(
    model: LatentModel, q: Distribution, x: Tensor, *, samples: int = 1000
) -> tuple[Tensor, Tensor, KLMethod]:
    r"""ELBO of a fixed q per data point with its Monte-Carlo standard error, without autograd.

    .. math::
        \hat{\mathcal L} = \frac1K \sum_k \log p(x|z_k) - \mathrm{KL}(q\|p(z)), \qquad
        \operatorname{se} = \operatorname{sd}_k(\log p(x|z_k)) / \sqrt K

    (closed-form KL where registered, else the sampled joint form).

    Returns:
        (value (B,), stderr (B,), kl_method).
    """
    check_positive_int("samples", samples)
    if samples < 2:
        raise ValueError(f"samples must be >= 2 to estimate a standard error, got {samples}")
    with torch.no_grad():
        prior = model.prior()
        kl = analytic_kl(q, prior.expand(q.batch_shape))  # expanded: torch's Bernoulli KL does not broadcast
        if kl is None:
            f = log_weights(model, q, x, samples, path="score", prior=prior).log_w  # (K, B)
            method: KLMethod = "mc"
        elif q.has_rsample:
            f = log_likelihood_samples(model, q, x, samples) - kl  # (K, B)
            method = "analytic"
        else:  # a discrete q: the reconstruction from plain draws
            f = log_weights(model, q, x, samples, path="score", prior=prior).log_px_given_z - kl  # (K, B)
            method = "analytic"
        return f.mean(0), f.std(0) / math.sqrt(samples), method


def gaps(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    k: int = 5000,
    steps: int = 500,
    lr: float = 0.1,
    samples: int = 1000,
    refine_samples: int = 16,
    family: Family | None = None,
    reference: ReferenceMethod = "is",
    ais_steps: int = 500,
    chains: int = 16,
    warn: bool = True,
) -> Gaps:
    r"""Approximation and amortization gaps per data point (Cremer, Li & Duvenaud 2018).

    .. math::
        \text{approximation} = \log \hat p(x) - \mathcal L[q^*], \qquad
        \text{amortization} = \mathcal L[q^*] - \mathcal L[q_\phi(z|x)]

    q* comes from :func:`refine` in ``family``, started at the encoder's q. log p(x) is the reference of
    :mod:`elbokit.diagnostics.reference`: the best full-covariance Gaussian per point is refined from q* (for a
    ``"full"`` family q* is that Gaussian; for a ``"local"`` family, Beta, Gamma, Dirichlet and the like, the
    full Gaussian of q*'s moments in the unconstrained space of the prior's support, with q* itself as a third
    component, :func:`~elbokit.diagnostics.reference.unconstrained_proposal`), mixed defensively with a widened
    copy, and used as the proposal of ``k`` importance samples (``reference="is"``) or as the start of AIS
    (``reference="ais"``, ``ais_steps`` temperatures, ``chains`` chains). It is a stochastic lower bound that
    does not inherit q*'s shape error;
    its Pareto k̂ per point (``log_px_pareto_k``) says where it still cannot be trusted, and a warning names
    how many such points there are. Both ELBOs use the closed-form KL and ``samples`` draws for the
    reconstruction.

    Args:
        model: p(z) and p(x|z).
        guide: the amortized guide x -> q(z|x) (Gaussian, flow, or a family :func:`refine` takes apart),
            batch (B,), event (d,).
        x: (B, *event) data.
        k: importance samples for the reference log p(x), >= 2.
        steps: most refinement steps (for q* and for the reference's full Gaussian each).
        lr: the refinement's initial learning rate.
        samples: draws for each final ELBO estimate, >= 2.
        refine_samples: draws per refinement step.
        family: the family of q*: ``"diagonal"``, ``"full"``, ``"flow"``, ``"local"`` or ``None`` (the guide's
            own).
        reference: ``"is"`` or ``"ais"``.
        ais_steps: AIS temperatures (``reference="ais"``).
        chains: AIS chains per point (``reference="ais"``).
        warn: one ``UserWarning`` when the reference's k̂ exceeds 0.7 anywhere.

    Returns:
        Gaps, every tensor of shape (B,).

    References:
        Cremer, Li & Duvenaud, "Inference suboptimality in variational autoencoders", ICML 2018.
        Kim, Wiseman, Miller, Sontag & Rush, "Semi-amortized variational autoencoders", ICML 2018.
        Hesterberg, "Weighted average importance sampling and defensive mixture distributions", 1995.
    """
    check_positive_int("k", k)
    if reference not in ("is", "ais"):
        raise ValueError(f"reference must be 'is' or 'ais', got {reference!r}")
    with torch.no_grad():
        q_amortized = guide_distribution(model, guide, x)
    family = family_of(q_amortized) if family is None else family
    refined = refine_with_trace(model, guide, x, steps=steps, lr=lr, samples=refine_samples, family=family)
    q_star = refined.q
    if family == "full":
        proposal = defensive_proposal(as_full_gaussian(q_star))
    elif family == "local":  # a non-Gaussian q*: the best Gaussian in unconstrained space, and q* itself
        proposal = unconstrained_proposal(q_star, model.prior())
    else:  # the best full-covariance Gaussian, refined from q*
        proposal = refined_proposal(model, FixedGuide(q_star), x, steps=steps, samples=refine_samples)
    evidence = reference_log_px(model, x, proposal, method=reference, k=k, ais_steps=ais_steps, chains=chains)
    assert evidence.pareto_k is not None
    if warn:
        warn_pareto_k(evidence.pareto_k, "gaps (the reference log p(x))")
    amortized, amortized_se, kl_method = elbo_with_stderr(model, q_amortized, x, samples=samples)
    optimal, optimal_se, _ = elbo_with_stderr(model, q_star, x, samples=samples)
    return Gaps(
        log_px=evidence.value,
        log_px_stderr=evidence.stderr,
        log_px_ess=evidence.ess,
        elbo_amortized=amortized,
        elbo_amortized_stderr=amortized_se,
        elbo_optimal=optimal,
        elbo_optimal_stderr=optimal_se,
        approximation=evidence.value - optimal,
        amortization=optimal - amortized,
        family=family,
        kl_method=kl_method,
        steps=refined.steps,
        samples=samples,
        log_px_pareto_k=evidence.pareto_k,
        reference=reference,
    )
