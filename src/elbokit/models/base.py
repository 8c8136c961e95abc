"""What a model and a guide are: two small protocols.

A latent-variable model gives a prior p(z) and a likelihood p(x|z); a guide maps data to q(z|x).
Both speak ``torch.distributions``: never ``(mu, logvar)`` tuples.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor
from torch.distributions import Distribution


@runtime_checkable
class LatentModel(Protocol):
    """p(x, z) = p(z) p(x|z).

    ``prior()`` has event shape (d,) and batch shape (); ``likelihood(z)`` with z of shape
    (*batch, d) has batch shape ``batch`` and the data's event shape.
    """

    def prior(self) -> Distribution: ...

    def likelihood(self, z: Tensor) -> Distribution: ...


@runtime_checkable
class Guide(Protocol):
    """q(z|x): a callable from x of shape (B, *event) to a Distribution with batch (B,), event (d,)."""

    def __call__(self, x: Tensor) -> Distribution: ...


class FixedGuide:
    """The guide that returns one q, already fitted to a batch of data, whatever x it is called with: a refined q*
    or a proposal per data point, handed to a function that takes a guide."""

    def __init__(self, q: Distribution) -> None:
        if not isinstance(q, Distribution):
            raise ValueError(f"FixedGuide needs a torch Distribution q, got {type(q).__name__}")
        self.q = q

    def __call__(self, x: Tensor) -> Distribution:
        return self.q
