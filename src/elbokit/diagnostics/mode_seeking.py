r"""Why the ELBO's q is mode-seeking: reverse KL against forward KL on a two-mode target.

A Gaussian q(z) = N(m, s^2) is fitted to p(z) = ½ N(-μ, σ^2) + ½ N(μ, σ^2) in two ways.

Reverse KL, the ELBO's direction (variational inference): maximise, with z = m + s ε reparameterised,

.. math::
    \mathcal L(q) = \mathbb E_q[\log \tilde p(z) - \log q(z)] = \log Z - \mathrm{KL}(q \,\|\, p)

q is penalised wherever it puts mass where p has none (log p → -∞ there), so it settles inside one mode:
m ≈ ±μ, s ≈ σ, "zero-forcing" or mode-seeking. (Not exactly: the other mode's tail pulls q slightly towards
it; for μ = 3, σ = 1 the optimum is m = ±2.984, s = 1.023, with KL = 0.689 ≈ log 2.) Which mode it takes is set by
the start. Reverse KL is not convex in (m, s): for well-separated modes a symmetric stationary point
m = 0, s ≈ 2.74 (KL = 0.84) is also a local minimum, and a q started broad and central stays there; it is
still narrower than the moment-matched q (s = 3.16), with little mass on either mode.

Forward KL, the direction of maximum likelihood and expectation propagation: minimise

.. math::
    \mathrm{KL}(p \,\|\, q) = \mathbb E_p[-\log q(z)] - H(p)

q is penalised wherever p has mass and q has none, so it covers both modes ("mass-covering"). For a Gaussian q
the optimum matches moments: m = E_p z = 0, s^2 = Var_p z = σ^2 + μ^2. It is given in closed form and also
found by stochastic gradient on samples from p, to show that the two agree.

References:
    Minka (2005). Divergence measures and message passing. Microsoft Research Technical Report MSR-TR-2005-173.
    Bishop (2006). Pattern Recognition and Machine Learning, §10.1.2 (fig. 10.3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, Normal


@dataclass(frozen=True)
class GaussianFit:
    """A fitted q = N(loc, scale^2) and how much of its mass sits near each mode of the target.

    Attributes:
        loc: m.
        scale: s.
        mass_near_modes: q's probability within ``radius`` of each mode, one per mode (in the target's order).
        method: ``"reverse-kl"``, ``"forward-kl"`` (closed-form moment matching) or ``"forward-kl-sgd"``.
    """

    loc: float
    scale: float
    mass_near_modes: tuple[float, ...]
    method: str

    def distribution(self) -> Normal:
        """q as a ``torch.distributions.Normal``."""
        return Normal(torch.tensor(self.loc), torch.tensor(self.scale))


@dataclass(frozen=True)
class ModeSeekingResult:
    """Both fits of a Gaussian to a two-mode target, and what a plot of them needs.

    A plot: ``grid`` on the x axis; ``target_log_density``, ``reverse_log_density`` and ``forward_log_density``
    (exponentiate for densities) as curves; ``modes`` as vertical lines.

    Attributes:
        modes: the target's component means.
        mode_scale: the components' standard deviation σ.
        mixture_mean: E_p z, closed form.
        mixture_scale: sd_p z, closed form.
        radius: the half-width of the interval around each mode in which mass is counted.
        reverse: the reverse-KL (ELBO) fit.
        forward: the forward-KL fit in closed form (moment matching).
        forward_sgd: the forward-KL fit by stochastic gradient on E_p[-log q].
        grid: (G,) points on which the log densities are given.
        target_log_density: (G,) log p(z).
        reverse_log_density: (G,) log q(z) of the reverse-KL fit.
        forward_log_density: (G,) log q(z) of the forward-KL fit (closed form).
    """

    modes: tuple[float, ...]
    mode_scale: float
    mixture_mean: float
    mixture_scale: float
    radius: float
    reverse: GaussianFit
    forward: GaussianFit
    forward_sgd: GaussianFit
    grid: Tensor
    target_log_density: Tensor
    reverse_log_density: Tensor
    forward_log_density: Tensor


def two_modes(separation: float = 6.0, scale: float = 1.0) -> MixtureSameFamily:
    r"""p(z) = ½ N(-separation/2, scale^2) + ½ N(separation/2, scale^2), in torch's default dtype."""
    if not (math.isfinite(separation) and separation > 0):
        raise ValueError(f"separation must be > 0, got {separation}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be > 0, got {scale}")
    half = separation / 2
    return MixtureSameFamily(
        Categorical(probs=torch.tensor([0.5, 0.5])),
        Normal(torch.tensor([-half, half]), torch.tensor([scale, scale])),
    )


def _components(target: MixtureSameFamily) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and standard deviations of a 1-D Gaussian mixture: each (M,)."""
    components = target.component_distribution
    if not isinstance(components, Normal) or target.batch_shape != () or target.event_shape != ():
        raise ValueError(
            "target must be a scalar mixture of Normals, MixtureSameFamily(Categorical, Normal) with batch (), "
            f"got components {type(components).__name__}, batch {tuple(target.batch_shape)}"
        )
    return target.mixture_distribution.probs, components.loc, components.scale


def moment_match(target: MixtureSameFamily) -> tuple[float, float]:
    r"""The forward-KL optimum over Gaussians: the mixture's mean and standard deviation.

    .. math::
        m = \sum_j w_j \mu_j, \qquad s^2 = \sum_j w_j (\sigma_j^2 + \mu_j^2) - m^2

    Returns:
        (m, s).
    """
    w, mu, sigma = _components(target)
    mean = (w * mu).sum()
    variance = (w * (sigma.square() + mu.square())).sum() - mean.square()
    return float(mean), float(variance.sqrt())


def _sgd_fit(
    loss_fn: Callable[[Normal], Tensor], init_loc: float, init_scale: float, *, steps: int, lr: float
) -> tuple[float, float]:
    """Minimise ``loss_fn(q)`` over q = N(m, exp(ρ)^2) by Adam and return the average of the iterates over the
    second half of the steps (Polyak & Juditsky 1992): the average, not the last noisy iterate, is close to the
    optimum."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    if not (math.isfinite(init_scale) and init_scale > 0):
        raise ValueError(f"init_scale must be > 0, got {init_scale}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr}")
    dtype = torch.get_default_dtype()
    params = torch.tensor([float(init_loc), math.log(init_scale)], dtype=dtype, requires_grad=True)  # (m, ρ)
    optimizer = torch.optim.Adam([params], lr=lr, betas=(0.9, 0.99))  # short memory: early steep gradients fade
    total = torch.zeros(2, dtype=dtype)
    averaged = 0
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(Normal(params[0], params[1].exp()))
        loss.backward()
        optimizer.step()
        if step >= steps // 2:
            total += params.detach()
            averaged += 1
    loc, log_scale = (total / averaged).tolist()
    return loc, math.exp(log_scale)


def fit_reverse_kl(
    target: MixtureSameFamily,
    *,
    init_loc: float = 1.0,
    init_scale: float = 0.5,
    steps: int = 1500,
    samples: int = 64,
    lr: float = 0.05,
) -> tuple[float, float]:
    r"""Fit q = N(m, s^2) by maximising the ELBO, i.e. minimising KL(q || p), with reparameterised samples.

    .. math::
        \hat{\mathcal L} = \frac1K \sum_k \log p(m + s\,\varepsilon_k) + H(q), \quad \varepsilon_k \sim N(0, 1)

    (the entropy H(q) = log s + ½ log 2πe in closed form). Uses torch's global RNG.

    Returns:
        (m, s).
    """

    def loss(q: Normal) -> Tensor:
        z = q.rsample((samples,))  # (K,)
        return -(target.log_prob(z).mean() + q.entropy())

    return _sgd_fit(loss, init_loc, init_scale, steps=steps, lr=lr)


def fit_forward_kl(
    target: MixtureSameFamily,
    *,
    init_loc: float = 1.0,
    init_scale: float = 0.5,
    steps: int = 1500,
    samples: int = 256,
    lr: float = 0.05,
) -> tuple[float, float]:
    r"""Fit q = N(m, s^2) by minimising KL(p || q) = E_p[-log q(z)] + const with samples from p.

    .. math::
        \hat J = -\frac1K \sum_k \log q(z_k), \quad z_k \sim p

    Its optimum is :func:`moment_match`. Uses torch's global RNG.

    Returns:
        (m, s).
    """

    def loss(q: Normal) -> Tensor:
        z = target.sample((samples,))  # (K,)
        return -q.log_prob(z).mean()

    return _sgd_fit(loss, init_loc, init_scale, steps=steps, lr=lr)


def mass_near(loc: float, scale: float, modes: tuple[float, ...], radius: float) -> tuple[float, ...]:
    r"""q's probability of [μ_j - r, μ_j + r] for each mode μ_j: Φ((μ_j + r - m)/s) - Φ((μ_j - r - m)/s)."""
    q = Normal(torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64))
    return tuple(float(q.cdf(torch.tensor(mu + radius)) - q.cdf(torch.tensor(mu - radius))) for mu in modes)


def mode_seeking(
    target: MixtureSameFamily | None = None,
    *,
    init_loc: float = 1.0,
    init_scale: float = 0.5,
    steps: int = 1500,
    seed: int = 0,
    grid_size: int = 401,
) -> ModeSeekingResult:
    """Fit a Gaussian to a two-mode target by reverse KL (the ELBO) and by forward KL, and compare.

    Args:
        target: a 1-D Gaussian mixture (default :func:`two_modes`: modes at ±3, σ = 1).
        init_loc: the starting mean of both stochastic fits; the reverse-KL fit ends in the mode nearer to it.
        init_scale: their starting standard deviation. Start narrow: from a broad central start the reverse-KL
            fit can stop at the symmetric local optimum (module docstring).
        steps: Adam steps of each stochastic fit.
        seed: seeds the Monte-Carlo draws (torch's global RNG is restored afterwards).
        grid_size: points of the plotting grid, which spans the modes ± 5 σ and the mixture's mean ± 5 sd.

    Returns:
        ModeSeekingResult; mass is counted within 2σ of each mode.

    References:
        Minka (2005); Bishop (2006), §10.1.2.
    """
    target = two_modes() if target is None else target
    _, mu, sigma = _components(target)
    if not bool((sigma == sigma[0]).all()):
        raise ValueError(f"the target's components must share one scale, got {sigma.tolist()}")
    modes = tuple(float(m) for m in mu)
    mode_scale = float(sigma[0])
    radius = 2 * mode_scale
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reverse = fit_reverse_kl(target, init_loc=init_loc, init_scale=init_scale, steps=steps)
        sgd = fit_forward_kl(target, init_loc=init_loc, init_scale=init_scale, steps=steps)
    forward = moment_match(target)
    fits = {
        "reverse-kl": reverse, "forward-kl": forward, "forward-kl-sgd": sgd,
    }  # fmt: skip
    result = {name: GaussianFit(m, s, mass_near(m, s, modes, radius), name) for name, (m, s) in fits.items()}
    with torch.no_grad():
        center = forward[0]
        half_width = max(max(abs(m - center) for m in modes) + 5 * mode_scale, 5 * forward[1])
        grid = torch.linspace(center - half_width, center + half_width, grid_size)
        target_log_density = target.log_prob(grid)
        reverse_log_density = Normal(torch.tensor(reverse[0]), torch.tensor(reverse[1])).log_prob(grid)
        forward_log_density = Normal(torch.tensor(forward[0]), torch.tensor(forward[1])).log_prob(grid)
    return ModeSeekingResult(
        modes=modes, mode_scale=mode_scale, mixture_mean=forward[0], mixture_scale=forward[1], radius=radius,
        reverse=result["reverse-kl"], forward=result["forward-kl"], forward_sgd=result["forward-kl-sgd"],
        grid=grid, target_log_density=target_log_density, reverse_log_density=reverse_log_density,
        forward_log_density=forward_log_density,
    )  # fmt: skip
