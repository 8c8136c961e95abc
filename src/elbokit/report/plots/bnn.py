"""The figures of a Bayesian neural network's report: its training, the calibration of its predictive distribution,
and its uncertainty against its error (:mod:`elbokit.runs.bnn_evaluation` computes what they show)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from elbokit.report.plots._base import _figure, _markers
from elbokit.report.plots.training import _series
from elbokit.runs.bnn_evaluation import LEVELS, BNNEvaluation


def bnn_training_curves(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Two panels over the epochs: (a) the training ELBO per data point and the validation log predictive density
    per point (the ELBO's data term is an average log-likelihood under q, the predictive one the log of an average:
    the second is the higher); (b) KL(q(w) ‖ p(w)) per data point."""
    rows = list(history)
    if not rows or any(row.get("train_bound") is None for row in rows):
        raise ValueError("the history holds no epoch of a bnn run (metrics.jsonl is empty)")
    epoch, marker = _series(rows, "epoch"), _markers(len(rows))
    fig = _figure(8.0, 3.4)
    ax = fig.add_subplot(1, 2, 1)
    ax.plot(epoch, _series(rows, "train_bound"), "-", marker=marker, label="training ELBO / N")
    ax.plot(epoch, _series(rows, "validation_log_likelihood"), "--", marker=marker,
            label="validation log predictive")  # fmt: skip
    ax.set(title="(a) bound and predictive", xlabel="epoch", ylabel="nats per data point")
    ax.legend(fontsize="small")
    ax = fig.add_subplot(1, 2, 2)
    ax.plot(epoch, _series(rows, "train_kl"), "-", marker=marker, color="C3")
    ax.set(title="(b) KL(q(w) ‖ p(w)) / N", xlabel="epoch", ylabel="nats per data point")
    return fig


def calibration(result: BNNEvaluation) -> Figure:
    """Regression: the coverage of each central predictive interval against its level (on the diagonal when
    calibrated; below it, over-confident), and the histogram of the probability integral transform (flat when
    calibrated). Classification: the reliability diagram, accuracy against mean top-class probability per bin."""
    fig = _figure(8.0, 3.4)
    if result.task == "regression":
        ax = fig.add_subplot(1, 2, 1)
        levels = np.array(LEVELS)
        observed = np.array([result.coverage[f"{a:g}"] for a in LEVELS])
        ax.plot([0, 1], [0, 1], ":", color="0.5", label="calibrated")
        ax.plot(levels, observed, "o-", label=f"observed ({result.n} points)")
        ax.set(title="(a) interval coverage", xlabel="level of the central interval", ylabel="fraction covered",
               xlim=(0, 1), ylim=(0, 1))  # fmt: skip
        ax.legend(fontsize="small")
        ax = fig.add_subplot(1, 2, 2)
        ax.hist(result.points["pit"], bins=10, range=(0, 1), color="C0", alpha=0.8)
        ax.axhline(result.n / 10, color="0.5", linestyle=":")
        ax.set(title="(b) PIT histogram", xlabel="P(Y ≤ y | x)", ylabel="points")
        return fig
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], ":", color="0.5", label="calibrated")
    if result.reliability:
        conf = [row[1] for row in result.reliability]
        acc = [row[2] for row in result.reliability]
        ax.plot(conf, acc, "o-", label=f"observed (ECE {result.calibration_error:.3f})")
    ax.set(title="Reliability", xlabel="mean top-class probability", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize="small")
    return fig


def uncertainty_vs_error(result: BNNEvaluation) -> Figure:
    """Regression: |error| of the predictive mean against the predictive standard deviation per point, with the
    mean |error| in bins of sd (for a Gaussian predictive, E|error| = sd √(2/π): the dashed line). Classification:
    the error rate in bins of predictive entropy (higher entropy should mean more errors)."""
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    if result.task == "regression":
        sd, err = np.array(result.points["sd"]), np.array(result.points["abs_error"])
        ax.scatter(sd, err, s=6, alpha=0.4, label="points")
        edges = np.quantile(sd, np.linspace(0, 1, 9))
        which = np.clip(np.searchsorted(edges, sd, side="right") - 1, 0, 7)
        centres = [sd[which == i].mean() for i in range(8) if (which == i).any()]
        means = [err[which == i].mean() for i in range(8) if (which == i).any()]
        ax.plot(centres, means, "o-", color="C1", label="mean |error| per bin")
        line = np.linspace(0, sd.max(), 10)
        ax.plot(line, line * np.sqrt(2 / np.pi), "--", color="0.4", label="sd·√(2/π)")
        ax.set(title="Uncertainty vs error", xlabel="predictive sd", ylabel="|y − predictive mean|")
    else:
        entropy, wrong = np.array(result.points["entropy"]), 1 - np.array(result.points["correct"])
        edges = np.quantile(entropy, np.linspace(0, 1, 11))
        which = np.clip(np.searchsorted(edges, entropy, side="right") - 1, 0, 9)
        centres = [entropy[which == i].mean() for i in range(10) if (which == i).any()]
        rates = [wrong[which == i].mean() for i in range(10) if (which == i).any()]
        ax.plot(centres, rates, "o-", label="error rate per decile of entropy")
        ax.set(title="Uncertainty vs error", xlabel="predictive entropy (nats)", ylabel="error rate")
    ax.legend(fontsize="small")
    return fig
