r"""q* per data point: the encoder's q refined by stochastic optimisation of the ELBO, all points at once.

Semi-amortized refinement (Kim et al. 2018): start from the encoder's output, stay in its family (diagonal
or full-covariance Gaussian), and maximise each point's ELBO (closed-form KL, reparameterised reconstruction)
by Adam with one learning rate per point, halved when that point's bound stops improving. Any other
parametric q (Beta, Gamma, Dirichlet, Bernoulli, Categorical, their Independent or transformed versions) is
refined the same way in its own family, its parameters in unconstrained space (:mod:`.refine_any`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from elbokit.diagnostics.refine_any import adam_per_point, is_local, refine_local, stochastic_bound
from elbokit.diagnostics.refine_flow import check_refine_arguments, refine_flow
from elbokit.estimators._weights import guide_distribution, model_prior
from elbokit.guides import FlowDistribution, gaussian
from elbokit.models.base import FixedGuide, Guide, LatentModel

Family = Literal["diagonal", "full", "flow", "local"]

#: Learning rate of a refinement in the full-covariance family: at 0.1 its noisy steps leave the Cholesky factor
#: further from the optimum after 300 steps on the demo's MNIST VAE (see elbokit.diagnostics.reference).
FULL_LR = 0.05


class Refined(NamedTuple):
    """What :func:`refine_with_trace` returns: the refined q, the steps taken and the mean bound per step."""

    q: Distribution
    steps: int
    trace: Tensor  # (steps,) batch-mean ELBO estimate at each step


def family_of(q: Distribution) -> Family:
    """``"diagonal"`` for ``Independent(Normal, 1)``, ``"full"`` for ``MultivariateNormal``, ``"flow"`` for a
    :class:`~elbokit.guides.FlowDistribution`, ``"local"`` for another family that
    :mod:`elbokit.diagnostics.refine_any` can take apart (Beta, Gamma, Dirichlet, Bernoulli, Categorical, ...);
    otherwise an error."""
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
        return "diagonal"
    if isinstance(q, MultivariateNormal):
        return "full"
    if isinstance(q, FlowDistribution):
        return "flow"
    if is_local(q):
        return "local"
    raise TypeError(
        "q must be Independent(Normal, 1), MultivariateNormal, a FlowDistribution or a parametric family that can "
        f"be refined per point (Beta, Gamma, Dirichlet, Bernoulli, Categorical, ..., or Independent or "
        f"TransformedDistribution of one), got {type(q).__name__}"
    )


def as_full_gaussian(q: Distribution, *, samples: int = 512) -> MultivariateNormal:
    """q as a full-covariance Gaussian: exactly for Gaussians, by its sampled mean and covariance otherwise.

    Args:
        q: batch (B,), event (d,).
        samples: draws for the moment match of a non-Gaussian q.

    Returns:
        MultivariateNormal with batch (B,), event (d,), detached.
    """
    if isinstance(q, MultivariateNormal):
        return MultivariateNormal(q.loc.detach(), scale_tril=q.scale_tril.detach().expand(*q.loc.shape, -1))
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
        scale = q.base_dist.scale.detach().expand(q.base_dist.loc.shape)
        return MultivariateNormal(q.base_dist.loc.detach(), scale_tril=torch.diag_embed(scale))
    with torch.no_grad():
        z = q.sample((samples,))  # (S, B, d)
        loc = z.mean(0)
        centred = (z - loc).movedim(0, -1)  # (B, d, S)
        cov = centred @ centred.transpose(-1, -2) / (samples - 1)  # (B, d, d)
        jitter = 1e-6 * cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # (B,)
        cov = cov + jitter[:, None, None] * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov))


def as_family(q: Distribution, family: Family) -> Distribution:
    """q as a start in ``family``: itself where it belongs there; a diagonal Gaussian's covariance made full;
    a full (or any) q's marginal standard deviations as a diagonal Gaussian."""
    if family == "full":
        return q if isinstance(q, MultivariateNormal) else as_full_gaussian(q)
    if family == "diagonal":
        if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
            return q
        full = as_full_gaussian(q)
        return Independent(Normal(full.loc, full.variance.sqrt()), 1)
    if family == "local":
        return q
    raise ValueError(
        f"family must be 'diagonal', 'full' or 'flow', or 'local' (the guide's own parametric family), got {family!r}"
    )


def _inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y > 0, stably: y + log(-expm1(-y))."""
    return y + torch.log(-torch.expm1(-y))


def _free_parameters(q: Distribution) -> tuple[Tensor, Tensor]:
    """Unconstrained leaves (loc, raw_scale) with ``gaussian(loc, raw_scale) == q``, detached from q's graph.

    Diagonal: raw (B, d) with scale = softplus(raw). Full: raw (B, d, d), strictly-lower part of the Cholesky
    factor as is and its diagonal through softplus (the parameterisation of :func:`elbokit.guides.gaussian`).
    """
    if family_of(q) == "diagonal":
        assert isinstance(q, Independent)
        loc = q.base_dist.loc.detach()
        raw = _inverse_softplus(q.base_dist.scale.detach().expand_as(loc))
    else:
        assert isinstance(q, MultivariateNormal)
        loc = q.loc.detach()
        tril = q.scale_tril.detach().expand(*loc.shape, loc.shape[-1])
        raw = tril.tril(-1) + torch.diag_embed(_inverse_softplus(tril.diagonal(dim1=-2, dim2=-1)))
    return loc.clone().requires_grad_(True), raw.clone().requires_grad_(True)


def refine_with_trace(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    steps: int = 200,
    lr: float = 0.1,
    samples: int = 16,
    window: int = 20,
    tol: float = 1e-3,
    decay: float = 0.5,
    min_lr: float = 1e-4,
    family: Family | None = None,
) -> Refined:
    """:func:`refine`, also returning the number of steps taken and the trace of the bound."""
    check_refine_arguments(steps=steps, samples=samples, window=window, lr=lr, min_lr=min_lr, decay=decay)
    prior = model_prior(model)
    with torch.no_grad():
        q0 = guide_distribution(model, guide, x, prior)
    if family not in (None, "local") and family_of(q0) == "local":
        raise ValueError(
            f"a {type(q0).__name__} q is refined in its own family: family must be None or 'local', got {family!r}"
        )
    if family == "flow" or (family is None and family_of(q0) == "flow"):
        start: Guide = guide
        gaussian_star: Refined | None = None
        if family_of(q0) != "flow":
            # A Gaussian guide: the full-covariance q* first (closed-form KL, one step size per point; the
            # reference's learning rate), then the flow from there, so that the flow's q* starts at the best
            # Gaussian, which its family contains.
            gaussian_star = refine_with_trace(
                model, guide, x, steps=steps, lr=FULL_LR, samples=samples, window=window, tol=tol, decay=decay,
                min_lr=min_lr, family="full",
            )  # fmt: skip
            start = FixedGuide(gaussian_star.q)
        # The flow's own learning rate (refine_flow's default): ``lr`` is the Gaussian refinement's.
        local, flow_steps, flow_trace = refine_flow(
            model, start, x, steps=steps, samples=samples, window=window, tol=tol, decay=decay, min_lr=min_lr
        )
        if gaussian_star is None:
            return Refined(local.distribution(), flow_steps, flow_trace)
        steps_taken = gaussian_star.steps + flow_steps
        return Refined(local.distribution(), steps_taken, torch.cat([gaussian_star.trace, flow_trace]))
    if family == "local" or (family is None and family_of(q0) == "local"):
        q_local, taken, trace = refine_local(
            model, q0, x, prior, steps=steps, lr=lr, samples=samples, window=window, tol=tol, decay=decay,
            min_lr=min_lr,
        )  # fmt: skip
        return Refined(q_local, taken, trace)
    if family is not None:
        q0 = as_family(q0, family)
    loc, raw = _free_parameters(q0)
    taken, trace = adam_per_point(
        [loc, raw], lambda: stochastic_bound(model, gaussian(loc, raw), x, prior, samples),
        steps=steps, lr=lr, window=window, tol=tol, decay=decay, min_lr=min_lr,
    )  # fmt: skip
    q = gaussian(loc.detach(), raw.detach())
    return Refined(q, taken, trace)


def refine(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    steps: int = 200,
    lr: float = 0.1,
    samples: int = 16,
    window: int = 20,
    tol: float = 1e-3,
    decay: float = 0.5,
    min_lr: float = 1e-4,
    family: Family | None = None,
) -> Distribution:
    r"""Refine the guide's q(z|x) per data point by maximising the ELBO (semi-amortized VI, Kim et al. 2018).

    .. math::
        q^*_n = \arg\max_{q \in \mathcal Q} \; \mathbb E_{q}[\log p(x_n|z)] - \mathrm{KL}(q \,\|\, p(z)),
        \qquad q^{(0)}_n = q_\phi(z|x_n)

    Q is ``family``, by default the guide's own: diagonal Gaussians for ``Independent(Normal)``, all Gaussians
    for ``MultivariateNormal``, the guide's own parametric family for any other q that
    :mod:`elbokit.diagnostics.refine_any` can take apart (``"local"``: Beta, Gamma, Dirichlet, ..., by their
    parameters in unconstrained space; discrete ones by the score function); ``family="full"`` refines a
    mean-field guide's q in the full family (its start the same diagonal covariance), ``family="diagonal"`` a full
    one's among mean-field Gaussians. Each step
    estimates the reconstruction with ``samples`` reparameterised draws and takes the KL in closed form; Adam
    updates the B points' (loc, scale) at once (one vectorised problem; Adam is per coordinate, so points do not
    interact). Every ``window`` steps the batch-mean bound, averaged
    over the window, is compared with the best so far: without an improvement of ``tol`` nats the learning
    rate is multiplied by ``decay``, and the optimisation stops once it falls below ``min_lr`` (or after
    ``steps``). The model is not changed and its parameters receive no gradient.

    Args:
        model: p(z) and p(x|z).
        guide: x -> q(z|x), batch (B,), event (d,).
        x: (B, *event) data.
        steps: most optimisation steps.
        lr: Adam's initial learning rate.
        samples: reparameterised draws of z per point and step.
        window: steps per plateau check.
        tol: smallest improvement of the window-mean bound (nats per point) that counts as progress.
        decay: learning-rate factor on a plateau, in (0, 1).
        min_lr: the optimisation stops when the learning rate falls below this.
        family: ``"diagonal"``, ``"full"``, ``"flow"`` (:func:`elbokit.diagnostics.refine_flow.refine_flow`: a
            LocalFlow per point, started at the guide's flow or Gaussian q), ``"local"`` (the guide's parametric
            family, by :mod:`elbokit.diagnostics.refine_any`) or ``None`` (the guide's own family).

    Returns:
        The refined q, detached, of that family: batch (B,), event (d,). ``lambda _: q`` is a guide.

    References:
        Kim, Wiseman, Miller, Sontag & Rush, "Semi-amortized variational autoencoders", ICML 2018.
        Cremer, Li & Duvenaud, "Inference suboptimality in variational autoencoders", ICML 2018.
    """
    return refine_with_trace(
        model, guide, x, steps=steps, lr=lr, samples=samples, window=window, tol=tol, decay=decay, min_lr=min_lr,
        family=family,
    ).q
