r"""Multilayer perceptrons: the encoder and decoder networks of the MLP VAEs.

.. math::
    h_0 = x, \qquad h_{l} = a(W_l h_{l-1} + b_l) \ (l < L), \qquad y = W_L h_{L-1} + b_L

with no activation after the last layer: its output is a distribution's unconstrained parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

from torch import nn


def mlp(sizes: Sequence[int], *, activation: type[nn.Module] = nn.Tanh) -> nn.Sequential:
    """Linear layers sizes[0] -> sizes[1] -> ... -> sizes[-1] with ``activation()`` between them.

    ``nn.Linear`` acts on the last dimension, so the network maps (*batch, sizes[0]) to (*batch, sizes[-1])
    for any leading dimensions, e.g. (K, B, d) samples of z.

    Args:
        sizes: layer widths, at least two entries, each >= 1: input, hidden..., output.
        activation: the nonlinearity's class, instantiated once between every pair of layers.

    Returns:
        ``Sequential(Linear, activation, Linear, ..., Linear)``: 2 (len(sizes) - 1) - 1 modules.
    """
    sizes = tuple(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must have at least 2 entries (input and output), got {sizes}")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"every size must be an integer >= 1, got {sizes}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        if i > 0:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)
