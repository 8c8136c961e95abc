"""What a Bayesian neural network predicts from S draws of its weights: :class:`Prediction`, the predictive mean
and its uncertainty split into epistemic and aleatoric parts (Depeweg et al. 2018)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Normal


class Prediction(NamedTuple):
    r"""The predictive distribution of S weight draws, and its uncertainty split into two parts.

    Regression (original units of y), by the law of total variance over the mixture (1/S) Σ_s N(m_s, σ²):
    ``mean`` (B,) = mean of m_s; ``epistemic`` (B,) = variance of m_s (over the S draws, divisor S);
    ``aleatoric`` (B,) = σ², the noise variance; ``total`` (B,) = their sum, the mixture's variance.

    Classification (nats), with p̄ = (1/S) Σ_s p_s: ``mean`` (B, C) = p̄ (also ``probs``); ``total`` (B,) = H[p̄],
    the predictive entropy (also ``entropy``); ``aleatoric`` (B,) = (1/S) Σ_s H[p_s], the expected entropy;
    ``epistemic`` (B,) = their difference, the mutual information between y and w (>= 0 by Jensen; rounding
    below 0 is clamped to 0).

    Attributes:
        mean, epistemic, aleatoric, total: as above.
        task: ``"regression"`` or ``"classification"``.
        samples: S, weight draws.

    References:
        Depeweg et al., "Decomposition of Uncertainty in Bayesian Deep Learning", ICML 2018.
    """

    mean: Tensor
    epistemic: Tensor
    aleatoric: Tensor
    total: Tensor
    task: str
    samples: int

    @property
    def sd(self) -> Tensor:
        """Regression: the predictive standard deviation √total, (B,)."""
        self._require("regression", "sd")
        return self.total.sqrt()

    @property
    def probs(self) -> Tensor:
        """Classification: the mean class probabilities p̄, (B, C)."""
        self._require("classification", "probs")
        return self.mean

    @property
    def entropy(self) -> Tensor:
        """Classification: the predictive entropy H[p̄], (B,)."""
        self._require("classification", "entropy")
        return self.total

    def interval(self, level: float = 0.95) -> tuple[Tensor, Tensor]:
        """Regression: the central ``level`` interval of the moment-matched normal N(mean, total), (B,) each.

        An approximation to the mixture's own quantiles: exact when the draws agree (epistemic = 0), and with the
        right variance always.
        """
        self._require("regression", "interval")
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise ValueError(f"level must be a number with 0 < level < 1, got {level!r}")
        z = float(Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2, dtype=torch.float64)))
        half = z * self.sd
        return self.mean - half, self.mean + half

    def _require(self, task: str, name: str) -> None:
        if self.task != task:
            raise ValueError(f"{name} is defined for a {task} prediction, got a {self.task} one")
