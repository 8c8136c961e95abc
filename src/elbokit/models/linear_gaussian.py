r"""The linear-Gaussian latent-variable model, where every quantity is known in closed form.

.. math::
    z \sim \mathcal N(0, I_d), \qquad x \mid z \sim \mathcal N(W z + b, \Psi), \quad \Psi = \operatorname{diag}(s^2)

This is factor analysis; with a scalar ``s`` it is probabilistic PCA (Tipping & Bishop 1999). Its evidence,
posterior and the ELBO of any Gaussian q are exact, which makes it the oracle of the test suite.
"""

from __future__ import annotations

from typing import NamedTuple

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

from elbokit.models._checks import check_batch, check_values


class LinearGaussianSample(NamedTuple):
    """Draws from the joint p(x, z): ``x`` (n, D) and the latents ``z`` (n, d) that produced them."""

    x: Tensor
    z: Tensor


class LinearGaussian(nn.Module):
    r"""z ~ N(0, I_d), x | z ~ N(W z + b, diag(s^2)).

    Args:
        weight: (D, d) loading matrix W.
        bias: (D,) offset b.
        noise_scale: (D,) per-coordinate noise standard deviation s (factor analysis), or a scalar
            (probabilistic PCA). Stored as its logarithm so that it stays positive under training.

    All computations follow ``weight``'s dtype and device.
    """

    def __init__(self, weight: Tensor, bias: Tensor, noise_scale: Tensor | float) -> None:
        super().__init__()
        weight = torch.as_tensor(weight)
        if weight.dim() != 2:
            raise ValueError(f"weight must have shape (D, d), got shape {tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise ValueError(f"weight must have a floating-point dtype, got {weight.dtype}")
        check_values(weight, "weight")
        data_dim, _ = weight.shape
        bias = torch.as_tensor(bias, dtype=weight.dtype, device=weight.device)
        if bias.shape != (data_dim,):
            raise ValueError(f"bias must have shape ({data_dim},), got shape {tuple(bias.shape)}")
        check_values(bias, "bias")
        scale = torch.as_tensor(noise_scale, dtype=weight.dtype, device=weight.device)
        if scale.shape not in ((), (data_dim,)):
            raise ValueError(f"noise_scale must be a scalar or have shape ({data_dim},), got {tuple(scale.shape)}")
        if not bool(((scale > 0) & torch.isfinite(scale)).all()):
            lo, hi = float(scale.min()), float(scale.max())
            raise ValueError(f"noise_scale must be > 0 and finite everywhere, got values in [{lo}, {hi}]")
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.log_noise_scale = nn.Parameter(scale.detach().log())

    # ---- sizes ---------------------------------------------------------------------------------------------
    @property
    def data_dim(self) -> int:
        return int(self.weight.shape[0])

    @property
    def latent_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def event_shape(self) -> torch.Size:
        """Event shape of one data point x: (D,)."""
        return torch.Size((self.data_dim,))

    @property
    def noise_scale(self) -> Tensor:
        """s: () or (D,)."""
        return self.log_noise_scale.exp()

    def _noise_variance(self) -> Tensor:
        """s^2 broadcast to (D,)."""
        return (2.0 * self.log_noise_scale).exp().expand(self.data_dim)

    def _check_x(self, x: Tensor) -> None:
        """x must be a non-empty (B, D) batch of the model's dtype and device, and finite while torch.distributions'
        argument checks are on (that check is a device sync; the others read metadata only)."""
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape (B, {self.data_dim}), got {type(x).__name__}")
        if x.dim() != 2 or x.shape[-1] != self.data_dim:
            raise ValueError(f"x must have shape (B, {self.data_dim}), got shape {tuple(x.shape)}")
        check_batch(x, dtype=self.weight.dtype, device=self.weight.device)
        if Distribution._validate_args:
            check_values(x)

    # ---- the generative model ------------------------------------------------------------------------------
    def prior(self) -> Distribution:
        """p(z) = N(0, I_d): batch (), event (d,)."""
        zeros = self.weight.new_zeros(self.latent_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def likelihood(self, z: Tensor) -> Distribution:
        """p(x|z) = N(W z + b, diag(s^2)): batch ``z.shape[:-1]``, event (D,)."""
        loc = z @ self.weight.T + self.bias  # (*batch, D)
        return Independent(Normal(loc, self.noise_scale.expand(self.data_dim)), 1)

    def marginal(self) -> LowRankMultivariateNormal:
        """p(x) = N(b, W W^T + diag(s^2)), kept in low-rank form so that log p(x) costs O(D d^2)."""
        return LowRankMultivariateNormal(self.bias, self.weight, self._noise_variance())

    def log_evidence(self, x: Tensor) -> Tensor:
        """Exact log p(x): (B,)."""
        self._check_x(x)
        return self.marginal().log_prob(x)

    def posterior_precision(self) -> Tensor:
        r"""\Lambda = I + W^T \Psi^{-1} W: (d, d), the same for every x."""
        w_scaled = self.weight / self._noise_variance().unsqueeze(-1)  # Psi^{-1} W: (D, d)
        eye = torch.eye(self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)
        return eye + self.weight.T @ w_scaled

    def posterior(self, x: Tensor) -> MultivariateNormal:
        r"""Exact p(z|x) = N(\Lambda^{-1} W^T \Psi^{-1} (x - b), \Lambda^{-1}): batch (B,), event (d,)."""
        self._check_x(x)
        precision = self.posterior_precision()
        chol = torch.linalg.cholesky(precision)
        rhs = ((x - self.bias) / self._noise_variance()) @ self.weight  # W^T Psi^{-1} (x - b): (B, d)
        mean = torch.cholesky_solve(rhs.unsqueeze(-1), chol).squeeze(-1)  # (B, d)
        return MultivariateNormal(mean, precision_matrix=precision)

    def exact_elbo(self, x: Tensor, q: Distribution) -> Tensor:
        r"""Exact ELBO of a Gaussian q(z), in the reconstruction-minus-KL form.

        .. math::
            \mathcal L(q) = \log \mathcal N(x; W m + b, \Psi) - \tfrac12 \operatorname{tr}(\Psi^{-1} W S W^T)
                - \mathrm{KL}(q \,\|\, p(z))

        for q = N(m, S). It is computed without the posterior, so that ``log_evidence(x) - exact_elbo(x, q)
        = KL(q || p(z|x))`` is a real identity to test.

        Args:
            x: (B, D) data.
            q: ``Independent(Normal)`` with event (d,) or ``MultivariateNormal``; batch (B,) or broadcastable.

        Returns:
            (B,) the ELBO.
        """
        self._check_x(x)
        diagonal = isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1
        if not (diagonal or isinstance(q, MultivariateNormal)):
            raise TypeError(
                "exact_elbo needs a Gaussian q: Independent(Normal, 1) or MultivariateNormal, "
                f"got {type(q).__name__}"
            )
        if q.event_shape != (self.latent_dim,):
            raise ValueError(f"q must have event shape ({self.latent_dim},), got {tuple(q.event_shape)}")
        if q.batch_shape not in (x.shape[:1], torch.Size((1,)), torch.Size()):
            raise ValueError(
                f"q must have batch shape ({x.shape[0]},) to match x, or () or (1,) to be shared, "
                f"got {tuple(q.batch_shape)}"
            )
        inv_var = 1.0 / self._noise_variance()  # (D,)
        if isinstance(q, MultivariateNormal):
            mean = q.loc
            w_l = self.weight @ q.scale_tril  # W L, with S = L L^T: (B, D, d)
            trace = (w_l.square() * inv_var.unsqueeze(-1)).sum((-2, -1))  # (B,)
        else:
            mean = q.mean
            var = q.variance  # (B, d)
            trace = (var @ (self.weight.square() * inv_var.unsqueeze(-1)).T).sum(-1)  # (B,)
        reconstruction = self.likelihood(mean).log_prob(x) - 0.5 * trace
        return reconstruction - kl_divergence(q, self.prior())

    # ---- sampling and fitting ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> LinearGaussianSample:
        """Draw n pairs (x, z) from the joint, reproducibly under ``generator``."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        dtype, device = self.weight.dtype, self.weight.device
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=dtype, device=device)
        eps = torch.randn(n, self.data_dim, generator=generator, dtype=dtype, device=device)
        x = z @ self.weight.T + self.bias + self.noise_scale * eps
        return LinearGaussianSample(x=x, z=z)

    @classmethod
    def fit_ppca(cls, x: Tensor, latent_dim: int) -> LinearGaussian:
        r"""Maximum-likelihood probabilistic PCA in closed form (Tipping & Bishop 1999, eqs. 7-8).

        With the sample covariance S = U diag(\lambda) U^T (eigenvalues descending):

        .. math::
            b = \bar x, \quad \sigma^2 = \frac{1}{D - d} \sum_{j > d} \lambda_j, \quad
            W = U_d (\Lambda_d - \sigma^2 I)^{1/2}

        W is determined up to a rotation of the latent space; this returns the one with R = I.

        Args:
            x: (N, D) data, N > 1.
            latent_dim: d, with 1 <= d < D.
        """
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape (N, D), got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"x must have shape (N, D), got shape {tuple(x.shape)}")
        n, data_dim = x.shape
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or not 1 <= latent_dim < data_dim:
            raise ValueError(f"latent_dim must be in [1, {data_dim - 1}], got {latent_dim!r}")
        if n < 2:
            raise ValueError(f"need at least 2 data points, got {n}")
        if not x.is_floating_point():
            raise ValueError(f"x must have a floating-point dtype, got {x.dtype}")
        check_values(x)
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / n  # maximum-likelihood covariance: (D, D)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        noise_var = eigvals[latent_dim:].mean()
        if not bool(noise_var > 0):
            raise ValueError("the data have no variance outside the leading subspace: sigma^2 would be 0")
        loadings = eigvecs[:, :latent_dim] * (eigvals[:latent_dim] - noise_var).clamp_min(0).sqrt()
        return cls(loadings, mean, noise_var.sqrt())
