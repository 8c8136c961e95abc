"""Annealed importance sampling machinery: the tempering schedule, the geometric path and HMC transitions
(in the unconstrained u of :mod:`elbokit.diagnostics._unconstrained`), and draws of the starting points.

Used by :func:`elbokit.diagnostics.ais` and :func:`elbokit.diagnostics.bdmc` (Neal 2001; Wu et al. 2017).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from elbokit.diagnostics._unconstrained import checkable_support, inside, latent_transform, log_abs_det_jacobian
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


class PathPoint(NamedTuple):
    """The geometric path at states u (C, B, n): z = T(u) and the densities there."""

    log_f0: Tensor  # (C, B) log f_0(z)
    log_joint: Tensor  # (C, B) log p(x, z)
    log_f: Tensor  # (C, B) log f_beta(u), -inf where not ``valid``
    grad: Tensor  # (C, B, n) d log f_beta(u) / du
    valid: Tensor  # (C, B) z = T(u) lies in the supports of p(z) and f_0 and log f_beta(u) is finite


class GeometricPath:
    r"""The geometric path between log f_0 and log p(x, z), in the unconstrained u, z = T(u):

    .. math::
        \log f_\beta(u) = (1 - \beta) \log f_0(T(u)) + \beta \log p(x, T(u)) + \log \lvert \det J_T(u) \rvert,

    with T = biject_to(p(z).support) (skipped where that is R^d), differentiated in u only.

    Where T(u) leaves a support in floating point (exp underflowing to 0, say), or log f_beta(u) is not finite,
    the state is invalid: log f_beta = -inf, which HMC rejects, and the densities are evaluated at the chain's
    starting point instead so that no distribution sees a value outside its support.

    Args:
        model: p(z) and p(x|z).
        x: (B, *event) data.
        start: f_0.
        z0: (C, B, d) the chains' starting points, in the supports of p(z) and f_0; ``self.u0`` = T^{-1}(z0).
        prior: p(z) if the caller already holds it.
    """

    def __init__(
        self, model: LatentModel, x: Tensor, start: Distribution, z0: Tensor, *, prior: Distribution | None = None
    ) -> None:
        self.model, self.x, self.start = model, x, start
        self.prior = model.prior() if prior is None else prior
        self.transform = latent_transform(self.prior)
        # latent_transform has checked that p(z) has a support; f_0's is checked too where it is declared
        dists = [self.prior] if start is self.prior else [self.prior, start]
        self.supports = [c for c in map(checkable_support, dists) if c is not None]
        outside = int((~self._inside(z0)).sum())
        if outside:
            raise ValueError(
                f"the starting points z must lie in the prior's support {self.supports[0]} (and f_0's), got "
                f"{outside} of {z0.shape[:-1].numel()} outside"
            )
        self.anchor = z0
        self.u0 = z0 if self.transform is None else self.transform.inv(z0)  # (C, B, n)

    def _inside(self, z: Tensor) -> Tensor:
        """(C, B): z (C, B, d) lies in every support."""
        ok = inside(self.supports[0], z)
        for support in self.supports[1:]:
            ok = ok & inside(support, z)
        return ok

    def __call__(self, u: Tensor, beta: float) -> PathPoint:
        """The path at u (C, B, n) and inverse temperature ``beta``."""
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            z = u if self.transform is None else self.transform(u)  # (C, B, d)
            in_support = self._inside(z)  # (C, B)
            z = torch.where(in_support.unsqueeze(-1), z, self.anchor)
            log_f0 = self.start.log_prob(z)
            log_joint = self.prior.log_prob(z) + self.model.likelihood(z).log_prob(self.x)
            log_f = (1.0 - beta) * log_f0 + beta * log_joint
            if self.transform is not None:
                log_f = log_f + log_abs_det_jacobian(self.transform, u, z)
            valid = in_support & torch.isfinite(log_f)
            log_f = torch.where(valid, log_f, -math.inf)
            (grad,) = torch.autograd.grad(log_f.sum(), u)
        return PathPoint(log_f0.detach(), log_joint.detach(), log_f.detach(), grad, valid)


def hmc_transition(
    path: GeometricPath,
    u: Tensor,
    beta: float,
    step: Tensor,
    leapfrog: int,
    generator: torch.Generator | None,
    here: PathPoint,
) -> tuple[Tensor, Tensor]:
    r"""One HMC transition leaving f_beta invariant: L leapfrog steps of size ``step`` (B,) from u (C, B, n),
    whose path point is ``here``, then accept with probability min(1, exp(H_0 - H_L)),
    H = -log f_beta(u) + |p|^2 / 2; a trajectory through an invalid state is rejected. Returns u' (C, B, n)
    and the accepted mask (C, B)."""
    eps = step.unsqueeze(-1)  # (B, 1), broadcasts over chains and n
    energy0 = -here.log_f
    momentum = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
    kinetic0 = 0.5 * momentum.square().sum(-1)
    new, point, valid = u, here, torch.ones_like(here.valid)
    momentum = momentum + 0.5 * eps * here.grad
    for i in range(leapfrog):
        new = new + eps * momentum
        point = path(new, beta)
        valid = valid & point.valid
        momentum = momentum + (eps if i < leapfrog - 1 else 0.5 * eps) * point.grad
    energy = -point.log_f
    log_ratio = energy0 + kinetic0 - energy - 0.5 * momentum.square().sum(-1)  # (C, B)
    uniform = torch.rand(log_ratio.shape, generator=generator, dtype=u.dtype, device=u.device)
    accept = (uniform.log() < torch.nan_to_num(log_ratio, nan=-math.inf)) & valid
    return torch.where(accept.unsqueeze(-1), new, u), accept


def anneal(
    path: GeometricPath,
    u: Tensor,
    betas: Tensor,
    *,
    leapfrog: int,
    step_size: float,
    adapt: bool,
    generator: torch.Generator | None,
) -> Tensor:
    r"""Run chains u (C, B, n) through the temperatures ``betas`` in the order given and return the log weight
    \sum_t (\beta_t - \beta_{t-1}) [\log p(x, z) - \log f_0(z)] (C, B), z = T(u), each term at the state
    before the transition at \beta_t. The Jacobian of T cancels from the ratio f_{\beta_t} / f_{\beta_{t-1}}.
    Run through reversed betas (1 -> 0) the increments are negative and the sum is the log weight of reverse
    AIS."""
    check_positive_int("leapfrog", leapfrog)
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    step = torch.full(u.shape[1:2], step_size, dtype=u.dtype, device=u.device)  # per data point: (B,)
    accept_rate = torch.full_like(step, _TARGET_ACCEPT)
    log_w = u.new_zeros(u.shape[:2])
    schedule = betas.tolist()  # Python floats: no device sync per temperature
    for t in range(1, len(schedule)):
        point = path(u, schedule[t])  # log f_0 and log p(x, z) do not depend on beta; the gradient is for HMC
        log_w = log_w + (schedule[t] - schedule[t - 1]) * (point.log_joint - point.log_f0)
        if t == len(schedule) - 1:
            break  # the weight is complete; a transition at the last temperature would change nothing in it
        u, accept = hmc_transition(path, u, schedule[t], step, leapfrog, generator, point)
        if adapt:  # Wu et al. (2017): nudge each point's step toward the target acceptance rate
            accept_rate = 0.9 * accept_rate + 0.1 * accept.to(u.dtype).mean(0)
            step = torch.where(accept_rate > _TARGET_ACCEPT, step * 1.02, step * 0.98).clamp(*_STEP_RANGE)
    return log_w


def sample_start(dist: Distribution, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    """Draw ``shape`` samples from ``dist`` under ``generator`` where its family allows (Normal,
    MultivariateNormal, Gamma, Beta, and Independent or MixtureSameFamily of these); otherwise, or without a
    generator, fall back to ``dist.sample`` and the global RNG (a MixtureSameFamily has no rsample)."""
    z = None if generator is None else _draw(dist, torch.Size(shape), generator)
    return dist.sample(torch.Size(shape)) if z is None else z


def _draw(dist: Distribution, shape: torch.Size, generator: torch.Generator) -> Tensor | None:
    """``dist`` sampled under ``generator``: (*shape, *batch, *event), or None for a family not covered."""
    if isinstance(dist, torch.distributions.Independent):
        return _draw(dist.base_dist, shape, generator)  # the same (*shape, *batch, *event) tensor
    out_shape = dist._extended_shape(shape)
    if isinstance(dist, torch.distributions.Normal):
        eps = torch.randn(out_shape, generator=generator, dtype=dist.loc.dtype, device=dist.loc.device)
        return dist.loc + eps * dist.scale
    if isinstance(dist, torch.distributions.MultivariateNormal):
        eps = torch.randn(out_shape, generator=generator, dtype=dist.loc.dtype, device=dist.loc.device)
        return dist.loc + (dist.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    if isinstance(dist, torch.distributions.Gamma):  # as Gamma.rsample: X ~ Gamma(alpha, 1), X / rate >= tiny
        gamma = torch._standard_gamma(dist.concentration.expand(out_shape), generator=generator)
        return (gamma / dist.rate.expand(out_shape)).clamp(min=torch.finfo(gamma.dtype).tiny)
    if isinstance(dist, torch.distributions.Beta):  # as Beta.rsample: the first coordinate of a Dirichlet draw
        concentration = torch.stack([dist.concentration1, dist.concentration0], -1).expand(*out_shape, 2)
        return torch._sample_dirichlet(concentration, generator=generator)[..., 0]
    if isinstance(dist, torch.distributions.MixtureSameFamily):
        components = _draw(dist.component_distribution, shape, generator)  # (*shape, *batch, K, *event)
        if components is None:
            return None
        probs = dist.mixture_distribution.probs  # (*batch, K)
        index = torch.multinomial(probs.reshape(-1, probs.shape[-1]), shape.numel(), True, generator=generator)
        index = index.T.reshape(*shape, *dist.batch_shape, 1, *(1 for _ in dist.event_shape))
        index = index.expand(*shape, *dist.batch_shape, 1, *dist.event_shape)
        return components.gather(len(shape) + len(dist.batch_shape), index).squeeze(len(shape) + len(dist.batch_shape))
    return None
