"""Disentanglement against β: a sweep's MIG, DCI and FactorVAE scores, one point per trained model."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure

from elbokit.diagnostics.rate_distortion import SweepPoint
from elbokit.report.plots._base import _figure

#: The scores drawn: SweepPoint field, label, marker.
_SCORES = (
    ("mig", "MIG", "o"),
    ("dci_disentanglement", "DCI disentanglement", "s"),
    ("dci_completeness", "DCI completeness", "^"),
    ("dci_informativeness", "DCI informativeness", "v"),
    ("factor_vae", "FactorVAE score", "D"),
)


def disentanglement_vs_beta(points: Sequence[SweepPoint]) -> Figure:
    """Each disentanglement score of a β sweep against β (evenly spaced, in the order of increasing β).

    Higgins et al. (2017) claim that a larger β favours disentangled codes; Locatello et al. (2019) found the
    scores vary as much with the seed as with β. A rise of MIG and DCI disentanglement with β, while
    informativeness holds, supports the claim for this data and budget.

    Args:
        points: the sweep's points; each must carry its scores (data with known factors).

    Raises:
        ValueError: for no points, or a point without scores.
    """
    items = sorted(points, key=lambda p: p.beta)
    if not items:
        raise ValueError("points must hold at least one SweepPoint, got none")
    if any(p.mig is None for p in items):
        raise ValueError("every SweepPoint must carry disentanglement scores (a sweep on data with known factors)")
    fig = _figure(6.5, 3.6)
    ax = fig.add_subplot()
    positions = list(range(len(items)))
    for field, label, marker in _SCORES:
        ax.plot(positions, [getattr(p, field) for p in items], marker=marker, label=label)
    ax.set_xticks(positions, [f"{p.beta:g}" for p in items])
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    ax.set(title="Disentanglement against β", xlabel="β", ylabel="score (1 = factors recovered)")
    return fig
