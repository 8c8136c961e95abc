"""The figure of a run's training: the bound, reconstruction and KL per epoch, and β."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray

from elbokit.report.plots._base import (
    NATS,
    _figure,
    _markers,
)
from elbokit.train.loop import FitResult

# -- training --------------------------------------------------------------------------------------------------

_REQUIRED = ("epoch", "train_bound", "train_reconstruction", "train_kl", "beta")


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> NDArray[np.float64]:
    """One column of the history; a missing or None entry is NaN (no validation split)."""
    return np.array([np.nan if row.get(key) is None else float(row[key]) for row in rows], dtype=np.float64)


def training_curves(history: FitResult | Sequence[Mapping[str, Any]]) -> Figure:
    """The bound, its two terms and β over the epochs of a run (a FitResult or the lines of metrics.jsonl).

    Three panels: (a) the training bound (the objective, β_t-weighted) and the validation bound; (b) the
    reconstruction term E_q log p(x|z) (left axis) and the KL term (right axis), train solid, validation dashed;
    (c) β_t. Look for a validation bound that stops rising while the training bound climbs (over-fitting), and
    for a KL that falls to near zero as β reaches 1 (posterior collapse).

    Raises:
        ValueError: for an empty history or rows without the training keys.
    """
    rows = list(history.history if isinstance(history, FitResult) else history)
    if not rows:
        raise ValueError("history must hold at least one epoch, got none")
    for i, row in enumerate(rows):
        missing = [key for key in _REQUIRED if row.get(key) is None]
        if missing:
            raise ValueError(f"history row {i} lacks {', '.join(missing)}; expected the keys of metrics.jsonl")
    epoch = _series(rows, "epoch")
    marker = _markers(len(rows))
    fig = _figure(9.0, 4.2)
    fig.suptitle("Training curves")

    ax = fig.add_subplot(1, 3, 1)
    ax.plot(epoch, _series(rows, "train_bound"), "-", marker=marker, color="C0", label="train (objective)")
    validation = _series(rows, "validation_bound")
    if not np.isnan(validation).all():
        ax.plot(epoch, validation, "--", marker=marker, color="C0", alpha=0.7, label="validation")
    ax.set(title="(a) bound", xlabel="epoch", ylabel=f"bound, {NATS}")
    ax.legend(fontsize="small")

    ax = fig.add_subplot(1, 3, 2)
    kl_ax = ax.twinx()  # E_q log p(x|z) and KL differ in scale by an order of magnitude or more
    handles: list[Any] = []
    for split, style in (("train", "-"), ("validation", "--")):
        reconstruction, kl = _series(rows, f"{split}_reconstruction"), _series(rows, f"{split}_kl")
        if not np.isnan(reconstruction).all():
            handles += ax.plot(
                epoch, reconstruction, style, marker=marker, color="C0", label=f"E_q log p(x|z), {split}"
            )
        if not np.isnan(kl).all():
            handles += kl_ax.plot(epoch, kl, style, marker=marker, color="C1", label=f"KL(q || p(z)), {split}")
    ax.set(title="(b) reconstruction and KL", xlabel="epoch")
    ax.set_ylabel(f"E_q log p(x|z), {NATS}", color="C0")
    kl_ax.set_ylabel(f"KL(q(z|x) || p(z)), {NATS}", color="C1")
    ax.legend(handles=handles, fontsize="x-small", ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))

    ax = fig.add_subplot(1, 3, 3)
    ax.plot(epoch, _series(rows, "beta"), "-", marker=marker, color="C2")
    ax.set(title="(c) KL weight β", xlabel="epoch", ylabel="β (dimensionless; 1 = the ELBO)")
    return fig
