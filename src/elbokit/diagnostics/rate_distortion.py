r"""Rate and distortion: the two terms of the ELBO, and β sweeps that trace the rate-distortion curve.

.. math::
    R = \mathbb E_{p_d(x)}\, \mathrm{KL}(q(z|x) \,\|\, p(z)), \qquad
    D = -\mathbb E_{p_d(x)}\, \mathbb E_{q(z|x)} \log p(x|z), \qquad
    \mathrm{ELBO} = -(R + D)

Every model and guide is one point (R, D) in the plane. Lines of constant ELBO are the diagonals
R + D = -ELBO; log p(x) >= ELBO puts each point on or above the line R + D = -log p(x). Training on the β-ELBO,
D + βR, moves along the curve: a larger β buys a lower rate (less information about x in z) at the cost of a
higher distortion; β = 1 is the ELBO (Alemi et al. 2018; Higgins et al. 2017).

References:
    Alemi, Poole, Fischer, Dillon, Saurous & Murphy (2018). Fixing a broken ELBO. ICML.
    Higgins et al. (2017). β-VAE: learning basic visual concepts with a constrained variational framework. ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from elbokit.estimators._weights import (
    check_data,
    check_positive_int,
    guide_distribution,
    log_likelihood_samples,
    log_weights,
    model_prior,
)
from elbokit.estimators.elbo import analytic_kl
from elbokit.models.base import Guide, LatentModel


class RatePoint(NamedTuple):
    """Rate, distortion and ELBO of a model and guide on a batch, in nats per data point (means over B points).

    Attributes:
        rate: R, mean KL(q(z|x) || p(z)): closed form where registered, else sampled at the distortion's draws.
        distortion: D, Monte-Carlo estimate of -mean E_q log p(x|z).
        elbo: -(R + D).
        rate_stderr: 0.0 for a closed-form rate; for a sampled one, its Monte-Carlo standard error (inf with
            one draw per point).
        distortion_stderr: Monte-Carlo standard error of ``distortion`` given the B points (see
            :func:`rate_distortion`).
        elbo_stderr: ``distortion_stderr`` and ``rate_stderr`` combined.
        n: B, the number of data points.
        samples: K, draws of z per data point.
    """

    rate: float
    distortion: float
    elbo: float
    rate_stderr: float
    distortion_stderr: float
    elbo_stderr: float
    n: int
    samples: int


class SweepPoint(NamedTuple):
    """One trained model of a β sweep, evaluated on the test split, in nats per data point.

    Attributes:
        beta: the KL weight it was trained with.
        rate: R on the test points (analytic KL).
        distortion: D on the test points (Monte-Carlo).
        elbo: -(R + D).
        log_px: importance-sampled log p(x) (:func:`elbokit.log_marginal`, k samples).
        log_px_stderr: its Monte-Carlo standard error.
        rate_stderr: 0.0 (closed form).
        distortion_stderr: Monte-Carlo standard error of ``distortion``.
        min_ess: the smallest effective sample size of the importance weights over the test points; far below
            k, it says the error bar of ``log_px`` is not to be trusted (``log_marginal`` also warns then).
        path: the run directory, or ``None`` when nothing was written.
        mig, dci_disentanglement, dci_completeness, dci_informativeness, factor_vae: the model's disentanglement
            (:func:`elbokit.diagnostics.disentanglement`) on the test points' codes, for data with known
            generative factors (the sprite datasets); ``None`` for other data.
    """

    beta: float
    rate: float
    distortion: float
    elbo: float
    log_px: float
    log_px_stderr: float
    rate_stderr: float
    distortion_stderr: float
    min_ess: float
    path: Path | None
    mig: float | None = None
    dci_disentanglement: float | None = None
    dci_completeness: float | None = None
    dci_informativeness: float | None = None
    factor_vae: float | None = None


@torch.no_grad()
def rate_distortion(
    model: LatentModel, guide: Guide, x: Tensor, *, samples: int = 1, batch_size: int | None = None
) -> RatePoint:
    r"""Rate (analytic KL), distortion (sampled reconstruction) and ELBO, averaged over the points of x.

    .. math::
        R = \frac1B \sum_b \mathrm{KL}(q(z|x_b) \,\|\, p(z)), \qquad
        \hat D = -\frac1B \sum_b \frac1K \sum_k \log p(x_b|z_{bk}), \quad z_{bk} \sim q(z|x_b)

    The standard error is that of the Monte-Carlo draws for these B points:
    se(D) = sqrt(sum_b s_b^2 / K) / B, with s_b^2 the sample variance of log p(x_b|z) over the K draws. With
    K = 1 no within-point variance exists and sd_b(log p(x_b|z_b)) / sqrt(B) is used instead, which also counts
    the spread between points and so overstates the Monte-Carlo error.

    Args:
        model: p(z) and p(x|z).
        guide: x -> q(z|x), batch (B,), event (d,); the KL is sampled where no closed form is registered.
        x: (B, *event) data.
        samples: K, draws of z per point for the distortion.
        batch_size: points per forward pass (``None``: all at once).

    Returns:
        RatePoint of floats.

    References:
        Alemi et al. (2018). Fixing a broken ELBO. ICML.
    """
    check_positive_int("samples", samples)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    prior = model_prior(model)
    check_data(model, guide, x)  # all of x at once; each batch's guide_distribution below checks it again
    n = x.shape[0]
    step = n if batch_size is None else batch_size
    rates, distortions, variances, rate_variances = [], [], [], []
    sampled = False
    for start in range(0, n, step):
        xb = x[start : start + step]
        q = guide_distribution(model, guide, xb, prior)
        kl = analytic_kl(q, prior)
        if kl is None:  # sampled: log q(z|x) - log p(z) at the same draws as the distortion
            sampled = True
            terms = log_weights(model, q, xb, samples, path="score", prior=prior)  # no gradient needed
            log_px_given_z, kl_samples = terms.log_px_given_z, terms.log_qz - terms.log_pz  # (K, B) each
            kl = kl_samples.mean(0)
            if samples > 1:
                rate_variances.append(kl_samples.var(0, correction=1) / samples)
        else:
            log_px_given_z = log_likelihood_samples(model, q, xb, samples)  # (K, B)
        rates.append(kl)
        distortions.append(-log_px_given_z.mean(0))  # (B,)
        if samples > 1:
            variances.append(log_px_given_z.var(0, correction=1) / samples)  # variance of each point's mean
    rate = float(torch.cat(rates).mean())
    per_point = torch.cat(distortions)  # (B,)
    distortion = float(per_point.mean())
    if samples > 1:
        stderr = math.sqrt(float(torch.cat(variances).sum())) / n
    else:
        stderr = float(per_point.std(correction=1)) / math.sqrt(n) if n > 1 else math.inf
    rate_stderr = 0.0  # closed form
    if sampled:  # one draw per point leaves no within-point variance to estimate it from
        rate_stderr = math.sqrt(float(torch.cat(rate_variances).sum())) / n if samples > 1 else math.inf
    # The two sampled terms share their draws; their errors are combined as if independent.
    elbo_stderr = math.sqrt(stderr**2 + rate_stderr**2)
    return RatePoint(rate, distortion, -(rate + distortion), rate_stderr, stderr, elbo_stderr, n, samples)


def elbo_line(value: float, rates: Sequence[float]) -> list[float]:
    r"""The distortions on the line R + D = -value, for drawing it in the (R, D) plane.

    .. math::
        D(R) = -\mathrm{value} - R

    With ``value`` a point's ELBO this is its line of constant ELBO (every point on it has the same bound);
    with ``value`` = log p(x) it is the line no point of that model can lie below (Alemi et al. 2018, fig. 1).

    Args:
        value: an ELBO or log p(x), nats per point.
        rates: the rates R at which to evaluate the line.

    Returns:
        The distortions, one per rate.
    """
    return [-value - r for r in rates]
