"""Bounds against the exact log p(x): the ELBO, IWAE_k and importance-sampled log p(x) of a random
linear-Gaussian model, where every one of them is known in closed form (``elbokit linear-gaussian``)."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from elbokit.estimators import elbo, iwae, log_marginal
from elbokit.models import LinearGaussian
from elbokit.models.base import FixedGuide


class BoundRow(NamedTuple):
    """One bound, as a mean over the data points, its standard error (0 for exact values) and its name."""

    name: str
    value: float
    stderr: float


def random_linear_gaussian(data_dim: int, latent_dim: int, n: int, *, seed: int = 0) -> tuple[LinearGaussian, Tensor]:
    """A linear-Gaussian model with N(0, 1) loadings, zero bias and noise scales in [0.5, 1.5] (float64), and n
    points drawn from it, all from ``seed``."""
    if latent_dim >= data_dim:
        raise ValueError(f"latent_dim must be below data_dim ({data_dim}), got {latent_dim}")
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, latent_dim, generator=gen, dtype=torch.float64)
    noise = 0.5 + torch.rand(data_dim, generator=gen, dtype=torch.float64)
    model = LinearGaussian(weight, torch.zeros(data_dim, dtype=torch.float64), noise)
    return model, model.sample(n, generator=gen).x


def best_mean_field(model: LinearGaussian, x: Tensor) -> Distribution:
    """The ELBO-optimal diagonal Gaussian q(z|x): the posterior mean with variances 1 / diag(precision)."""
    with torch.no_grad():
        posterior = model.posterior(x)
        scale = model.posterior_precision().diagonal().rsqrt().expand_as(posterior.loc)
    return Independent(Normal(posterior.loc, scale), 1)


def _mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """Mean over data points, and the Monte-Carlo standard error of that mean (values: (R, B) repeats)."""
    per_repeat = values.mean(1)  # (R,)
    return float(per_repeat.mean()), float(per_repeat.std() / math.sqrt(per_repeat.numel()))


def bounds_seconds(model: LinearGaussian, x: Tensor, ks: list[int], *, repeats: int = 20) -> float:
    """About how long :func:`bounds_against_exact` takes here (IWAE timed at a small k and scaled)."""
    guide, pilot = FixedGuide(best_mean_field(model, x)), min(max(ks), 10)
    with torch.random.fork_rng(), torch.no_grad():
        started = time.perf_counter()
        iwae(model, guide, x, k=pilot)
        per_sample = (time.perf_counter() - started) / pilot
    return per_sample * (repeats * sum(ks) + 10 * max(2, max(ks)))


@torch.no_grad()
def bounds_against_exact(model: LinearGaussian, x: Tensor, ks: list[int], *, repeats: int = 20) -> list[BoundRow]:
    """The exact log p(x) and ELBO of the best mean-field q, then the ELBO (analytic KL, one draw), IWAE_k for
    each k (``repeats`` draws each, for the standard error) and log p(x) by importance sampling with 10 max(k)
    samples, each a mean over the points."""
    q = best_mean_field(model, x)
    guide = FixedGuide(q)
    rows = [BoundRow("exact log p(x)", float(model.log_evidence(x).mean()), 0.0),
            BoundRow("exact ELBO(q)", float(model.exact_elbo(x, q).mean()), 0.0)]  # fmt: skip
    draws = torch.stack([elbo(model, guide, x, samples=1).value for _ in range(repeats)])
    rows.append(BoundRow("ELBO, analytic KL, K=1", *_mean_and_stderr(draws)))
    for k in ks:
        draws = torch.stack([iwae(model, guide, x, k=k).value for _ in range(repeats)])
        rows.append(BoundRow(f"IWAE_{k}" + (" (joint-form ELBO)" if k == 1 else ""), *_mean_and_stderr(draws)))
    estimate = log_marginal(model, guide, x, k=max(2, max(ks)) * 10)
    stderr = float(estimate.stderr.square().sum().sqrt()) / x.shape[0]
    rows.append(BoundRow(f"log p(x), IS k={estimate.samples}", float(estimate.value.mean()), stderr))
    return rows
