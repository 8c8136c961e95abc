"""The result of :func:`elbokit.diagnostics.diagnose`: every figure about a model's bound on some data, typed.

A :class:`Diagnosis` is what ``elbokit diagnose`` prints, what ``diagnostics.json`` holds (``to_dict`` /
``from_dict``) and what the report renders. ``from_dict`` checks every value's type before building one: a
file that lacks a key or holds a value of another type (an older file, a crafted one) is refused with a one-line
``ValueError``, never rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple, get_args

from elbokit._json import Check, count, is_finite, is_real, list_of, one_of, record
from elbokit.diagnostics.evidence import CurvePoint
from elbokit.diagnostics.gaps import GapSummary
from elbokit.diagnostics.rate_distortion import RatePoint
from elbokit.diagnostics.reference import ReferenceMethod
from elbokit.diagnostics.refine import Family
from elbokit.types import KLMethod


class AisFigure(NamedTuple):
    """log p(x) by annealed importance sampling: mean over the points, its standard error, the temperatures."""

    steps: int
    value: float
    stderr: float


class SurgeryFigure(NamedTuple):
    """ELBO surgery (Hoffman & Johnson 2016), means over the points: average KL = I(x; z) + KL(q(z) || p(z))."""

    average_kl: float
    mutual_information: float
    marginal_kl: float
    log_n: float
    identity_error: float


class PointFigures(NamedTuple):
    """Per-point figures, one value per data point in the order given: the report's k̂ distribution and its
    worst-explained points come from them."""

    log_px: tuple[float, ...]  # importance-sampled log p(x) from the encoder's q
    elbo: tuple[float, ...]  # the encoder's ELBO
    pareto_k: tuple[float, ...]  # k̂ of the importance weights (> 0.7: that point's log p(x) is unreliable)


@dataclass(frozen=True)
class Diagnosis:
    """How far the ELBO is from log p(x) on n points, and why (nats per point; means over the points).

    Attributes:
        n, k: points, and importance samples per point.
        elbo, elbo_kl, reconstruction, kl: the encoder's ELBO, how its KL was computed ("analytic" or "mc"),
            and its two terms.
        iwae: IWAE_k for k below ``k``, each with its standard error over repeats.
        log_px, log_px_stderr, pareto_k_max, pareto_k_over_threshold, min_ess: importance-sampled log p(x) from
            the encoder's q, its standard error, the largest k̂, the points over 0.7, the smallest ESS.
        ais: AIS's log p(x), or None.
        gaps: the approximation and amortization gaps against the refined reference log p(x).
        refine_steps: the refinement steps behind L[q*].
        rate_distortion: rate, distortion and their ELBO.
        collapse_q: "q", or "gaussian moment match of the flow q" when a flow's q was summarised by its moments.
        active_units, activity_threshold, latent_dim, kl_per_dim, activity: posterior collapse.
        surgery: ELBO surgery.
        points: per-point log p(x), ELBO and k̂.
        seconds: how long the diagnosis took.
        run, split, epoch, step: where the points and the model came from (a run directory's diagnosis), or None.
    """

    n: int
    k: int
    elbo: float
    elbo_kl: str
    reconstruction: float
    kl: float
    iwae: tuple[CurvePoint, ...]
    log_px: float
    log_px_stderr: float
    pareto_k_max: float
    pareto_k_over_threshold: int
    min_ess: float
    gaps: GapSummary
    refine_steps: int
    rate_distortion: RatePoint
    collapse_q: str
    active_units: int
    activity_threshold: float
    latent_dim: int
    kl_per_dim: tuple[float, ...]
    activity: tuple[float, ...]
    surgery: SurgeryFigure
    points: PointFigures
    seconds: float
    ais: AisFigure | None = None
    run: str | None = None
    split: str | None = None
    epoch: int | None = None
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the layout of ``diagnostics.json``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "refine_steps":  # kept with the gaps it belongs to
                continue
            if f.name == "iwae":
                value = [p._asdict() for p in value]
            elif f.name == "gaps":
                value = value._asdict() | {"refine_steps": self.refine_steps}
            elif isinstance(value, tuple) and hasattr(value, "_asdict"):
                value = {name: list(v) if isinstance(v, tuple) else v for name, v in value._asdict().items()}
            elif isinstance(value, tuple):
                value = list(value)
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "diagnostics") -> Diagnosis:
        """Build from :meth:`to_dict`'s layout after checking every value's type (ValueError, one line)."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        for key, check in {**_CHECKS, **{k: c for k, c in _OPTIONAL.items() if d.get(k) is not None}}.items():
            if key not in d:
                raise ValueError(f"{source}: {key!r} is missing")
            if not check(d[key]):
                raise ValueError(f"{source}: {key!r} has a value of the wrong type or range")
        if not len(d["kl_per_dim"]) == len(d["activity"]) == d["latent_dim"] >= d["active_units"]:
            raise ValueError(f"{source}: kl_per_dim, activity and latent_dim disagree")
        if not len(d["points"]["log_px"]) == len(d["points"]["elbo"]) == len(d["points"]["pareto_k"]) == d["n"]:
            raise ValueError(f"{source}: the per-point figures are not one per point")
        gaps = d["gaps"]
        return cls(
            n=d["n"], k=d["k"], elbo=float(d["elbo"]), elbo_kl=d.get("elbo_kl", "analytic"),
            reconstruction=float(d["reconstruction"]), kl=float(d["kl"]),
            iwae=tuple(CurvePoint(p["k"], float(p["value"]), float(p["stderr"])) for p in d["iwae"]),
            log_px=float(d["log_px"]), log_px_stderr=float(d["log_px_stderr"]), pareto_k_max=float(d["pareto_k_max"]),
            pareto_k_over_threshold=d["pareto_k_over_threshold"], min_ess=float(d["min_ess"]),
            gaps=GapSummary(**{name: gaps[name] for name in GapSummary._fields}), refine_steps=gaps["refine_steps"],
            rate_distortion=RatePoint(**d["rate_distortion"]), collapse_q=d["collapse_q"],
            active_units=d["active_units"], activity_threshold=float(d["activity_threshold"]),
            latent_dim=d["latent_dim"], kl_per_dim=tuple(map(float, d["kl_per_dim"])),
            activity=tuple(map(float, d["activity"])),
            surgery=SurgeryFigure(**{name: float(d["surgery"][name]) for name in SurgeryFigure._fields}),
            points=PointFigures(*(tuple(map(float, d["points"][name])) for name in PointFigures._fields)),
            seconds=float(d["seconds"]), ais=AisFigure(**d["ais"]) if d.get("ais") is not None else None,
            run=d.get("run"), split=d.get("split"), epoch=d.get("epoch"), step=d.get("step"),
        )  # fmt: skip


#: What each value of a ``diagnostics.json`` must be (the types :meth:`Diagnosis.to_dict` writes). Estimates are
#: finite; standard errors and k-hat may be infinite (k-hat is -inf where no point has a finite one).
_GAPS: dict[str, Check] = {
    **dict.fromkeys(("log_px", "elbo_optimal", "elbo_amortized", "approximation", "amortization"), is_finite),
    **dict.fromkeys(("log_px_stderr", "elbo_optimal_stderr", "elbo_amortized_stderr", "elbo_sample_sd",
                     "pareto_k_max"), is_real),
    "n": count(1), "steps": count(0), "unreliable": count(0), "refine_steps": count(0),
    "family": one_of(*get_args(Family)), "reference": one_of(*get_args(ReferenceMethod)),
}  # fmt: skip
_RATE: dict[str, Check] = {
    **dict.fromkeys(("rate", "distortion", "elbo"), is_finite),
    **dict.fromkeys(("rate_stderr", "distortion_stderr", "elbo_stderr"), is_real),  # inf with one draw per point
    "n": count(1), "samples": count(1),
}  # fmt: skip
_CHECKS: dict[str, Check] = {
    "n": count(1), "k": count(1), "elbo": is_finite, "reconstruction": is_finite, "kl": is_finite,
    "log_px": is_finite, "log_px_stderr": is_real, "pareto_k_max": is_real, "pareto_k_over_threshold": count(0),
    "min_ess": is_real, "iwae": list_of(record({"k": count(1), "value": is_finite, "stderr": is_real})),
    "gaps": record(_GAPS), "rate_distortion": record(_RATE, exact=True), "collapse_q": lambda v: isinstance(v, str),
    "kl_per_dim": list_of(is_finite), "activity": list_of(is_finite), "active_units": count(0), "latent_dim": count(1),
    "activity_threshold": is_finite,
    "surgery": record(dict.fromkeys(SurgeryFigure._fields, is_finite)),
    "points": record({"log_px": list_of(is_real), "elbo": list_of(is_real), "pareto_k": list_of(is_real)}, exact=True),
    "seconds": is_finite,
}  # fmt: skip
#: Keys that may be absent or null, checked where present.
_OPTIONAL: dict[str, Check] = {
    "ais": record({"steps": count(1), "value": is_finite, "stderr": is_real}, exact=True),
    "elbo_kl": one_of(*get_args(KLMethod)),
    "run": lambda v: isinstance(v, str),
    "split": one_of("train", "validation", "test"),
    "epoch": count(0),
    "step": count(0),
}
