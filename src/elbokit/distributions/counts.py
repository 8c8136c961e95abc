r"""Count distributions by their mean: the negative binomial NB(μ, θ) (mean μ, variance μ + μ²/θ) with a log
density accurate at every inverse dispersion θ, and the zero-inflated NB. The count likelihoods of
:mod:`elbokit.models.counts` are built on them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, NegativeBinomial, constraints

_NO_SHAPE = torch.Size()

#: θ from which the NB log density uses Stirling's series for lgamma(x + θ) - lgamma(θ) (its first omitted term,
#: 1/(1680 θ^7), is below 5e-13 there) instead of the difference of two lgammas, exact to float64 below it.
_STIRLING_FROM = 20.0
# Stirling's series of lgamma(a) - [(a - 1/2) log a - a + log(2 pi) / 2]: 1/(12a) - 1/(360a^3) + 1/(1260a^5)
_STIRLING = (1 / 12, -1 / 360, 1 / 1260)


def _stirling_tail(a: Tensor) -> Tensor:
    inv = a.reciprocal()
    inv2 = inv * inv
    return inv * (_STIRLING[0] + inv2 * (_STIRLING[1] + inv2 * _STIRLING[2]))


def nb_log_prob(x: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    r"""log NB(x; mean μ, inverse dispersion θ), elementwise, accurate for every θ > 0.

    .. math::
        \log p(x) = \log\Gamma(x + \theta) - \log\Gamma(\theta) - \log\Gamma(x + 1)
            + \theta \log\frac{\theta}{\theta + \mu} + x \log\frac{\mu}{\theta + \mu},

    written as x log μ - (θ + x) log1p(μ/θ) + [lgamma(x + θ) - lgamma(θ) - x log θ] - lgamma(x + 1). The bracket
    is O(x) however large θ is; for θ >= 20 it is evaluated by Stirling's series,
    (θ + x - 1/2) log1p(x/θ) - x + S(θ + x) - S(θ), so that no term of size θ log θ is ever subtracted.
    ``mu = 0`` gives log p(0) = 0 (x log μ is taken as 0 at x = 0).
    """
    log_mu = torch.log(mu)
    value = nb_log_prob_log_mean(x, log_mu.clamp(min=torch.finfo(log_mu.dtype).min), theta)
    return torch.where(mu > 0, value, torch.where(x == 0, 0.0, -math.inf))  # μ = 0: all mass at 0


def _lgamma_ratio(x: Tensor, theta: Tensor) -> Tensor:
    """lgamma(x + θ) - lgamma(θ) - x log θ, O(x) for any θ: Stirling's series from θ >= 20, lgammas below.
    θ keeps its own shape (a per-gene (D,) θ is not broadcast to the cells before its own lgamma)."""
    theta_safe = theta.clamp(min=_STIRLING_FROM)
    stirling = (theta_safe + x - 0.5) * torch.log1p(x / theta_safe) - x + _stirling_tail(theta_safe + x)
    stirling = stirling - _stirling_tail(theta_safe)
    direct = torch.lgamma(x + theta) - torch.lgamma(theta) - x * torch.log(theta)
    return torch.where(theta >= _STIRLING_FROM, stirling, direct)


def nb_log_prob_log_mean(x: Tensor, log_mu: Tensor, theta: Tensor) -> Tensor:
    """:func:`nb_log_prob` from log μ (finite): x log μ - (θ + x) softplus(log μ - log θ) + lgamma ratio -
    lgamma(x + 1), where softplus(log μ - log θ) = log1p(μ/θ). A count VAE's log μ = log ℓ + log softmax(η)
    comes this way without an exp and a log."""
    softplus = torch.nn.functional.softplus(log_mu - torch.log(theta))
    return x * log_mu - (theta + x) * softplus + _lgamma_ratio(x, theta) - torch.lgamma(x + 1)


class NegativeBinomialMean(NegativeBinomial):
    """torch's NegativeBinomial by mean μ and inverse dispersion θ (``total_count=θ, logits=log μ - log θ``),
    its ``log_prob`` by :func:`nb_log_prob` (sampling, mean and variance are torch's)."""

    def __init__(self, mu: Tensor, theta: Tensor, validate_args: bool | None = None) -> None:
        mu, theta = torch.broadcast_tensors(mu, theta)
        self.mu = mu
        super().__init__(total_count=theta, logits=torch.log(mu) - torch.log(theta), validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return nb_log_prob(value, self.mu, self.total_count)

    @property
    def mean(self) -> Tensor:
        return self.mu


class ZeroInflatedNegativeBinomial(Distribution):
    r"""π [x = 0] + (1 - π) NB(x; μ, θ), π = σ(gate logits), elementwise (batch = the parameters' shape).

    log p(0) = logaddexp(log π, log(1 - π) + log NB(0)); log p(x > 0) = log(1 - π) + log NB(x), with log π and
    log(1 - π) as logsigmoid(±gate logits). Mean (1 - π) μ, variance (1 - π)(μ + μ²/θ) + π (1 - π) μ².
    """

    arg_constraints = {  # noqa: RUF012 (torch's Distribution declares it so)
        "mu": constraints.nonnegative, "theta": constraints.positive, "gate_logits": constraints.real,
    }  # fmt: skip
    support = constraints.nonnegative_integer

    def __init__(self, mu: Tensor, theta: Tensor, gate_logits: Tensor, validate_args: bool | None = None) -> None:
        self.mu, self.theta, self.gate_logits = torch.broadcast_tensors(mu, theta, gate_logits)
        super().__init__(self.mu.shape, validate_args=validate_args)

    def expand(
        self, batch_shape: torch.Size | list[int] | tuple[int, ...], _instance: Distribution | None = None
    ) -> Distribution:
        shape = torch.Size(batch_shape)
        return ZeroInflatedNegativeBinomial(
            self.mu.expand(shape), self.theta.expand(shape), self.gate_logits.expand(shape), validate_args=False
        )

    @property
    def gate(self) -> Tensor:
        """π, the probability of a structural zero."""
        return torch.sigmoid(self.gate_logits)

    @property
    def mean(self) -> Tensor:
        return (1 - self.gate) * self.mu

    @property
    def variance(self) -> Tensor:
        pi = self.gate
        return (1 - pi) * (self.mu + self.mu.square() / self.theta) + pi * (1 - pi) * self.mu.square()

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        nb = nb_log_prob(value, self.mu, self.theta)
        log_keep = F.logsigmoid(-self.gate_logits)  # log(1 - π)
        zero = torch.logaddexp(F.logsigmoid(self.gate_logits), log_keep + nb)
        return torch.where(value == 0, zero, log_keep + nb)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = _NO_SHAPE) -> Tensor:
        with torch.no_grad():
            counts = NegativeBinomialMean(self.mu, self.theta, validate_args=False).sample(sample_shape)
            structural = torch.bernoulli(self.gate.expand_as(counts))
            return counts * (1 - structural)
