r"""ELBO surgery: the average KL term splits into a mutual information and a marginal KL (Hoffman & Johnson 2016).

.. math::
    \underbrace{\frac1N \sum_{n=1}^N \mathrm{KL}(q(z|x_n) \,\|\, p(z))}_{\text{average KL}}
    = \underbrace{I_q(x; z)}_{\text{mutual information}}
    + \underbrace{\mathrm{KL}(q(z) \,\|\, p(z))}_{\text{marginal KL}},
    \qquad q(z) = \frac1N \sum_{n=1}^N q(z|x_n)

with x uniform over the N given points. Both right-hand terms are expectations under q(z|x_n) of
log-density differences, estimated from S draws per point; log q(z) is a logsumexp over all N components.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from elbokit.estimators._weights import check_positive_int, guide_distribution, model_prior
from elbokit.estimators.elbo import analytic_kl
from elbokit.models.base import Guide, LatentModel

#: Elements of one (rows, N) block of component log densities (times d) above which rows are chunked.
CHUNK_ELEMENTS = 1 << 22


class Surgery(NamedTuple):
    """The terms of the ELBO-surgery identity over N data points (floats, nats).

    Attributes:
        average_kl: mean_n KL(q(z|x_n) || p(z)), closed form where registered (else sampled).
        average_kl_mc: the same average from the draws used below, mean of log q(z|x_n) - log p(z); with it
            the identity holds per draw, to rounding: average_kl_mc = mutual_information + marginal_kl.
        mutual_information: I_q(x; z) = E_n E_{q(z|x_n)}[log q(z|x_n) - log q(z)], at most log N.
        marginal_kl: KL(q(z) || p(z)) = E_{q(z)}[log q(z) - log p(z)].
        log_n: log N, the ceiling on this estimate of the mutual information.
        identity_error: average_kl - (mutual_information + marginal_kl), zero in expectation.
        average_kl_stderr, mutual_information_stderr, marginal_kl_stderr: Monte-Carlo standard errors (over
            the draws, for the given N points); ``identity_stderr`` is that of ``identity_error``
            (the sampled average KL's, since the closed form has none).
        samples: S, draws per data point.
    """

    average_kl: float
    average_kl_mc: float
    mutual_information: float
    marginal_kl: float
    log_n: float
    identity_error: float
    average_kl_stderr: float
    mutual_information_stderr: float
    marginal_kl_stderr: float
    identity_stderr: float
    samples: int


def aggregate_log_prob(q: Distribution, z: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""log q(z) = logsumexp_m log q(z | x_m) - log N for the aggregate posterior of q's N components.

    Args:
        q: batch (N,), event (d,).
        z: (M, d) points.
        chunk_size: rows of z per block (``None``: keep one (rows, N, d) block under ``CHUNK_ELEMENTS``).

    Returns:
        (M,) log q(z).
    """
    n = q.batch_shape[0]
    d = max(1, int(math.prod(q.event_shape)))
    rows = max(1, CHUNK_ELEMENTS // (n * d)) if chunk_size is None else chunk_size
    check_positive_int("chunk_size", rows)
    parts = [
        torch.logsumexp(q.log_prob(block.unsqueeze(1)), dim=1)  # (rows, 1, d) against N components: (rows, N)
        for block in z.split(rows)
    ]
    return torch.cat(parts) - math.log(n)


def _mean_and_stderr(f: Tensor) -> tuple[float, float]:
    """Mean of f (S, N) over all draws and its standard error, stratified by point (each point's S draws)."""
    s, n = f.shape
    if s >= 2:
        return float(f.mean()), float((f.var(0).sum() / s).sqrt() / n)
    return float(f.mean()), float(f.std() / math.sqrt(f.numel()))


def surgery(
    model: LatentModel, guide: Guide, x: Tensor, *, samples: int = 16, chunk_size: int | None = None
) -> Surgery:
    r"""Split the average KL of a guide over the N points x into I_q(x; z) + KL(q(z) || p(z)).

    .. math::
        \hat I = \frac{1}{SN} \sum_{n,s} \left[\log q(z_{ns}|x_n) - \log q(z_{ns})\right], \quad
        \widehat{\mathrm{KL}}_{\text{marg}} = \frac{1}{SN} \sum_{n,s} \left[\log q(z_{ns}) - \log p(z_{ns})\right],
        \quad z_{ns} \sim q(z|x_n)

    The z_ns are draws from the aggregate q(z) stratified by component, so both are unbiased for the N-point
    aggregate posterior. As estimates of the population quantities (N -> infinity) the mutual information is
    biased down (it cannot exceed log N) and the marginal KL up (the N-component mixture is lumpier than its
    limit). Cost: S N^2 component densities, in blocks of bounded memory.

    Args:
        model: gives p(z).
        guide: x -> q(z|x), batch (N,), event (d,).
        x: (N, *event) the data points defining x's distribution.
        samples: S, draws per point.
        chunk_size: rows of the (S N, N) density matrix per block.

    Returns:
        Surgery with the terms as floats.

    References:
        Hoffman & Johnson, "ELBO surgery: yet another way to carve up the variational evidence lower bound",
        NIPS 2016 Workshop on Advances in Approximate Bayesian Inference.
    """
    check_positive_int("samples", samples)
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    with torch.no_grad():
        prior = model_prior(model)
        q = guide_distribution(model, guide, x, prior)
        n = q.batch_shape[0]
        z = q.sample((samples,))  # (S, N, d)
        log_qz_given_x = q.log_prob(z)  # (S, N)
        log_pz = prior.log_prob(z)  # (S, N)
        log_qz = aggregate_log_prob(q, z.reshape(samples * n, -1), chunk_size=chunk_size).reshape(samples, n)
        mi_terms = log_qz_given_x - log_qz  # (S, N)
        marginal_terms = log_qz - log_pz  # (S, N)
        kl_terms = log_qz_given_x - log_pz  # (S, N)
        mi, mi_se = _mean_and_stderr(mi_terms)
        marginal, marginal_se = _mean_and_stderr(marginal_terms)
        kl_mc, kl_mc_se = _mean_and_stderr(kl_terms)
        closed_form = analytic_kl(q, prior)
        average_kl, average_kl_se = (kl_mc, kl_mc_se) if closed_form is None else (float(closed_form.mean()), 0.0)
    return Surgery(
        average_kl=average_kl,
        average_kl_mc=kl_mc,
        mutual_information=mi,
        marginal_kl=marginal,
        log_n=math.log(n),
        identity_error=average_kl - (mi + marginal),
        average_kl_stderr=average_kl_se,
        mutual_information_stderr=mi_se,
        marginal_kl_stderr=marginal_se,
        identity_stderr=kl_mc_se,
        samples=samples,
    )
