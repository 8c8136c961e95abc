"""``diagnose(model, guide, x)``: every figure about the bound of any model and guide on some data, at once."""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from elbokit.diagnostics.collapse import collapse
from elbokit.diagnostics.diagnosis import AisFigure, Diagnosis, PointFigures, SurgeryFigure
from elbokit.diagnostics.evidence import ais, curve_from_sums, iwae_sums
from elbokit.diagnostics.gaps import Gaps, gaps
from elbokit.diagnostics.rate_distortion import rate_distortion
from elbokit.diagnostics.reference import ReferenceMethod
from elbokit.diagnostics.refine import as_full_gaussian
from elbokit.diagnostics.surgery import surgery
from elbokit.distributed import gather_objects, world
from elbokit.estimators import elbo, log_marginal
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.estimators._weights import check_data, check_positive_int
from elbokit.estimators.marginal import warn_pareto_k
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
    n = x.shape[0]
    ks = tuple(kk for kk in (1, 10, 100) if kk < k)
    starts = list(range(0, n, CHUNK))
    mine = [starts[i] for i in world().shard(len(starts))]  # in a process group: whole chunks per rank
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        parts = []
        for start in mine:
            # Each chunk's draws follow (seed, its first point) alone: the same figures on any number of ranks
            torch.manual_seed(seed * 1_000_003 + start)
            parts.append(_chunk(model, guide, x[start : start + CHUNK], k=k, ks=ks, refine_steps=refine_steps,
                                ais_steps=ais_steps, reference=reference, seed=seed + start))  # fmt: skip
        chunks = [part for rank_parts in gather_objects(parts) for part in rank_parts]  # in chunk order
        torch.manual_seed(seed)
        # The figures of the whole set: from the chunks' q where the guide fits q per point, else from the guide
        fitted = [c.q for c in chunks]
        whole: Guide = FixedGuide(_concatenate(fitted, device)) if all(q is not None for q in fitted) else guide
        g = _concatenate_gaps([c.gaps for c in chunks])
        rate = rate_distortion(model, whole, x, samples=10)
        # Per-dimension KL and the aggregate posterior need q's marginals and density in closed form, which a
        # flow's q lacks (its density at another point's z costs d sequential passes): its Gaussian moment
        # match stands in for it there, and the result says so.
        moment_matched = g.family == "flow"
        gaussian_guide = FixedGuide(as_full_gaussian(whole(x))) if moment_matched else whole
        c = collapse(model, gaussian_guide, x)
        s = surgery(model, gaussian_guide, x)
    value, reconstruction, kl = (torch.cat([getattr(ch, name) for ch in chunks]) for name in ("elbo", "rec", "kl"))
    log_px, stderr, ess, khat = (torch.cat([getattr(ch, name) for ch in chunks])
                                 for name in ("log_px", "stderr", "ess", "khat"))  # fmt: skip
    finite = khat[torch.isfinite(khat)]
    curve = curve_from_sums({kk: torch.stack([ch.iwae[kk] for ch in chunks]).sum(0) for kk in ks}, n, IWAE_REPEATS)
    ais_figure = None
    if ais_steps is not None:
        a_value = torch.cat([ch.ais[0] for ch in chunks if ch.ais is not None])
        a_stderr = torch.cat([ch.ais[1] for ch in chunks if ch.ais is not None])
        ais_figure = AisFigure(ais_steps, _mean(a_value), _se_of_mean(a_stderr))
    summary = g.summary()
    return Diagnosis(
        n=int(n), k=k, elbo=_mean(value), elbo_kl=chunks[0].kl_method,
        reconstruction=_mean(reconstruction), kl=_mean(kl), iwae=tuple(curve),
        log_px=_mean(log_px), log_px_stderr=_se_of_mean(stderr),
        pareto_k_max=float(finite.max()) if finite.numel() else -math.inf,
        pareto_k_over_threshold=int((khat > KHAT_THRESHOLD).sum()), min_ess=float(ess.min()),
        gaps=summary, refine_steps=g.steps, rate_distortion=rate,
        collapse_q="gaussian moment match of the flow q" if moment_matched else "q",
        active_units=c.active_units, activity_threshold=c.threshold, latent_dim=int(c.kl_per_dim.numel()),
        kl_per_dim=_floats(c.kl_per_dim), activity=_floats(c.activity),
        surgery=SurgeryFigure(*(float(getattr(s, name)) for name in SurgeryFigure._fields)),
        points=PointFigures(_floats(log_px), _floats(value), _floats(khat)),
        seconds=time.perf_counter() - started, ais=ais_figure,
    )  # fmt: skip


#: Points per chunk of :func:`diagnose`: the unit of its seeding and of its sharding over a process group.
CHUNK = 100
#: Repeats of each IWAE_k of the curve.
IWAE_REPEATS = 3


class _Chunk(NamedTuple):
    """The per-point figures of one chunk of points, on the CPU (what a rank sends to the others)."""

    elbo: Tensor
    rec: Tensor
    kl: Tensor
    kl_method: str
    log_px: Tensor
    stderr: Tensor
    ess: Tensor
    khat: Tensor
    iwae: dict[int, Tensor]
    ais: tuple[Tensor, Tensor] | None
    gaps: Gaps
    q: Distribution | None  # the q fitted to these points, for a guide that fits q per point


def _chunk(model: LatentModel, guide: Guide, x: Tensor, *, k: int, ks: tuple[int, ...], refine_steps: int,
           ais_steps: int | None, reference: ReferenceMethod, seed: int) -> _Chunk:  # fmt: skip
    fitted = fitted_once(guide, x)  # a non-amortized guide's q is fitted to x once, not once per figure
    with torch.inference_mode():
        bound = elbo(model, fitted, x)
        estimate = log_marginal(model, fitted, x, k=k, warn=False)
    sums = iwae_sums(model, fitted, x, ks, repeats=IWAE_REPEATS)
    assert estimate.pareto_k is not None
    ais_parts = None
    if ais_steps is not None:
        gen = torch.Generator(device=x.device).manual_seed(seed)
        a = ais(model, x, steps=ais_steps, proposal=fitted, generator=gen)
        ais_parts = (_cpu(a.value), _cpu(a.stderr))
    g = gaps(model, fitted, x, k=k, steps=refine_steps, samples=100, reference=reference,
             ais_steps=ais_steps or 500, warn=False)  # fmt: skip
    g = _with_tensors(g, {name: _cpu(getattr(g, name)) for name in _GAP_TENSORS})
    q = fitted.q if isinstance(fitted, FixedGuide) and fitted is not guide else None
    return _Chunk(
        _cpu(bound.value), _cpu(bound.reconstruction), _cpu(bound.kl), bound.kl_method, _cpu(estimate.value),
        _cpu(estimate.stderr), _cpu(estimate.ess), _cpu(estimate.pareto_k), sums, ais_parts, g,
        _to_cpu(q) if q is not None else None,
    )  # fmt: skip


_GAP_TENSORS = ("log_px", "log_px_stderr", "log_px_ess", "elbo_amortized", "elbo_amortized_stderr", "elbo_optimal",
                "elbo_optimal_stderr", "approximation", "amortization", "log_px_pareto_k")  # fmt: skip


def _cpu(t: Tensor) -> Tensor:
    return t.detach().to("cpu", torch.float64)


def _to_cpu(q: Distribution) -> Distribution:
    """A Gaussian q on the CPU (the only family a fitted q has), for sending between ranks."""
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        return Independent(Normal(q.base_dist.loc.detach().cpu(), q.base_dist.scale.detach().cpu()), 1)
    if isinstance(q, MultivariateNormal):
        return MultivariateNormal(q.loc.detach().cpu(), scale_tril=q.scale_tril.detach().cpu())
    raise TypeError(f"a per-point fitted q is Gaussian, got {type(q).__name__}")


def _concatenate(qs: list[Distribution | None], device: torch.device) -> Distribution:
    """The chunks' Gaussian q as one distribution over all their points, on ``device``."""
    first = qs[0]
    if isinstance(first, Independent):
        loc = torch.cat([q.base_dist.loc for q in qs])  # type: ignore[union-attr]
        scale = torch.cat([q.base_dist.scale for q in qs])  # type: ignore[union-attr]
        return Independent(Normal(loc.to(device), scale.to(device)), 1)
    loc = torch.cat([q.loc for q in qs])  # type: ignore[union-attr]
    tril = torch.cat([q.scale_tril for q in qs])  # type: ignore[union-attr]
    return MultivariateNormal(loc.to(device), scale_tril=tril.to(device))


def _concatenate_gaps(parts: list[Gaps]) -> Gaps:
    """The chunks' gaps as those of all their points (steps: the most any chunk took)."""
    first = parts[0]
    tensors = {name: torch.cat([getattr(p, name) for p in parts]) for name in _GAP_TENSORS}
    if any(bool(p.unreliable.any()) for p in parts):
        warn_pareto_k(tensors["log_px_pareto_k"], "gaps (the reference log p(x))")
    return _with_tensors(first, tensors)._replace(steps=max(p.steps for p in parts))


def _with_tensors(g: Gaps, tensors: dict[str, Tensor]) -> Gaps:
    """``g`` with its per-point tensors replaced."""
    return Gaps(**{**g._asdict(), **tensors})
