"""Annealed importance sampling machinery: the tempering schedule, the geometric path and HMC transitions.

Used by :func:`elbokit.diagnostics.ais` and :func:`elbokit.diagnostics.bdmc` (Neal 2001; Wu et al. 2017).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution

from elbokit.estimators._weights import check_positive_int
from elbokit.models.base import LatentModel

_TARGET_ACCEPT = 0.65  # HMC acceptance rate the step size is adapted toward (Wu et al. 2017)
_STEP_RANGE = (1e-4, 1.0)  # the adapted step size stays in this range


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


class GeometricPath:
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


def hmc_transition(
    path: GeometricPath, z: Tensor, beta: float, step: Tensor, leapfrog: int, generator: torch.Generator | None
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


def anneal(
    path: GeometricPath,
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
        z, accept = hmc_transition(path, z, schedule[t], step, leapfrog, generator)
        if adapt:  # Wu et al. (2017): nudge each point's step toward the target acceptance rate
            accept_rate = 0.9 * accept_rate + 0.1 * accept.to(z.dtype).mean(0)
            step = torch.where(accept_rate > _TARGET_ACCEPT, step * 1.02, step * 0.98).clamp(*_STEP_RANGE)
    return log_w


def sample_start(dist: Distribution, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
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
