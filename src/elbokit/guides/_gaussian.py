r"""Gaussian guides q(z|x): amortized by an encoder network, or free per data point.

Each guide returns a ``torch.distributions`` object with batch (B,) and event (d,):

- ``covariance="diagonal"``: ``Independent(Normal(m, s), 1)``, the mean-field family, s = softplus(raw) + s_min.
- ``covariance="full"``: ``MultivariateNormal(m, scale_tril=L)``, L lower-triangular with a softplus
  diagonal (a Cholesky factor of the covariance): the whole Gaussian family, which contains the exact posterior
  of the linear-Gaussian model.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from elbokit.models.mlp import mlp

Covariance = Literal["diagonal", "full"]


def _inverse_softplus(y: Tensor) -> Tensor:
    """x with softplus(x) = y, for y > 0, stably: y + log(-expm1(-y))."""
    return y + torch.log(-torch.expm1(-y))


def _check_covariance(covariance: str) -> None:
    if covariance not in ("diagonal", "full"):
        raise ValueError(f"covariance must be 'diagonal' or 'full', got {covariance!r}")


def _scale_tril(raw: Tensor, min_scale: float) -> Tensor:
    """Cholesky factor from an unconstrained (..., d, d): strictly-lower part as is, softplus diagonal."""
    diagonal = F.softplus(raw.diagonal(dim1=-2, dim2=-1)) + min_scale
    return raw.tril(-1) + torch.diag_embed(diagonal)


def gaussian(loc: Tensor, raw_scale: Tensor, *, min_scale: float = 0.0) -> Distribution:
    """q = N(loc, ...) from unconstrained scale parameters: (..., d) gives a diagonal Gaussian,
    (..., d, d) a full-covariance one."""
    if raw_scale.shape == loc.shape:
        return Independent(Normal(loc, F.softplus(raw_scale) + min_scale), 1)
    return MultivariateNormal(loc, scale_tril=_scale_tril(raw_scale, min_scale))


class AmortizedGaussian(nn.Module):
    """q(z|x) = N(m(x), S(x)) with (m, S) from one encoder network (Kingma & Welling 2014).

    Args:
        encoder: maps x (B, *event) to (B, n_out) with n_out = ``AmortizedGaussian.output_size(d, covariance)``:
            d means, then d raw diagonal scales (diagonal), or d raw Cholesky entries in row-major lower-
            triangular order after the d means (full: d (d + 1) / 2 of them).
        latent_dim: d.
        covariance: ``"diagonal"`` or ``"full"``.
        min_scale: floor added to every standard deviation (or Cholesky diagonal entry).
    """

    def __init__(
        self, encoder: nn.Module, latent_dim: int, *, covariance: Covariance = "diagonal", min_scale: float = 1e-5
    ) -> None:
        super().__init__()
        _check_covariance(covariance)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        if min_scale < 0:
            raise ValueError(f"min_scale must be >= 0, got {min_scale}")
        self.encoder = encoder
        self.latent_dim = latent_dim
        self.covariance: Covariance = covariance
        self.min_scale = min_scale
        rows, cols = torch.tril_indices(latent_dim, latent_dim)
        self.register_buffer("_tril_rows", rows, persistent=False)
        self.register_buffer("_tril_cols", cols, persistent=False)

    @staticmethod
    def output_size(latent_dim: int, covariance: Covariance = "diagonal") -> int:
        """Width the encoder's output must have."""
        _check_covariance(covariance)
        return 2 * latent_dim if covariance == "diagonal" else latent_dim + latent_dim * (latent_dim + 1) // 2

    @classmethod
    def mlp(
        cls,
        data_dim: int,
        latent_dim: int,
        *,
        hidden: tuple[int, ...] = (200, 200),
        covariance: Covariance = "diagonal",
        activation: type[nn.Module] = nn.Tanh,
        min_scale: float = 1e-5,
    ) -> AmortizedGaussian:
        """An encoder data_dim -> hidden... -> output_size(latent_dim), with ``activation`` between layers."""
        layers = mlp((data_dim, *hidden, cls.output_size(latent_dim, covariance)), activation=activation)
        # One flat Sequential(Flatten, Linear, act, ...): parameters are named encoder.1.weight, ...
        return cls(nn.Sequential(nn.Flatten(), *layers), latent_dim, covariance=covariance, min_scale=min_scale)

    def forward(self, x: Tensor) -> Distribution:
        """q(z|x): batch (B,), event (d,)."""
        out = self.encoder(x)  # (B, n_out)
        expected = self.output_size(self.latent_dim, self.covariance)
        if out.shape[-1] != expected:
            raise ValueError(f"the encoder must output {expected} values per point, got {out.shape[-1]}")
        d = self.latent_dim
        loc, rest = out[..., :d], out[..., d:]
        if self.covariance == "diagonal":
            return gaussian(loc, rest, min_scale=self.min_scale)
        raw = rest.new_zeros(*rest.shape[:-1], d, d)
        raw[..., self._tril_rows, self._tril_cols] = rest
        return gaussian(loc, raw, min_scale=self.min_scale)


class LocalGaussian(nn.Module):
    """Free q_n(z) = N(m_n, S_n) for each of N data points: classical, non-amortized variational inference.

    Called with x of batch N it returns all N distributions (x only fixes the batch; the guide is tied to
    one fixed set of points, in order). ``select(index)`` gives the distributions of a subset.

    Args:
        num_points: N.
        latent_dim: d.
        covariance: ``"diagonal"`` or ``"full"``.
        init_loc: (N, d) initial means (default 0).
        init_scale: initial standard deviation for every coordinate (default 1).
    """

    def __init__(
        self,
        num_points: int,
        latent_dim: int,
        *,
        covariance: Covariance = "diagonal",
        init_loc: Tensor | None = None,
        init_scale: float = 1.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_covariance(covariance)
        if num_points < 1 or latent_dim < 1:
            raise ValueError(f"num_points and latent_dim must be >= 1, got {num_points} and {latent_dim}")
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if init_loc is None:
            init_loc = torch.zeros(num_points, latent_dim, dtype=dtype)
        if init_loc.shape != (num_points, latent_dim):
            raise ValueError(f"init_loc must have shape ({num_points}, {latent_dim}), got {tuple(init_loc.shape)}")
        self.covariance: Covariance = covariance
        self.loc = nn.Parameter(init_loc.detach().clone())
        # On init_loc's device (a CUDA init_loc gives a CUDA guide).
        raw = _inverse_softplus(torch.tensor(init_scale, dtype=self.loc.dtype, device=self.loc.device))
        if covariance == "diagonal":
            self.raw_scale = nn.Parameter(raw.expand(num_points, latent_dim).clone())
        else:
            eye = torch.eye(latent_dim, dtype=self.loc.dtype, device=self.loc.device)
            self.raw_scale = nn.Parameter((raw * eye).expand(num_points, latent_dim, latent_dim).clone())

    @classmethod
    def from_distribution(cls, q: Distribution) -> LocalGaussian:
        """A local guide initialised at (a detached copy of) a Gaussian q with batch (N,), event (d,)."""
        if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
            scale = q.base_dist.scale.detach().expand(q.base_dist.loc.shape)
            guide = cls(*q.base_dist.loc.shape, covariance="diagonal", init_loc=q.base_dist.loc.detach())
            guide.raw_scale.data.copy_(_inverse_softplus(scale))
        elif isinstance(q, MultivariateNormal):
            tril = q.scale_tril.detach().expand(*q.loc.shape, q.loc.shape[-1])
            guide = cls(*q.loc.shape, covariance="full", init_loc=q.loc.detach())
            raw = tril.tril(-1) + torch.diag_embed(_inverse_softplus(tril.diagonal(dim1=-2, dim2=-1)))
            guide.raw_scale.data.copy_(raw)
        else:
            raise TypeError(f"q must be Independent(Normal, 1) or MultivariateNormal, got {type(q).__name__}")
        return guide

    @property
    def num_points(self) -> int:
        return int(self.loc.shape[0])

    def distribution(self) -> Distribution:
        """All N distributions: batch (N,), event (d,)."""
        return gaussian(self.loc, self.raw_scale)

    def select(self, index: Tensor) -> Distribution:
        """The distributions of the points ``index`` (a LongTensor): batch (len(index),)."""
        return gaussian(self.loc[index], self.raw_scale[index])

    def forward(self, x: Tensor) -> Distribution:
        if x.shape[0] != self.num_points:
            raise ValueError(
                f"this LocalGaussian holds {self.num_points} data points; x has batch {x.shape[0]}: "
                "use select(index) for a subset"
            )
        return self.distribution()
