r"""q* per data point in the guide's own parametric family, whatever that family: the "local family".

A q(z|x) from torch.distributions is rebuilt from its parameters, each mapped to unconstrained space by
``transform_to(constraint)`` (the constraint its class declares in ``arg_constraints``):

.. math::
    q_n = \mathcal Q(\theta_n), \qquad \theta_{n,i} = T_i(u_{n,i}), \quad T_i = \texttt{transform\_to}(c_i),
    \qquad u^{(0)}_{n,i} = T_i^{-1}(\theta^{\text{encoder}}_{n,i})

and the u are per-point leaves that Adam moves to maximise each point's ELBO, one learning rate per point, as
:func:`elbokit.diagnostics.refine` does for Gaussians. The table :data:`PARAMETERS` names the parameters of each
family (Beta, Gamma, Dirichlet, Normal, LogNormal, MultivariateNormal, and Bernoulli, Categorical and
OneHotCategorical by their logits); ``Independent`` and ``TransformedDistribution`` wrappers of these keep their
wrapper and have their base refined. The bound takes the KL in closed form where the KL registry has the pair,
else samples it. Reparameterisable families (the continuous ones: Beta, Gamma and Dirichlet by implicit
reparameterisation) get the pathwise gradient; discrete ones the score-function gradient with a leave-one-out
baseline (Mnih & Rezende 2016; Kool et al. 2019), which needs ``samples >= 2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    Beta,
    Categorical,
    Dirichlet,
    Distribution,
    Gamma,
    Independent,
    LogNormal,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    TransformedDistribution,
    transform_to,
)

from elbokit.estimators._weights import log_likelihood_samples, log_weights
from elbokit.estimators.elbo import analytic_kl, leave_one_out_baseline
from elbokit.models.base import LatentModel

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # Adam (Kingma & Ba 2015)

#: Per family: its parameters as (name, event dimensions of that parameter); the constraint is the class's own.
PARAMETERS: dict[type[Distribution], tuple[tuple[str, int], ...]] = {
    Normal: (("loc", 0), ("scale", 0)),
    LogNormal: (("loc", 0), ("scale", 0)),
    MultivariateNormal: (("loc", 1), ("scale_tril", 2)),
    Beta: (("concentration1", 0), ("concentration0", 0)),
    Gamma: (("concentration", 0), ("rate", 0)),
    Dirichlet: (("concentration", 1),),
    Bernoulli: (("logits", 0),),
    Categorical: (("logits", 1),),
    OneHotCategorical: (("logits", 1),),
}

Rebuild = Callable[[Sequence[Tensor]], Distribution]


def decompose(q: Distribution) -> tuple[list[Tensor], Rebuild]:
    """q's parameters in unconstrained space, detached, and ``rebuild(u)``: the distribution of q's family at u.

    ``rebuild(decompose(q)[0])`` equals q (up to rounding); each u has q's batch shape in front.

    Raises:
        TypeError: q's family is not in :data:`PARAMETERS` (nor an Independent or TransformedDistribution of one).
    """
    cls = type(q)
    if isinstance(q, Gamma) and cls is Gamma:
        return _gamma_mean_and_shape(q)
    if cls in PARAMETERS:
        names = PARAMETERS[cls]
        transforms = [transform_to(q.arg_constraints[name]) for name, _ in names]
        free = []
        for (name, event_dims), transform in zip(names, transforms, strict=True):
            value = getattr(q, name).detach()
            value = value.expand(*q.batch_shape, *value.shape[value.dim() - event_dims :])
            free.append(transform.inv(value))

        def rebuild(u: Sequence[Tensor]) -> Distribution:
            kwargs = {name: t(v) for (name, _), t, v in zip(names, transforms, u, strict=True)}
            return cls(**kwargs, validate_args=False)

        return free, rebuild
    if isinstance(q, Independent):
        free, inner = decompose(q.base_dist)
        ndims = q.reinterpreted_batch_ndims
        return free, lambda u: Independent(inner(u), ndims)
    if isinstance(q, TransformedDistribution):
        free, inner = decompose(q.base_dist)
        q_transforms = q.transforms
        return free, lambda u: TransformedDistribution(inner(u), q_transforms)
    raise TypeError(
        "q must be of a family that can be refined per point: "
        f"{', '.join(sorted(c.__name__ for c in PARAMETERS))}, or an Independent or TransformedDistribution of "
        f"one; got {type(q).__name__}"
    )


def _gamma_mean_and_shape(q: Gamma) -> tuple[list[Tensor], Rebuild]:
    """A Gamma by (log mean, log concentration) rather than (log concentration, log rate): in those coordinates
    the Fisher information is diagonal, so moving the mean leaves the shape alone. From an encoder's poor start,
    300 Adam steps on a 3-latent Gamma posterior (tests/test_diagnostics_any_q.py's linear model, weight 2, noise
    0.3) reached a mean ELBO of -6.1 nats per point this way and -10.7 by concentration and rate."""
    concentration, rate = torch.broadcast_tensors(q.concentration.detach(), q.rate.detach())

    def rebuild(u: Sequence[Tensor]) -> Distribution:
        shape = u[1].exp()
        return Gamma(shape, shape * torch.exp(-u[0]), validate_args=False)

    return [torch.log(concentration / rate), torch.log(concentration)], rebuild


def is_local(q: Distribution) -> bool:
    """Whether :func:`decompose` can take q apart."""
    try:
        decompose(q)
    except TypeError:
        return False
    return True


def stochastic_bound(
    model: LatentModel, q: Distribution, x: Tensor, prior: Distribution, samples: int
) -> tuple[Tensor, Tensor]:
    r"""(value, objective), both (B,): the sampled ELBO and the surrogate whose gradient estimates the ELBO's.

    Reparameterised q: both are :math:`\frac1S \sum_s \log p(x|z_s) - \mathrm{KL}(q\|p)` (closed-form KL where
    registered, else the sampled joint form). Otherwise the score function with a leave-one-out baseline b_s:

    .. math::
        \nabla \mathcal L \approx \frac1S \sum_s (f_s - b_s)\, \nabla \log q(z_s) + \nabla(\text{closed-form part}),
        \qquad z_s \sim q \text{ without gradient}.
    """
    kl = analytic_kl(q, prior)
    if q.has_rsample:
        if kl is None:
            value = log_weights(model, q, x, samples, prior=prior).log_w.mean(0)
        else:
            value = log_likelihood_samples(model, q, x, samples).mean(0) - kl
        return value, value
    terms = log_weights(model, q, x, samples, path="score", prior=prior)
    f = terms.log_w if kl is None else terms.log_px_given_z  # (S, B); log_w's -log q carries q's gradient
    centred = f.detach() - leave_one_out_baseline(f.detach())  # (S, B)
    score = (centred * terms.log_qz).mean(0)  # (B,)
    if kl is None:
        return f.detach().mean(0), score + f.mean(0)
    return f.detach().mean(0) - kl.detach(), score - kl


def adam_per_point(
    params: Sequence[Tensor],
    bound: Callable[[], tuple[Tensor, Tensor]],
    *,
    steps: int,
    lr: float,
    window: int,
    tol: float,
    decay: float,
    min_lr: float,
) -> tuple[int, Tensor]:
    """Maximise each point's bound by Adam over ``params`` (leaves with the batch (B,) in front), in place.

    One learning rate per point, multiplied by ``decay`` when that point's window-mean bound has not improved by
    ``tol`` over a ``window`` of steps; a point stops below ``min_lr``, and the loop once every point has.
    ``bound()`` returns (value, objective), each (B,): the value is traced, the objective's gradient followed.

    Returns:
        (steps taken, the (steps,) trace of the batch-mean value).
    """
    first_param = params[0]
    batch = first_param.shape[0]
    rate = first_param.new_full((batch,), lr)  # (B,)
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    best = first_param.new_full((batch,), -math.inf)  # best window-mean bound per point
    window_sum = first_param.new_zeros(batch)
    trace: list[Tensor] = []
    taken = 0
    with torch.enable_grad():
        for taken in range(1, steps + 1):
            value, objective = bound()  # (B,)
            # Each point's parameters get the gradient of its own bound: a sum, not a mean, over the batch.
            # autograd.grad only touches params: the model's parameters get no .grad.
            grads = torch.autograd.grad(-objective.sum(), list(params))
            with torch.no_grad():
                for p, g, m, v in zip(params, grads, first, second, strict=True):
                    m.lerp_(g, 1 - _BETA1)
                    v.lerp_(g.square(), 1 - _BETA2)
                    m_hat = m / (1 - _BETA1**taken)
                    v_hat = v / (1 - _BETA2**taken)
                    step_size = rate.reshape(batch, *([1] * (p.dim() - 1)))
                    p.sub_(step_size * m_hat / (v_hat.sqrt() + _EPS))
                value = value.detach()
                trace.append(value.mean())
                window_sum += value
                if taken % window == 0:
                    mean, window_sum = window_sum / window, torch.zeros_like(window_sum)
                    improved = mean > best + tol
                    best = torch.where(improved, mean, best)
                    # The bound stopped improving at this step size: shrink it; a point is done below min_lr.
                    rate = torch.where(improved, rate, rate * decay)
                    rate = torch.where(rate < min_lr, torch.zeros_like(rate), rate)
                    if not bool((rate > 0).any()):
                        break
    return taken, torch.stack(trace)


def refine_local(
    model: LatentModel,
    q0: Distribution,
    x: Tensor,
    prior: Distribution,
    *,
    steps: int,
    lr: float,
    samples: int,
    window: int,
    tol: float,
    decay: float,
    min_lr: float,
) -> tuple[Distribution, int, Tensor]:
    """q* in q0's own family, started at q0 (see the module docstring).

    Returns:
        (q*, detached, batch (B,); the steps taken; the (steps,) trace of the batch-mean bound).
    """
    free, rebuild = decompose(q0)
    prior = prior.expand(q0.batch_shape)  # torch's Bernoulli KL does not broadcast
    if not q0.has_rsample and samples < 2:
        raise ValueError(
            f"a q without rsample is refined by the score function, which needs samples >= 2, got {samples}"
        )
    leaves = [u.clone().requires_grad_(True) for u in free]
    taken, trace = adam_per_point(
        leaves, lambda: stochastic_bound(model, rebuild(leaves), x, prior, samples),
        steps=steps, lr=lr, window=window, tol=tol, decay=decay, min_lr=min_lr,
    )  # fmt: skip
    return rebuild([u.detach() for u in leaves]), taken, trace
