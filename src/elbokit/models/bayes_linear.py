r"""Bayesian linear regression: a model whose latent is global, shared by every data point, with every quantity
in closed form. The oracle of the Bayesian-neural-network estimators, as the linear-Gaussian model is the
oracle of the per-point ones.

.. math::
    w \sim \mathcal N(0, s_w^2 I_p), \qquad y_i \mid x_i, w \sim \mathcal N(x_i^\top w, \sigma^2), \quad i = 1..N

The evidence is Gaussian, y ~ N(0, s_w² X Xᵀ + σ² I) (kept in low-rank form: O(N p²)); the posterior is
N(μ, Λ⁻¹) with Λ = I / s_w² + XᵀX / σ² and μ = Λ⁻¹ Xᵀ y / σ²; and the ELBO of a Gaussian q(w) = N(m, S) is

.. math::
    \mathcal L(q) = \sum_i \Big[\log \mathcal N(y_i; x_i^\top m, \sigma^2) - \frac{x_i^\top S x_i}{2\sigma^2}\Big]
        - \mathrm{KL}(q \,\|\, p(w)),

computed without the posterior, so that log p(y) − L(q) = KL(q ‖ p(w | y)) is an identity to test. The best
mean-field q has mean μ and precisions diag(Λ), and its gap is ½ (Σ_j log Λ_jj − log det Λ).

References:
    Bishop, "Pattern Recognition and Machine Learning", 2006, section 3.3 and 3.5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    kl_divergence,
)


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class BayesianLinearRegression(nn.Module):
    r"""w ~ N(0, prior_scale² I_p), y | x, w ~ N(xᵀw, noise_scale²): exact evidence, posterior and ELBO.

    Args:
        prior_scale: s_w, the prior standard deviation of each weight (α = 1 / s_w²).
        noise_scale: σ, the observation noise standard deviation.
    """

    def __init__(self, prior_scale: float = 1.0, noise_scale: float = 1.0) -> None:
        super().__init__()
        self.prior_scale = _positive("prior_scale", prior_scale)
        self.noise_scale = _positive("noise_scale", noise_scale)

    @staticmethod
    def _check(x: Tensor, y: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point() or x.shape[0] < 1:
            shape = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a non-empty (N, p) floating-point tensor, got {shape}")
        if not isinstance(y, Tensor) or y.shape != x.shape[:1] or y.dtype != x.dtype:
            given = f"{tuple(y.shape)} {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be an ({x.shape[0]},) tensor of x's dtype {x.dtype}, got {given}")
        if not bool(torch.isfinite(x).all() and torch.isfinite(y).all()):
            raise ValueError("x and y must be finite")

    def prior(self, dim: int, *, like: Tensor | None = None) -> Distribution:
        """p(w) = N(0, s_w² I_p): batch (), event (p,)."""
        zeros = torch.zeros(dim) if like is None else like.new_zeros(dim)
        return Independent(Normal(zeros, torch.full_like(zeros, self.prior_scale)), 1)

    def likelihood(self, x: Tensor, w: Tensor) -> Distribution:
        """p(y | x, w) = N(x w, σ²) per point: w (..., p) -> batch (..., N)."""
        loc = (x @ w.unsqueeze(-1)).squeeze(-1) if w.dim() == 1 else w @ x.T  # (..., N)
        return Normal(loc, torch.full_like(loc, self.noise_scale))

    def marginal(self, x: Tensor) -> LowRankMultivariateNormal:
        """p(y | x) = N(0, s_w² X Xᵀ + σ² I), in low-rank form."""
        noise = x.new_full((x.shape[0],), self.noise_scale**2)
        return LowRankMultivariateNormal(x.new_zeros(x.shape[0]), self.prior_scale * x, noise)

    def log_evidence(self, x: Tensor, y: Tensor) -> Tensor:
        """Exact log p(y | x): a scalar (all N points together: w is shared)."""
        self._check(x, y)
        return self.marginal(x).log_prob(y)

    def posterior_precision(self, x: Tensor) -> Tensor:
        """Λ = I / s_w² + XᵀX / σ²: (p, p)."""
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return eye / self.prior_scale**2 + x.T @ x / self.noise_scale**2

    def posterior(self, x: Tensor, y: Tensor) -> MultivariateNormal:
        """Exact p(w | x, y) = N(Λ⁻¹ Xᵀ y / σ², Λ⁻¹): event (p,)."""
        self._check(x, y)
        precision = self.posterior_precision(x)
        chol = torch.linalg.cholesky(precision)
        mean = torch.cholesky_solve((x.T @ y / self.noise_scale**2).unsqueeze(-1), chol).squeeze(-1)
        return MultivariateNormal(mean, precision_matrix=precision)

    def best_mean_field(self, x: Tensor, y: Tensor) -> Distribution:
        """The mean-field Gaussian closest to the posterior in KL(q ‖ p(w | y)): mean μ, variances 1 / diag(Λ)."""
        post = self.posterior(x, y)
        variances = 1 / torch.diagonal(self.posterior_precision(x))
        return Independent(Normal(post.loc, variances.sqrt()), 1)

    def mean_field_gap(self, x: Tensor) -> Tensor:
        """log p(y) − ELBO of the best mean-field q: ½ (Σ_j log Λ_jj − log det Λ), whatever y is."""
        precision = self.posterior_precision(x)
        return 0.5 * (torch.diagonal(precision).log().sum() - torch.logdet(precision))

    def expected_log_likelihood(self, x: Tensor, y: Tensor, q: Distribution) -> Tensor:
        """E_q[log p(y_i | x_i, w)] per point, exactly, for a Gaussian q(w) = N(m, S): (N,)."""
        self._check(x, y)
        if isinstance(q, MultivariateNormal):
            mean, spread = q.loc, ((x @ q.scale_tril).square()).sum(-1)  # xᵀ S x = |Lᵀ x|²
        elif isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
            mean, spread = q.base_dist.loc, x.square() @ q.base_dist.scale.square()
        else:
            raise TypeError(f"q(w) must be Independent(Normal, 1) or MultivariateNormal, got {type(q).__name__}")
        if q.batch_shape != () or q.event_shape != (x.shape[1],):
            raise ValueError(f"q(w) must have batch () and event ({x.shape[1]},), got {tuple(q.batch_shape)} "
                             f"and {tuple(q.event_shape)}")  # fmt: skip
        return self.likelihood(x, mean).log_prob(y) - spread / (2 * self.noise_scale**2)

    def exact_elbo(self, x: Tensor, y: Tensor, q: Distribution) -> Tensor:
        """The exact ELBO of a Gaussian q(w) over all N points: a scalar."""
        return self.expected_log_likelihood(x, y, q).sum() - kl_divergence(q, self.prior(x.shape[1], like=x))
