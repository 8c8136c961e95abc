r"""Normalizing-flow guides: a Gaussian base pushed through K inverse autoregressive steps (on ``zuko``).

.. math::
    u \sim q_0, \qquad z = t_K \circ \dots \circ t_1(u; c), \qquad
    \log q(z) = \log q_0(u) - \sum_k \log\left|\det \frac{\partial t_k}{\partial u}\right|

- :class:`AmortizedFlow`: q_0 = N(m(x), diag s(x)^2) from an encoder network, and the context c = h(x), the
  encoder's last hidden layer (x itself when it has none), so that the flow's shape also depends on x.
- :class:`LocalFlow`: free per data point, for non-amortized q* in the flow family: per-point base parameters
  (full covariance by default) and a per-point learned context vector (an embedding, (N, c)) feeding one shared
  flow network.

Both return a :class:`~elbokit.guides.FlowDistribution` (batch (B,), event (d,)): ``rsample``, and
``log_prob`` of that draw, take one pass per step; see :mod:`elbokit.guides._iaf` for what is cheap. Each step
starts as the identity, so a fresh flow guide is exactly its Gaussian base. ``zuko`` is imported only when a flow
is built: ``pip install 'elbokit[flows]'``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from elbokit.guides._gaussian import Covariance, LocalGaussian, _check_covariance, gaussian
from elbokit.guides._iaf import FlowDistribution, InverseAutoregressiveFlow
from elbokit.models.mlp import mlp


class AmortizedFlow(nn.Module):
    r"""q(z|x): u ~ N(m(x), diag s(x)^2), z = T(u; h(x)) with K IAF steps conditioned on h(x).

    Args:
        encoder: x (B, *event) -> features h (B, context_dim), the flow's context.
        latent_dim: d.
        context_dim: width of h.
        transforms: K, the number of IAF steps.
        hidden_features: hidden widths of each step's network (default two layers of max(64, 2d)).
        min_scale: floor added to every base standard deviation.
    """

    def __init__(
        self,
        encoder: nn.Module,
        latent_dim: int,
        *,
        context_dim: int,
        transforms: int = 4,
        hidden_features: tuple[int, ...] | None = None,
        min_scale: float = 1e-5,
    ) -> None:
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be an integer >= 1, got {latent_dim!r}")
        if min_scale < 0:
            raise ValueError(f"min_scale must be >= 0, got {min_scale}")
        flow = InverseAutoregressiveFlow(
            latent_dim, context_dim, transforms=transforms, hidden_features=hidden_features
        )
        self.encoder = encoder
        self.head = nn.Linear(context_dim, 2 * latent_dim)  # h -> (m, raw s)
        self.flow = flow
        self.latent_dim = latent_dim
        self.transforms = transforms
        self.min_scale = min_scale

    @classmethod
    def mlp(
        cls,
        data_dim: int,
        latent_dim: int,
        *,
        hidden: tuple[int, ...] = (200, 200),
        transforms: int = 4,
        activation: type[nn.Module] = nn.Tanh,
        hidden_features: tuple[int, ...] | None = None,
        min_scale: float = 1e-5,
    ) -> AmortizedFlow:
        """An encoder data_dim -> hidden... (``activation`` after each layer), a linear head to the base's
        parameters, and K IAF steps whose context is the last hidden layer (x itself when ``hidden`` is empty)."""
        layers: list[nn.Module] = [nn.Flatten()]
        if hidden:
            layers += [*mlp((data_dim, *hidden), activation=activation), activation()]
        return cls(
            nn.Sequential(*layers), latent_dim, context_dim=hidden[-1] if hidden else data_dim,
            transforms=transforms, hidden_features=hidden_features, min_scale=min_scale,
        )  # fmt: skip

    def base(self, x: Tensor) -> tuple[Distribution, Tensor]:
        """q_0(u|x) = N(m(x), diag s(x)^2), batch (B,), event (d,), and the context h(x) (B, context_dim)."""
        h = self.encoder(x)  # (B, context_dim)
        loc, raw_scale = self.head(h).chunk(2, dim=-1)  # (B, d) each
        return gaussian(loc, raw_scale, min_scale=self.min_scale), h

    def forward(self, x: Tensor) -> FlowDistribution:
        """q(z|x): batch (B,), event (d,)."""
        base, h = self.base(x)
        return FlowDistribution(base, self.flow(h))


class LocalFlow(nn.Module):
    r"""Free q_n(z) for each of N data points in the flow family: u ~ N(m_n, S_n), z = T(u; e_n).

    Each point has its own base parameters (m_n, S_n) and a learned context vector e_n (``embedding``, (N, c))
    that conditions one shared K-step IAF network. With ``covariance="full"`` (the default) the family contains
    every Gaussian, so the best q in it is at least as good as the best Gaussian. Called with x of batch N it
    returns all N distributions (x only fixes the batch); ``select(index)`` gives those of a subset.

    Args:
        num_points: N.
        latent_dim: d.
        transforms: K, the number of IAF steps.
        covariance: the base's covariance, ``"full"`` or ``"diagonal"``.
        context: c, the width of each point's embedding.
        hidden_features: hidden widths of each step's network (default two layers of max(64, 2d)).
        init_loc: (N, d) initial base means (default 0).
        init_scale: initial base standard deviation of every coordinate (default 1).
        dtype: of the parameters (default: init_loc's, else torch's default).
    """

    def __init__(
        self,
        num_points: int,
        latent_dim: int,
        *,
        transforms: int = 4,
        covariance: Covariance = "full",
        context: int = 8,
        hidden_features: tuple[int, ...] | None = None,
        init_loc: Tensor | None = None,
        init_scale: float = 1.0,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if init_loc is not None and dtype is not None:
            init_loc = init_loc.to(dtype)
        self.base = LocalGaussian(
            num_points, latent_dim, covariance=covariance, init_loc=init_loc, init_scale=init_scale, dtype=dtype
        )
        loc = self.base.loc
        self.flow = InverseAutoregressiveFlow(
            latent_dim, context, transforms=transforms, hidden_features=hidden_features
        ).to(device=loc.device, dtype=loc.dtype)
        # Zero: every point starts with the same flow, the identity (the steps' last layers are zero).
        self.embedding = nn.Parameter(loc.new_zeros(num_points, context))

    @classmethod
    def from_distribution(
        cls,
        q: Distribution,
        *,
        transforms: int = 4,
        covariance: Covariance = "full",
        context: int = 8,
        hidden_features: tuple[int, ...] | None = None,
    ) -> LocalFlow:
        """A local flow equal to (a detached copy of) a Gaussian q with batch (N,), event (d,): its base is q
        (a diagonal q as a full Gaussian with a diagonal Cholesky factor when ``covariance="full"``) and its
        flow the identity."""
        _check_covariance(covariance)
        start = LocalGaussian.from_distribution(q)
        if start.covariance == "full" and covariance == "diagonal":
            raise ValueError("q has a full covariance: a LocalFlow starting at it needs covariance='full'")
        guide = cls(
            start.num_points, int(start.loc.shape[1]), transforms=transforms, covariance=covariance,
            context=context, hidden_features=hidden_features, init_loc=start.loc.detach(),
        )  # fmt: skip
        raw = start.raw_scale.detach()
        # softplus on the diagonal of the Cholesky factor as on a diagonal scale: the same standard deviations.
        guide.base.raw_scale.data.copy_(torch.diag_embed(raw) if raw.shape != guide.base.raw_scale.shape else raw)
        return guide

    @classmethod
    def from_amortized(cls, guide: AmortizedFlow, x: Tensor, *, covariance: Covariance = "full") -> LocalFlow:
        """The amortized q(z|x_n) of each point as free parameters (the start of semi-amortized refinement):
        the base from the encoder, each point's embedding its context h(x_n), and a copy of the flow network,
        so that the local flow equals ``guide(x)`` until it is optimised."""
        with torch.no_grad():
            base, h = guide.base(x)
        local = cls.from_distribution(base, transforms=1, covariance=covariance, context=h.shape[-1])
        local.flow = copy.deepcopy(guide.flow)
        local.embedding = nn.Parameter(h.detach().clone())
        return local

    @property
    def num_points(self) -> int:
        return self.base.num_points

    def distribution(self) -> FlowDistribution:
        """All N distributions: batch (N,), event (d,)."""
        return FlowDistribution(self.base.distribution(), self.flow(self.embedding))

    def select(self, index: Tensor) -> FlowDistribution:
        """The distributions of the points ``index`` (a LongTensor): batch (len(index),)."""
        return FlowDistribution(self.base.select(index), self.flow(self.embedding[index]))

    def forward(self, x: Tensor) -> FlowDistribution:
        if x.shape[0] != self.num_points:
            raise ValueError(
                f"this LocalFlow holds {self.num_points} data points; x has batch {x.shape[0]}: "
                "use select(index) for a subset"
            )
        return self.distribution()
