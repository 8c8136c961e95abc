"""Shape convention and typed results.

Shapes: importance or Monte-Carlo samples come first, then the data batch, then the event:
``(K, B, *event)``. Per-data-point results have shape ``(B,)``. Event dimensions are summed by
``torch.distributions.Independent``, never by hand.

Sign convention: anything called ``value``, ``bound`` or ``elbo`` is higher-is-better; ``loss`` is the
scalar an optimiser minimises.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from torch import Tensor

KLMethod = Literal["analytic", "mc"]
"""How a KL term was computed: closed form from the KL registry, or Monte-Carlo samples."""

Gradient = Literal["reparam", "score", "stl", "dreg", "vimco"]
"""Gradient estimator of a bound (see :mod:`elbokit.estimators`)."""


class Bound(NamedTuple):
    """A stochastic lower bound on log p(x), per data point.

    Attributes:
        value: (B,) the estimate of the bound (higher is better).
        reconstruction: (B,) estimate of E_q[log p(x|z)].
        kl: (B,) KL(q(z|x) || p(z)), exact when ``kl_method == "analytic"``, sampled otherwise.
        loss: () scalar to minimise; its gradient is the chosen estimator's gradient of ``-value.mean()``.
        kl_method: ``"analytic"`` or ``"mc"``: how ``kl`` (and, for the ELBO, ``value``) was computed.
        samples: the number of samples K from q per data point.
        gradient: the gradient estimator behind ``loss``.
    """

    value: Tensor
    reconstruction: Tensor
    kl: Tensor
    loss: Tensor
    kl_method: KLMethod
    samples: int
    gradient: Gradient


class Estimate(NamedTuple):
    """An importance-sampling estimate of log p(x), per data point.

    Attributes:
        value: (B,) log of the mean importance weight, log (1/K) sum_k w_k.
        stderr: (B,) standard error of ``value`` by the delta method:
            sd(w) / (sqrt(K) * mean(w)).
        ess: (B,) effective sample size (sum_k w_k)^2 / sum_k w_k^2, between 1 and K.
        pareto_k: (B,) Pareto k-hat of the weights' upper tail, or ``None`` where not computed.
        samples: the number of importance samples K per data point.
    """

    value: Tensor
    stderr: Tensor
    ess: Tensor
    pareto_k: Tensor | None
    samples: int


class GradientStats(NamedTuple):
    """Monte-Carlo moments of one gradient estimator, over repeated independent draws.

    Attributes:
        mean: (P,) mean of the flattened gradient over repeats.
        variance: (P,) variance of a single draw of the gradient, per coordinate (unbiased, ddof 1).
        snr: (P,) signal-to-noise ratio |mean| / sd per coordinate (Rainforth et al. 2018).
        stderr: (P,) standard error of ``mean``: sqrt(variance / repeats).
        repeats: the number of independent gradient draws.
        gradient: the estimator these moments describe.
    """

    mean: Tensor
    variance: Tensor
    snr: Tensor
    stderr: Tensor
    repeats: int
    gradient: Gradient
