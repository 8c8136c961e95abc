"""Figures for count data (cells x genes): each gene's mean against its variance in the data and in the model's
posterior predictive, the check single-cell users make first."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from elbokit.report.plots._base import _figure, _numpy


def gene_mean_variance(data: Tensor, predictive: Tensor) -> Figure:
    r"""Each gene's mean and variance over the cells, in the data and in the posterior predictive (for each
    cell, z ~ q(z|x) and x̃ ~ p(x|z) at the cell's library), on log-log axes with the Poisson line var = mean.

    Left: mean-variance of both (the data's overdispersion above the Poisson line is what NB's θ captures);
    right: the model's variance against the data's per gene (on the diagonal when they agree). Look for genes
    whose predictive variance falls short of the data's (underdispersion: too large θ, or zero inflation
    missing) or exceeds it.
    """
    x, y = _numpy(data), _numpy(predictive)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"data and predictive must be (n, D) of one shape, got {x.shape} and {y.shape}")
    keep = (x.mean(0) > 0) & (y.mean(0) > 0)  # log axes: genes never counted are left out
    mx, vx, my, vy = x.mean(0)[keep], x.var(0)[keep], y.mean(0)[keep], y.var(0)[keep]
    fig = _figure(9.0, 4.0)
    left, right = fig.subplots(1, 2)
    left.scatter(mx, np.maximum(vx, 1e-12), s=6, alpha=0.6, color="C0", label=f"data ({x.shape[0]} cells)")
    left.scatter(my, np.maximum(vy, 1e-12), s=6, alpha=0.6, color="C1", label="posterior predictive")
    line = np.array([min(mx.min(), my.min()), max(mx.max(), my.max())])
    left.plot(line, line, color="grey", linewidth=1, linestyle="--", label="Poisson: var = mean")
    left.set(xscale="log", yscale="log", xlabel="mean count per gene", ylabel="variance per gene")
    left.set_title(f"{int(keep.sum())} genes", fontsize="small")
    left.legend(fontsize="x-small")
    right.scatter(np.maximum(vx, 1e-12), np.maximum(vy, 1e-12), s=6, alpha=0.6, color="C2")
    ends = np.array([max(min(vx.min(), vy.min()), 1e-12), max(vx.max(), vy.max())])
    right.plot(ends, ends, color="grey", linewidth=1)
    right.set(xscale="log", yscale="log", xlabel="variance in the data", ylabel="variance in the predictive")
    right.set_title("per gene (diagonal: agreement)", fontsize="small")
    for ax in (left, right):
        ax.tick_params(labelsize="x-small")
    fig.suptitle("Mean and variance of each gene: data against the model")
    return fig
