r"""How far to trust an estimate of log p(x): Pareto k-hat, the IWAE_k curve, AIS and BDMC.

Annealed importance sampling (AIS, Neal 2001) moves chains from a tractable f_0 (the prior p(z), or a guide's
q(z|x)) to the posterior along the geometric path

.. math::
    \log f_\beta(z) = (1 - \beta) \log f_0(z) + \beta \log p(x, z), \qquad 0 = \beta_0 < \dots < \beta_T = 1,

with one HMC transition leaving f_{\beta_t} invariant per temperature. Its weight

.. math::
    \log w = \sum_{t=1}^{T} (\beta_t - \beta_{t-1}) \big[\log p(x, z_{t-1}) - \log f_0(z_{t-1})\big]

is unbiased for p(x), so log-mean-exp over chains is a stochastic lower bound whose gap -> 0 as T grows.
HMC runs in the unconstrained u, z = T(u) with T = biject_to(p(z).support), on the density
f_\beta(T(u)) |det J_T(u)| (the identity, and skipped, where the support is R^d): a Beta or Gamma latent works
as a Gaussian one does. The Jacobian cancels from each ratio f_{\beta_t} / f_{\beta_{t-1}}, so the weight is
the one above. The latent must be continuous with event shape (d,).
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

from elbokit.diagnostics._ais import GeometricPath, anneal, sample_start, sigmoid_schedule
from elbokit.diagnostics._unconstrained import latent_transform
from elbokit.estimators._pareto import pareto_khat
from elbokit.estimators._weights import (
    check_data,
    check_positive_int,
    guide_distribution,
    log_mean_exp,
    log_weights,
    model_prior,
)
from elbokit.estimators.marginal import estimate_from_moments, weight_moments
from elbokit.models.base import Guide, LatentModel
from elbokit.types import Estimate

__all__ = ["CurvePoint", "ais", "bdmc", "iwae_curve", "pareto_khat", "sigmoid_schedule"]


class CurvePoint(NamedTuple):
    """IWAE_k averaged over data points, with its Monte-Carlo standard error over repeats."""

    k: int
    value: float
    stderr: float


def _check_x(model: LatentModel, x: Tensor) -> None:
    """x against the model (:func:`~elbokit.estimators._weights.check_data`): shape, dtype, device, support."""
    check_data(model, None, x)


def _start(model: LatentModel, x: Tensor, prior: Distribution, proposal: Guide | Distribution | None) -> Distribution:
    """f_0: the prior, the guide's q(z|x), or the given distribution with batch (B,) or () and p(z)'s event."""
    if proposal is None:
        return prior
    if not isinstance(proposal, Distribution):
        return guide_distribution(model, proposal, x, prior)
    if proposal.batch_shape not in (x.shape[:1], torch.Size()) or proposal.event_shape != prior.event_shape:
        raise ValueError(
            f"a proposal distribution must have batch shape {tuple(x.shape[:1])} or () and the prior's event shape "
            f"{tuple(prior.event_shape)}, got batch {tuple(proposal.batch_shape)}, event {tuple(proposal.event_shape)}"
        )
    return proposal


def _estimate(log_w: Tensor) -> Estimate:
    """log-mean-exp over chains of log w (C, B) with its delta-method stderr, ESS and Pareto k-hat (chains as
    samples; with few chains the k-hat fit has a tail of a handful of weights and is a coarse check)."""
    if log_w.shape[0] == 1:
        nan = torch.full_like(log_w[0], math.nan)
        return Estimate(value=log_w[0], stderr=nan, ess=torch.ones_like(log_w[0]), pareto_k=None, samples=1)
    return estimate_from_moments(weight_moments(log_w))._replace(pareto_k=pareto_khat(log_w))


def ais(
    model: LatentModel,
    x: Tensor,
    *,
    steps: int = 1000,
    chains: int = 16,
    proposal: Guide | Distribution | None = None,
    leapfrog: int = 10,
    step_size: float = 0.05,
    adapt: bool = True,
    generator: torch.Generator | None = None,
) -> Estimate:
    r"""Annealed importance sampling estimate of log p(x) per data point: a stochastic lower bound.

    .. math::
        \log \hat p(x) = \log \frac1C \sum_{c=1}^C w_c, \qquad
        \log w_c = \sum_{t=1}^T (\beta_t - \beta_{t-1}) [\log p(x, z^c_{t-1}) - \log f_0(z^c_{t-1})],

    with z^c_0 ~ f_0 = p(z) (or the proposal), the sigmoidal schedule of :func:`sigmoid_schedule` and one
    HMC transition (``leapfrog`` steps, Metropolis accept) per intermediate temperature, on u = T^{-1}(z) for a
    constrained latent (see the module docstring). All chains and data points move as one (C, B, n) tensor.
    With ``adapt``, each point's step size is multiplied by 1.02 or 0.98 after every transition as its running
    acceptance rate is above or below 0.65 (Wu et al. 2017); the step then depends on the chains' past, which
    is the usual practice and biases nothing visibly.

    Args:
        model: p(z) (continuous, event shape (d,)) and p(x|z); its parameters receive no gradient (z alone is
            differentiated).
        x: (B, *event) data.
        steps: T, the number of temperatures after beta = 0.
        chains: C >= 1 independent chains per data point (C >= 2 for a standard error).
        proposal: f_0 instead of the prior: a guide x -> q(z|x), or a Distribution with batch (B,) (or (),
            shared) and event (d,), e.g. a mixture. It must put its mass inside the prior's support.
        leapfrog: leapfrog steps per HMC transition.
        step_size: initial leapfrog step size.
        adapt: adapt the step size per data point toward 65% acceptance.
        generator: the source of every random draw (initial z, momenta, accept tests); a start distribution
            outside the families :func:`~elbokit.diagnostics._ais.sample_start` covers draws its initial z from
            the global RNG.

    Returns:
        Estimate: ``value``, ``stderr`` (delta method over chains), ``ess`` and ``pareto_k`` (of the chains'
        weights; None for one chain) (B,); ``samples`` = C.

    Raises:
        ValueError: p(z) is discrete or its event shape is not (d,), or f_0 does not match x and p(z).
    """
    check_positive_int("chains", chains)
    _check_x(model, x)
    with torch.no_grad():
        prior = model.prior()
        latent_transform(prior)  # checks the latent before anything is drawn
        start = _start(model, x, prior, proposal)
        shape = (chains,) if start.batch_shape == x.shape[:1] else (chains, x.shape[0])
        z = sample_start(start, shape, generator)  # (C, B, d)
        path = GeometricPath(model, x, start, z, prior=prior)
        betas = sigmoid_schedule(steps, dtype=z.dtype)
        log_w = anneal(path, path.u0, betas, leapfrog=leapfrog, step_size=step_size, adapt=adapt, generator=generator)
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
    x is an exact posterior sample. The chains move on u = T^{-1}(z) as in :func:`ais`.

    Args:
        model: p(z) (continuous, event shape (d,)) and p(x|z).
        x: (B, *event) data.
        z: (B, d) one exact posterior sample per point, or (C, B, d) C independent ones, in p(z)'s support.
        steps: T, the number of temperatures after beta = 0.
        chains: C. For (C, B, d) samples it must be C (or None); for (B, d) the one sample starts C chains
            (default 16), whose stderr then measures the annealing noise given that z only.
        leapfrog, step_size, adapt, generator: as in :func:`ais`.

    Returns:
        Estimate whose ``value`` (B,) is the upper-bound estimate -log mean_c w^rev_c; ``stderr``, ``ess`` and
        ``pareto_k`` are those of the reverse weights; ``samples`` = C.

    Raises:
        ValueError: p(z) is discrete or its event shape is not (d,), or z has the wrong shape or lies outside
            p(z)'s support.
    """
    _check_x(model, x)
    if not isinstance(z, Tensor) or z.dtype != x.dtype:
        raise ValueError(f"z must be a tensor of x's dtype {x.dtype}, got {getattr(z, 'dtype', type(z).__name__)}")
    if z.dim() == 2:
        chains = 16 if chains is None else chains
        check_positive_int("chains", chains)
        z = z.expand(chains, *z.shape)
    elif z.dim() != 3 or (chains is not None and chains != z.shape[0]):
        raise ValueError(f"z must have shape (B, d) or (chains, B, d) with chains={chains}, got {tuple(z.shape)}")
    if z.shape[1] != x.shape[0]:
        raise ValueError(f"z must have x's batch size {x.shape[0]} in dimension -2, got shape {tuple(z.shape)}")
    with torch.no_grad():
        prior = model.prior()
        path = GeometricPath(model, x, prior, z, prior=prior)
        betas = sigmoid_schedule(steps, dtype=z.dtype).flip(0)  # 1 -> 0
        # Through reversed betas the increments (beta_t - beta_{t-1}) are negative: this is log w^rev.
        log_w_rev = anneal(
            path, path.u0, betas, leapfrog=leapfrog, step_size=step_size, adapt=adapt, generator=generator
        )
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
    for k in ks:
        check_positive_int("k", k)
    sums = iwae_sums(model, guide, x, ks, repeats=repeats)
    return curve_from_sums(sums, x.shape[0], repeats)


def iwae_sums(model: LatentModel, guide: Guide, x: Tensor, ks: tuple[int, ...], *, repeats: int) -> dict[int, Tensor]:
    """For each k, the sum over the points of x of IWAE_k, once per repeat: (repeats,) float64 on the CPU. The
    sums of several batches add up to the whole set's (:func:`curve_from_sums`), as :func:`iwae_curve` of it."""
    out = {}
    with torch.no_grad():
        prior = model_prior(model)
        q = guide_distribution(model, guide, x, prior)
        for k in ks:
            out[k] = torch.stack([
                log_mean_exp(log_weights(model, q, x, k, path="score", prior=prior).log_w).double().sum()
                for _ in range(repeats)
            ]).cpu()  # fmt: skip
    return out


def curve_from_sums(sums: dict[int, Tensor], n: int, repeats: int) -> list[CurvePoint]:
    """The IWAE curve of ``n`` points from their per-repeat sums (:func:`iwae_sums`)."""
    points = []
    for k, total in sums.items():
        draws = total / n  # (repeats,): the point-averaged bound of each repeat
        points.append(CurvePoint(k, float(draws.mean()), float(draws.std() / math.sqrt(repeats))))
    return points
