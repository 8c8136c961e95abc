"""The truth about the bound: how far the ELBO is from log p(x), and why.

::

    from elbokit import diagnostics as dx
    dx.gaps(model, guide, x, k=5000)      # log p(x) (+ its k-hat), L[q*], L[q], approximation and amortization gaps
    dx.gaps(..., family="flow", reference="ais")  # q* in another family; the reference log p(x) by AIS
    dx.refine(model, guide, x, steps=200) # q* per data point, a Distribution usable as a guide
    dx.refined_proposal(model, guide, x)  # q refined in the full-covariance family, mixed defensively
    dx.collapse(model, guide, x)          # per-dimension KL, active units, I(x; z)
    dx.surgery(model, guide, x)           # average KL = I(x; z) + KL(q(z) || p(z)), and log N
    dx.ais(model, x, steps=1000)          # annealed importance sampling: a tighter lower bound on log p(x)
    dx.bdmc(model, x, z, steps=1000)      # reverse AIS from exact posterior samples: an upper bound
    dx.pareto_khat(log_w)                 # PSIS k-hat of importance weights (k-hat > 0.7: unreliable)
    dx.rate_distortion(model, guide, x)   # rate = KL, distortion = -E_q log p(x|z)
    dx.sweep(config, betas)               # one model per beta: the rate-distortion curve
    dx.mode_seeking()                     # a Gaussian fitted to two modes by the reverse and the forward KL
    dx.diagnose(model, guide, x, k=1000)  # all of the above at once: a Diagnosis (to_dict / from_dict)
    dx.mig(z, factors), dx.dci(z, factors), dx.factor_vae_score(z, factors)  # disentanglement of codes (N, d)
    dx.disentanglement(z, factors, names=...)  # all three at once, and the latent that carries each factor
"""

from typing import Any

from elbokit.diagnostics.collapse import Collapse, collapse
from elbokit.diagnostics.diagnose import diagnose
from elbokit.diagnostics.diagnosis import AisFigure, Diagnosis, PointFigures, SurgeryFigure
from elbokit.diagnostics.disentangle import Disentanglement, disentanglement
from elbokit.diagnostics.disentanglement import DCI, MIG, FactorVAEScore, dci, factor_vae_score, mig
from elbokit.diagnostics.evidence import CurvePoint, ais, bdmc, iwae_curve, pareto_khat
from elbokit.diagnostics.gaps import Gaps, GapSummary, gaps, refine
from elbokit.diagnostics.mode_seeking import ModeSeekingResult, mode_seeking
from elbokit.diagnostics.rate_distortion import RatePoint, SweepPoint, rate_distortion
from elbokit.diagnostics.reference import reference_log_px, refined_proposal
from elbokit.diagnostics.surgery import Surgery, surgery

__all__ = [
    "DCI",
    "MIG",
    "AisFigure",
    "Collapse",
    "CurvePoint",
    "Diagnosis",
    "Disentanglement",
    "FactorVAEScore",
    "GapSummary",
    "Gaps",
    "ModeSeekingResult",
    "PointFigures",
    "RatePoint",
    "Surgery",
    "SurgeryFigure",
    "SweepPoint",
    "ais",
    "bdmc",
    "collapse",
    "dci",
    "diagnose",
    "disentanglement",
    "factor_vae_score",
    "gaps",
    "iwae_curve",
    "mig",
    "mode_seeking",
    "pareto_khat",
    "rate_distortion",
    "reference_log_px",
    "refine",
    "refined_proposal",
    "surgery",
    "sweep",
]


def __getattr__(name: str) -> Any:
    """``dx.sweep``, which trains runs, lives in :mod:`elbokit.sweeps` (above the runs); imported on first use."""
    if name == "sweep":
        from elbokit.sweeps import sweep

        return sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
