r"""A mixture of distributions of any families over the same space: the defensive importance-sampling proposal.

.. math::
    q_\alpha(z) = \sum_{i=1}^{I} \alpha_i\, q_i(z), \qquad \sum_i \alpha_i = 1, \qquad
    \frac{p(x, z)}{q_\alpha(z)} \le \frac{1}{\alpha_i} \frac{p(x, z)}{q_i(z)} \ \text{for every } i,

so an importance weight under the mixture is never more than 1/α_i times its weight under any one component:
a component that covers the posterior's tails (a widened copy) bounds the weights' tail even where another
component (the best fit) is too narrow (Hesterberg 1995; Owen & Zhou 2000). Unlike
``torch.distributions.MixtureSameFamily`` the components may be of different families (a full-covariance
Gaussian beside a mean-field one or a flow), as long as they share batch and event shapes.

References:
    Hesterberg (1995). Weighted average importance sampling and defensive mixture distributions.
    Technometrics 37(2).
    Owen & Zhou (2000). Safe and effective importance sampling. JASA 95(449).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints


class DefensiveMixture(Distribution):
    """sum_i alpha_i q_i(z) with fixed weights; components share batch (B,) and event (d,) shapes.

    ``sample`` draws every component and keeps, per draw and data point, the one a categorical draw picks
    (no reparameterized sampler: the mixture is a proposal, not a guide to train). ``log_prob`` is the
    logsumexp over components.

    Args:
        components: the q_i, each with the same batch and event shape.
        weights: alpha_i > 0, normalised here.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    has_rsample = False

    def __init__(self, components: Sequence[Distribution], weights: Sequence[float]) -> None:
        if len(components) < 1 or len(components) != len(weights):
            raise ValueError(f"need as many weights as components (>= 1), got {len(weights)} and {len(components)}")
        if not all(w > 0 and math.isfinite(w) for w in weights):
            raise ValueError(f"mixture weights must be finite and > 0, got {list(weights)}")
        first = components[0]
        for q in components[1:]:
            if q.batch_shape != first.batch_shape or q.event_shape != first.event_shape:
                raise ValueError(
                    f"mixture components must share batch and event shapes: {tuple(first.batch_shape)}, "
                    f"{tuple(first.event_shape)} vs {tuple(q.batch_shape)}, {tuple(q.event_shape)}"
                )
        total = sum(weights)
        self.components = list(components)
        self.log_weights = [math.log(w / total) for w in weights]
        super().__init__(first.batch_shape, first.event_shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint | None:
        return self.components[0].support

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> Tensor:
        """(*sample_shape, *batch, *event): each draw from the component a categorical draw chooses."""
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            draws = torch.stack([q.sample(shape) for q in self.components])  # (I, *sample, *batch, *event)
            probs = torch.tensor(self.log_weights, dtype=draws.dtype, device=draws.device).exp()
            count = math.prod(shape + self.batch_shape)
            pick = torch.multinomial(probs, count, replacement=True).reshape(1, *shape, *self.batch_shape)
            pick = pick.reshape(*pick.shape, *([1] * len(self.event_shape))).expand(1, *draws.shape[1:])
            return draws.gather(0, pick).squeeze(0)

    def log_prob(self, value: Tensor) -> Tensor:
        """log sum_i alpha_i q_i(z): (*sample, *batch)."""
        terms = torch.stack([q.log_prob(value) + a for q, a in zip(self.components, self.log_weights, strict=True)])
        return torch.logsumexp(terms, 0)
