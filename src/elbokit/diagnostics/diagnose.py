"""``diagnose(model, guide, x)``: every figure about the bound of any model and guide on some data, at once."""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from elbokit.diagnostics.collapse import collapse
from elbokit.diagnostics.diagnosis import AisFigure, Diagnosis, PointFigures, SurgeryFigure
from elbokit.diagnostics.evidence import ais, iwae_curve
from elbokit.diagnostics.gaps import gaps
from elbokit.diagnostics.rate_distortion import rate_distortion
from elbokit.diagnostics.reference import ReferenceMethod
from elbokit.diagnostics.refine import as_full_gaussian
from elbokit.diagnostics.surgery import surgery
from elbokit.estimators import elbo, log_marginal
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.estimators._weights import check_data, check_positive_int
from elbokit.guides.nonamortized import fitted_once
from elbokit.models.base import FixedGuide, Guide, LatentModel


def _mean(t: Tensor) -> float:
    return float(t.double().mean())


def _se_of_mean(stderr: Tensor) -> float:
    """Standard error of the mean over points of independent per-point estimates."""
    return float(stderr.double().square().sum().sqrt()) / stderr.numel()


def _floats(t: Tensor) -> tuple[float, ...]:
    return tuple(float(v) for v in t.detach().double().cpu())


def diagnose(
    model: LatentModel,
    guide: Guide,
    x: Tensor,
    *,
    k: int = 1000,
    refine_steps: int = 300,
    ais_steps: int | None = None,
    reference: ReferenceMethod = "is",
    seed: int = 0,
) -> Diagnosis:
    r"""How far the ELBO is from log p(x) on ``x``, and why: one call for every diagnostic.

    The encoder's ELBO and IWAE_k curve; log p(x) by importance sampling from q with its k̂ (and by AIS with
    ``ais_steps``); the gaps

    .. math::
        \log p(x) - \mathcal L[q] = \underbrace{\log p(x) - \mathcal L[q^*]}_{\text{approximation}}
          + \underbrace{\mathcal L[q^*] - \mathcal L[q]}_{\text{amortization}}

    against a refined reference log p(x); rate and distortion; per-dimension KL and active units; ELBO surgery;
    and the per-point log p(x), ELBO and k̂. Draws are seeded by ``seed`` (torch's global generator is restored
    afterwards).

    Args:
        model: any LatentModel (``prior()``, ``likelihood(z)``).
        guide: x -> q(z|x); a flow's q is summarised by its Gaussian moment match for collapse and surgery.
        x: (B, *event) data points.
        k: importance samples per point for log p(x) and the gaps' reference.
        refine_steps: most optimisation steps of q* per point.
        ais_steps: also estimate log p(x) by AIS with this many temperatures (None: no).
        reference: the gaps' log p(x): ``"is"`` or ``"ais"`` (with ``ais_steps`` or 500 temperatures).
        seed: seeds the Monte-Carlo draws.

    Returns:
        A :class:`Diagnosis`.
    """
    check_positive_int("k", k)
    check_positive_int("refine_steps", refine_steps)
    if ais_steps is not None:
        check_positive_int("ais_steps", ais_steps)
    check_data(model, guide, x)
    started = time.perf_counter()
    device = x.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        guide = fitted_once(guide, x)  # a non-amortized guide's q is fitted to x once, not once per figure
        with torch.inference_mode():
            bound = elbo(model, guide, x)
            estimate = log_marginal(model, guide, x, k=k, warn=False)
            curve = iwae_curve(model, guide, x, ks=tuple(kk for kk in (1, 10, 100) if kk < k), repeats=3)
        khat = estimate.pareto_k
        assert khat is not None
        finite = khat[torch.isfinite(khat)]
        ais_figure = None
        if ais_steps is not None:
            gen = torch.Generator(device=device).manual_seed(seed)
            a = ais(model, x, steps=ais_steps, proposal=guide, generator=gen)
            ais_figure = AisFigure(ais_steps, _mean(a.value), _se_of_mean(a.stderr))
        g = gaps(model, guide, x, k=k, steps=refine_steps, samples=100, reference=reference,
                 ais_steps=ais_steps or 500)  # fmt: skip
        rate = rate_distortion(model, guide, x, samples=10)
        # Per-dimension KL and the aggregate posterior need q's marginals and density in closed form, which a
        # flow's q lacks (its density at another point's z costs d sequential passes): its Gaussian moment
        # match stands in for it there, and the result says so.
        moment_matched = g.family == "flow"
        gaussian_guide = FixedGuide(as_full_gaussian(guide(x))) if moment_matched else guide
        c = collapse(model, gaussian_guide, x)
        s = surgery(model, gaussian_guide, x)
    return Diagnosis(
        n=int(x.shape[0]), k=k, elbo=_mean(bound.value), elbo_kl=bound.kl_method,
        reconstruction=_mean(bound.reconstruction), kl=_mean(bound.kl), iwae=tuple(curve),
        log_px=_mean(estimate.value), log_px_stderr=_se_of_mean(estimate.stderr),
        pareto_k_max=float(finite.max()) if finite.numel() else -math.inf,
        pareto_k_over_threshold=int((khat > KHAT_THRESHOLD).sum()), min_ess=float(estimate.ess.min()),
        gaps=g.summary(), refine_steps=g.steps, rate_distortion=rate,
        collapse_q="gaussian moment match of the flow q" if moment_matched else "q",
        active_units=c.active_units, activity_threshold=c.threshold, latent_dim=int(c.kl_per_dim.numel()),
        kl_per_dim=_floats(c.kl_per_dim), activity=_floats(c.activity),
        surgery=SurgeryFigure(*(float(getattr(s, name)) for name in SurgeryFigure._fields)),
        points=PointFigures(_floats(estimate.value), _floats(bound.value), _floats(khat)),
        seconds=time.perf_counter() - started, ais=ais_figure,
    )  # fmt: skip
