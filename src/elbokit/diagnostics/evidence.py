r"""How far to trust an estimate of log p(x): Pareto k-hat, the IWAE_k curve, AIS and BDMC.

Annealed importance sampling (AIS, Neal 2001) moves chains from a tractable f_0 (the prior p(z), or a guide's
q(z|x)) to the posterior along the geometric path

.. math::
    \log f_\beta(z) = (1 - \beta) \log f_0(z) + \beta \log p(x, z), \qquad 0 = \beta_0 < \dots < \beta_T = 1,

with one HMC transition leaving f_{\beta_t} invariant per temperature. Its weight

.. math::
    \log w = \sum_{t=1}^{T} (\beta_t - \beta_{t-1}) \big[\log p(x, z_{t-1}) - \log f_0(z_{t-1})\big]

is unbiased for p(x), so log-mean-exp over chains is a stochastic lower bound whose gap -> 0 as T grows.
Run backwards from an exact posterior sample (which simulated data provide: the z that generated x), the
same chain gives an unbiased estimate of 1/p(x), hence a stochastic upper bound (bidirectional Monte Carlo,
Grosse, Ghahramani & Adams 2015). On simulated data the sandwich BDMC - AIS bounds the error of both; as
used to evaluate VAEs by Wu, Burda, Salakhutdinov & Grosse (2017).

References:
    Neal (2001). Annealed importance sampling. Statistics and Computing 11.
    Grosse, Ghahramani & Adams (2015). Sandwiching the marginal likelihood using bidirectional Monte Carlo.
    arXiv:1511.02543.
    Wu, Burda, Salakhutdinov & Grosse (2017). On the quantitative analysis of decoder-based generative models.
    ICLR.
    Vehtari, Simpson, Gelman, Yao & Gabry (2024). Pareto smoothed importance sampling. JMLR 25(72).
    Zhang & Stephens (2009). A new and efficient estimation method for the generalized Pareto distribution.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from elbokit.estimators._pareto import pareto_khat
from elbokit.estimators._weights import check_positive_int, guide_distribution, log_mean_exp, log_weights
from elbokit.estimators.marginal import estimate_from_moments, weight_moments
from elbokit.models.base import Guide, LatentModel
from elbokit.types import Estimate

__all__ = ["CurvePoint", "ais", "bdmc", "iwae_curve", "pareto_khat", "sigmoid_schedule"]

_TARGET_ACCEPT = 0.65  # HMC acceptance rate the step size is adapted toward (Wu et al. 2017)
_STEP_RANGE = (1e-4, 1.0)  # the adapted step size stays in this range


class CurvePoint(NamedTuple):
    """IWAE_k averaged over data points, with its Monte-Carlo standard error over repeats."""

    k: int
    value: float
    stderr: float


def sigmoid_schedule(steps: int, *, radius: float = 4.0, dtype: torch.dtype | None = None) -> Tensor:
    r"""Inverse temperatures \beta_0 = 0 < ... < \beta_T = 1, denser near both ends (Grosse et al. 2015).

    .. math::
        \tilde\beta_t = \sigma\big(r (2t/T - 1)\big), \qquad
        \beta_t = (\tilde\beta_t - \tilde\beta_0) / (\tilde\beta_T - \tilde\beta_0), \quad t = 0..T

    Returns:
        (T + 1,) the schedule.
    """
    check_positive_int("steps", steps)
    s = torch.sigmoid(torch.linspace(-radius, radius, steps + 1, dtype=dtype))
    return (s - s[0]) / (s[-1] - s[0])


class _Path:
    """The geometric path between log f_0 and log p(x, z), evaluated with gradients in z only."""

    def __init__(self, model: LatentModel, x: Tensor, start: Distribution) -> None:
        self.model, self.x, self.start, self.prior = model, x, start, model.prior()

    def __call__(self, z: Tensor, beta: float) -> tuple[Tensor, Tensor, Tensor]:
        """log f_0(z), log p(x, z) (each (C, B)) and the gradient of log f_beta at z (C, B, d)."""
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_f0 = self.start.log_prob(z)
            log_joint = self.prior.log_prob(z) + self.model.likelihood(z).log_prob(self.x)
            log_f = (1.0 - beta) * log_f0 + beta * log_joint
            (grad,) = torch.autograd.grad(log_f.sum(), z)
        return log_f0.detach(), log_joint.detach(), grad


def _hmc(
    path: _Path, z: Tensor, beta: float, step: Tensor, leapfrog: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    r"""One HMC transition leaving f_beta invariant: L leapfrog steps of size ``step`` (B,), then accept with
    probability min(1, exp(H_0 - H_L)), H = -log f_beta(z) + |p|^2 / 2. Returns z' (C, B, d) and the accepted
    mask (C, B)."""
    eps = step.unsqueeze(-1)  # (B, 1), broadcasts over chains and d
    log_f0, log_joint, grad = path(z, beta)
    energy0 = -((1.0 - beta) * log_f0 + beta * log_joint)
    momentum = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    kinetic0 = 0.5 * momentum.square().sum(-1)
    new = z
    momentum = momentum + 0.5 * eps * grad
    for i in range(leapfrog):
        new = new + eps * momentum
        log_f0, log_joint, grad = path(new, beta)
        momentum = momentum + (eps if i < leapfrog - 1 else 0.5 * eps) * grad
    energy = -((1.0 - beta) * log_f0 + beta * log_joint)
    log_ratio = energy0 + kinetic0 - energy - 0.5 * momentum.square().sum(-1)  # (C, B)
    uniform = torch.rand(log_ratio.shape, generator=generator, dtype=z.dtype, device=z.device)
    accept = uniform.log() < torch.nan_to_num(log_ratio, nan=-math.inf)
    return torch.where(accept.unsqueeze(-1), new, z), accept


def _anneal(
    path: _Path,
    z: Tensor,
    betas: Tensor,
    *,
    leapfrog: int,
    step_size: float,
    adapt: bool,
    generator: torch.Generator | None,
) -> Tensor:
    r"""Run chains z (C, B, d) through the temperatures ``betas`` in the order given and return the log weight
    \sum_t (\beta_t - \beta_{t-1}) [\log p(x, z) - \log f_0(z)] (C, B), each term at the state before the
    transition at \beta_t. Run through reversed betas (1 -> 0) the increments are negative and the sum is
    the log weight of reverse AIS."""
    check_positive_int("leapfrog", leapfrog)
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    step = torch.full(z.shape[1:2], step_size, dtype=z.dtype, device=z.device)  # per data point: (B,)
    accept_rate = torch.full_like(step, _TARGET_ACCEPT)
    log_w = z.new_zeros(z.shape[:2])
    schedule = betas.tolist()  # Python floats: no device sync per temperature
    for t in range(1, len(schedule)):
        log_f0, log_joint, _ = path(z, schedule[t - 1])
        log_w = log_w + (schedule[t] - schedule[t - 1]) * (log_joint - log_f0)
        if t == len(schedule) - 1:
            break  # the weight is complete; a transition at the last temperature would change nothing in it
        z, accept = _hmc(path, z, schedule[t], step, leapfrog, generator)
        if adapt:  # Wu et al. (2017): nudge each point's step toward the target acceptance rate
            accept_rate = 0.9 * accept_rate + 0.1 * accept.to(z.dtype).mean(0)
            step = torch.where(accept_rate > _TARGET_ACCEPT, step * 1.02, step * 0.98).clamp(*_STEP_RANGE)
    return log_w


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a torch.Tensor of shape (B, *event), got {getattr(x, 'shape', type(x))}")


def _estimate(log_w: Tensor) -> Estimate:
    """log-mean-exp over chains of log w (C, B) with its delta-method stderr and ESS (chains as samples)."""
    if log_w.shape[0] == 1:
        nan = torch.full_like(log_w[0], math.nan)
        return Estimate(value=log_w[0], stderr=nan, ess=torch.ones_like(log_w[0]), pareto_k=None, samples=1)
    return estimate_from_moments(weight_moments(log_w))


def ais(
    model: LatentModel,
    x: Tensor,
    *,
    steps: int = 1000,
    chains: int = 16,
    proposal: Guide | None = None,
    leapfrog: int = 10,
    step_size: float = 0.05,
    adapt: bool = True,
    generator: torch.Generator | None = None,
) -> Estimate:
    r"""Annealed importance sampling estimate of log p(x) per data point: a stochastic lower bound.

    .. math::
        \log \hat p(x) = \log \frac1C \sum_{c=1}^C w_c, \qquad
        \log w_c = \sum_{t=1}^T (\beta_t - \beta_{t-1}) [\log p(x, z^c_{t-1}) - \log f_0(z^c_{t-1})],

    with z^c_0 ~ f_0 = p(z) (or ``proposal(x)``), the sigmoidal schedule of :func:`sigmoid_schedule` and one
    HMC transition (``leapfrog`` steps, Metropolis accept) per intermediate temperature. All chains and data
    points move as one (C, B, d) tensor. With ``adapt``, each point's step size is multiplied by 1.02 or 0.98
    after every transition as its running acceptance rate is above or below 0.65 (Wu et al. 2017); the step
    then depends on the chains' past, which is the usual practice and biases nothing visibly.

    Args:
        model: p(z) and p(x|z); its parameters receive no gradient (z alone is differentiated).
        x: (B, *event) data.
        steps: T, the number of temperatures after beta = 0.
        chains: C >= 1 independent chains per data point (C >= 2 for a standard error).
        proposal: a guide x -> q(z|x) to start from instead of the prior.
        leapfrog: leapfrog steps per HMC transition.
        step_size: initial leapfrog step size.
        adapt: adapt the step size per data point toward 65% acceptance.
        generator: the source of every random draw (initial z, momenta, accept tests).

    Returns:
        Estimate: ``value``, ``stderr`` (delta method over chains) and ``ess`` (B,); ``samples`` = C.
    """
    check_positive_int("chains", chains)
    _check_x(x)
    with torch.no_grad():
        prior = model.prior()
        start = prior if proposal is None else guide_distribution(model, proposal, x, prior)
        shape = (chains, x.shape[0]) if proposal is None else (chains,)
        z = _sample(start, shape, generator)  # (C, B, d)
        path = _Path(model, x, start)
        betas = sigmoid_schedule(steps, dtype=z.dtype)
        log_w = _anneal(path, z, betas, leapfrog=leapfrog, step_size=step_size, adapt=adapt, generator=generator)
        return _estimate(log_w)


def bdmc(
    model: LatentModel,
    x: Tensor,
    z: Tensor,
    *,
    steps: int = 1000,
    chains: int | None = None,
    leapfrog: int = 10,
    step_size: float = 0.05,
    adapt: bool = True,
    generator: torch.Generator | None = None,
) -> Estimate:
    r"""Reverse AIS from exact posterior samples: a stochastic upper bound on log p(x) (Grosse et al. 2015).

    Starting at z_T ~ p(z|x) and annealing from beta = 1 back to 0 with the same HMC transitions,

    .. math::
        \log w^{\mathrm{rev}} = \sum_{t=1}^T (\beta_t - \beta_{t-1}) [\log p(z_t) - \log p(x, z_t)], \qquad
        \mathbb E[w^{\mathrm{rev}}] = 1 / p(x),

    so -log (1/C) sum_c w^rev_c >= log p(x) in expectation (Jensen). For simulated data the z that generated
    x is an exact posterior sample.

    Args:
        model: p(z) and p(x|z).
        x: (B, *event) data.
        z: (B, d) one exact posterior sample per point, or (C, B, d) C independent ones.
        steps: T, the number of temperatures after beta = 0.
        chains: C. For (C, B, d) samples it must be C (or None); for (B, d) the one sample starts C chains
            (default 16), whose stderr then measures the annealing noise given that z only.
        leapfrog, step_size, adapt, generator: as in :func:`ais`.

    Returns:
        Estimate whose ``value`` (B,) is the upper-bound estimate -log mean_c w^rev_c; ``stderr`` and ``ess``
        are those of the reverse weights; ``samples`` = C.
    """
    _check_x(x)
    if z.dim() == 2:
        chains = 16 if chains is None else chains
        check_positive_int("chains", chains)
        z = z.expand(chains, *z.shape)
    elif z.dim() != 3 or (chains is not None and chains != z.shape[0]):
        raise ValueError(f"z must have shape (B, d) or (chains, B, d) with chains={chains}, got {tuple(z.shape)}")
    if z.shape[1] != x.shape[0]:
        raise ValueError(f"z must have x's batch size {x.shape[0]} in dimension -2, got shape {tuple(z.shape)}")
    with torch.no_grad():
        path = _Path(model, x, model.prior())
        betas = sigmoid_schedule(steps, dtype=z.dtype).flip(0)  # 1 -> 0
        # Through reversed betas the increments (beta_t - beta_{t-1}) are negative: this is log w^rev.
        log_w_rev = _anneal(path, z, betas, leapfrog=leapfrog, step_size=step_size, adapt=adapt, generator=generator)
        est = _estimate(log_w_rev)
        return est._replace(value=-est.value)


def iwae_curve(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    ks: tuple[int, ...] = (1, 10, 100, 1000),
    *,
    repeats: int = 5,
) -> list[CurvePoint]:
    r"""IWAE_k = log (1/k) sum_k w_k averaged over data points, for each k: rising toward log p(x) as k grows.

    Each k is drawn ``repeats`` times; ``value`` is the mean over repeats and points and ``stderr`` the standard
    deviation over repeats of the point-averaged bound divided by sqrt(repeats): Monte-Carlo noise only, not
    the spread of log p(x) across data points. A curve still climbing at the largest k says the estimate of
    log p(x) at that k is still biased low (Burda et al. 2016).

    Returns:
        One CurvePoint(k, value, stderr) per k, in the order of ``ks``.
    """
    check_positive_int("repeats", repeats)
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 to estimate a standard error, got {repeats}")
    points = []
    with torch.no_grad():
        prior = model.prior()
        q = guide_distribution(model, guide, x, prior)
        for k in ks:
            check_positive_int("k", k)
            draws = torch.stack(
                [
                    log_mean_exp(log_weights(model, q, x, k, path="score", prior=prior).log_w).mean()
                    for _ in range(repeats)
                ]
            )  # (repeats,)
            points.append(CurvePoint(k, float(draws.mean()), float(draws.std() / math.sqrt(repeats))))
    return points


def _sample(dist: Distribution, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Draw from ``dist`` under ``generator`` when it is a Normal-type distribution (loc + scale_tril @ eps or
    Independent(Normal)); otherwise fall back to ``dist.sample`` and the global RNG."""
    if generator is not None:
        base = dist.base_dist if isinstance(dist, torch.distributions.Independent) else dist
        if isinstance(base, torch.distributions.Normal):
            out_shape = dist._extended_shape(torch.Size(shape))
            eps = torch.randn(out_shape, generator=generator, dtype=base.loc.dtype, device=base.loc.device)
            return base.loc + eps * base.scale
        if isinstance(dist, torch.distributions.MultivariateNormal):
            out_shape = dist._extended_shape(torch.Size(shape))
            eps = torch.randn(out_shape, generator=generator, dtype=dist.loc.dtype, device=dist.loc.device)
            return dist.loc + (dist.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    return dist.sample(torch.Size(shape))
