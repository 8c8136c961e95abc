"""Figures of single points and single features: k̂ over the points, the points a model explains worst beside
their reconstructions, and, for data that are not images, each feature's reconstruction and its marginal under the
model (a posterior-predictive check)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import NDArray
from torch import Tensor

from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.report.images import image_grid
from elbokit.report.plots._base import _cell_centres, _figure, _grid_height, _numpy, _show_grid

#: k̂ below this: the importance-sampled estimate converges at the usual rate (Vehtari et al. 2024).
KHAT_GOOD = 0.5
_PANELS = 4  # feature panels to a row


class PointGroup(NamedTuple):
    """Points drawn together under one heading: their data (m, D), their reconstructions (m, D), a name each."""

    title: str
    data: Tensor
    reconstruction: Tensor
    names: Sequence[str]


# -- k-hat -----------------------------------------------------------------------------------------------------


def pareto_k_histogram(pareto_k: Sequence[float], *, threshold: float = KHAT_THRESHOLD) -> Figure:
    """How many points have each k̂ (the Pareto shape of their largest importance weights), with the threshold.

    Look for the mass left of 0.5 (each point's log p̂(x) is reliable), a tail between 0.5 and the threshold (slow
    to converge) and any point beyond it: its log p̂(x) and error bar cannot be trusted, so the mean log p̂(x) is
    likely short. Points with no finite k̂ are counted in the title, not drawn.

    References:
        Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto smoothed importance sampling", JMLR 2024.
    """
    values = np.asarray([float(v) for v in pareto_k], dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError(f"no point has a finite k̂ (got {values.size} value(s))")
    over = int((values > threshold).sum())
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    low, high = min(float(finite.min()), 0.0), max(float(finite.max()), threshold + 0.1)
    ax.hist(finite, bins=np.linspace(low, high, 31).tolist(), color="C0", alpha=0.85, label="points")
    ax.axvline(KHAT_GOOD, color="0.4", linestyle=":", linewidth=1, label=f"{KHAT_GOOD:g}: reliable below")
    ax.axvline(threshold, color="C3", linestyle="--", linewidth=1.5, label=f"{threshold:g}: unreliable above")
    title = f"k̂ over the points: {over} of {values.size} above {threshold:g}"
    if finite.size < values.size:
        title += f" ({values.size - finite.size} without a finite k̂, not drawn)"
    ax.set(title=title, xlabel="k̂ of the point's importance weights", ylabel="points")
    ax.legend(fontsize="small")
    return fig


# -- points beside their reconstructions --------------------------------------------------------------------------


def _check_groups(groups: Sequence[PointGroup]) -> int:
    if not groups:
        raise ValueError("groups must hold at least one PointGroup, got none")
    dim = groups[0].data.shape[-1]
    for g in groups:
        m = g.data.shape[0]
        if g.data.dim() != 2 or g.data.shape != g.reconstruction.shape or m < 1 or len(g.names) != m:
            raise ValueError(f"{g.title}: data and reconstruction must both be (m, D) with m >= 1 and one name per "
                             f"point, got {tuple(g.data.shape)}, {tuple(g.reconstruction.shape)} and "
                             f"{len(g.names)} names")  # fmt: skip
        if g.data.shape[1] != dim:
            raise ValueError(f"every group must have D = {dim} features, got {g.data.shape[1]} in {g.title}")
    return int(dim)


def point_reconstructions(groups: Sequence[PointGroup], *, image_shape: tuple[int, int] | None = None) -> Figure:
    """Each group's points beside their reconstructions: for images, a row of data above a row of
    reconstructions; otherwise one panel per point, its features (dots) against the reconstruction (line).

    Look for what the worst-explained points share: outliers, a kind of data the model has not learnt, or
    reconstructions as good as any (then the encoder's q, not the decoder, is what loses).
    """
    dim = _check_groups(groups)
    if image_shape is not None:
        # Per group, (2m, D): a row of data, then a row of their reconstructions.
        pairs = [torch.cat([g.data, g.reconstruction]).detach().cpu().float() for g in groups]
        grids = [
            image_grid(p, image_shape=image_shape, columns=g.data.shape[0]) for p, g in zip(pairs, groups, strict=True)
        ]
        heights = [_grid_height(grid, 6.0, 0.8) for grid in grids]
        fig = _figure(6.5, min(9.0, sum(heights)))
        height, width = image_shape
        for i, (g, grid) in enumerate(zip(groups, grids, strict=True)):
            ax = fig.add_subplot(len(groups), 1, i + 1)
            _show_grid(ax, grid.clamp(0, 1))
            ax.set_xticks(_cell_centres(len(g.names), width, 1), list(g.names), fontsize="x-small")
            ax.set_yticks(_cell_centres(2, height, 1), ["data", "recon."])
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(g.title)
        return fig
    columns = max(g.data.shape[0] for g in groups)
    fig = _figure(min(11.0, 2.6 * columns + 0.5), 2.5 * len(groups) + 0.3)
    features = np.arange(dim)
    size = 9 if dim <= 60 else 2
    for r, g in enumerate(groups):
        data, recon = _numpy(g.data), _numpy(g.reconstruction)
        for c, name in enumerate(g.names):
            ax = fig.add_subplot(len(groups), columns, r * columns + c + 1)
            ax.scatter(features, data[c], s=size, color="C0", label="data", zorder=2)
            ax.plot(features, recon[c], color="C1", linewidth=1, label="reconstruction")
            ax.set_title(f"{g.title}\n{name}" if c == 0 else name, fontsize="small", loc="left")
            ax.tick_params(labelsize="x-small")
            if r == len(groups) - 1:
                ax.set_xlabel("feature j", fontsize="small")
            if r == 0 and c == 0:
                ax.legend(fontsize="x-small")
    return fig


# -- features (data that are not images) ---------------------------------------------------------------------------


def _check_features(data: Tensor, other: Tensor, features: Sequence[int], other_name: str) -> list[int]:
    if data.dim() != 2 or other.dim() != 2 or data.shape[1] != other.shape[1] or min(data.shape[0], other.shape[0]) < 1:
        raise ValueError(f"data and {other_name} must be (N, D) with the same D and N >= 1, got "
                         f"{tuple(data.shape)} and {tuple(other.shape)}")  # fmt: skip
    chosen = list(features)
    dim = data.shape[1]
    if not chosen or any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < dim for j in chosen):
        raise ValueError(f"features must be one or more integers in [0, {dim}), got {tuple(chosen)}")
    return chosen


def _panel_grid(fig: Figure, count: int, first_row: int) -> list[Axes]:
    """``count`` axes, ``_PANELS`` to a row, below ``first_row`` rows left for the caller."""
    rows = first_row + math.ceil(count / _PANELS)
    spec = fig.add_gridspec(rows, _PANELS)
    return [fig.add_subplot(spec[first_row + i // _PANELS, i % _PANELS]) for i in range(count)]


def _diagonal(ax: Axes, a: NDArray[np.float64], b: NDArray[np.float64]) -> None:
    low, high = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
    ax.plot([low, high], [low, high], ":", color="0.4", linewidth=1)


def feature_reconstructions(data: Tensor, reconstruction: Tensor, *, features: Sequence[int]) -> Figure:
    r"""Per feature, each point's value x_j against its reconstruction mean E[x_j | z = E_q z], with the diagonal
    and the share of the feature's variance the reconstructions explain,

    .. math::
        R^2_j = 1 - \sum_i (x_{ij} - \hat x_{ij})^2 / \sum_i (x_{ij} - \bar x_j)^2 .

    Look for points on the diagonal; a flat cloud (R² near 0) is a feature the code does not carry.
    """
    chosen = _check_features(data, reconstruction, features, "reconstruction")
    x, r = _numpy(data), _numpy(reconstruction)
    fig = _figure(9.0, 2.4 * math.ceil(len(chosen) / _PANELS) + 0.5)
    for ax, j in zip(_panel_grid(fig, len(chosen), 0), chosen, strict=True):
        spread = float(((x[:, j] - x[:, j].mean()) ** 2).sum())
        explained = f"R² = {1 - float(((x[:, j] - r[:, j]) ** 2).sum()) / spread:.2f}" if spread > 0 else "constant"
        ax.scatter(x[:, j], r[:, j], s=6, alpha=0.6, color="C0")
        _diagonal(ax, x[:, j], r[:, j])
        ax.set_title(f"$x_{{{j}}}$: {explained}", fontsize="small")
        ax.tick_params(labelsize="x-small")
    fig.supxlabel("data $x_j$", fontsize="small")
    fig.supylabel(r"reconstruction $E[x_j \mid z = E_q z]$", fontsize="small")
    fig.suptitle("Reconstructions of the most variable features")
    return fig


def _edges(a: NDArray[np.float64], b: NDArray[np.float64]) -> list[float]:
    """Histogram bins shared by two samples: one per integer for small counts, else 30 over the central 99%."""
    both = np.concatenate([a, b])
    both = both[np.isfinite(both)]
    if both.size == 0:
        return np.linspace(0.0, 1.0, 31).tolist()
    if np.all(both == np.round(both)) and both.max() - both.min() <= 40:
        return np.arange(both.min() - 0.5, both.max() + 1.5).tolist()
    low, high = (float(v) for v in np.percentile(both, [0.5, 99.5]))
    return np.linspace(low, high if high > low else low + 1.0, 31).tolist()


def feature_marginals(data: Tensor, samples: Tensor, *, features: Sequence[int]) -> Figure:
    r"""A posterior-predictive check: each feature's marginal in the data against that in draws from the model,
    x ~ p(x) = ∫ p(x|z) p(z) dz.

    The top row compares the per-feature means and standard deviations over all D features (data across,
    model up: on the diagonal when they agree); below, for ``features``, the two histograms (densities) overlaid.
    Look for a model marginal narrower or wider than the data's, shifted, or with mass where the data have none:
    misfit that a good ELBO on average can hide.
    """
    chosen = _check_features(data, samples, features, "samples")
    x, s = _numpy(data), _numpy(samples)
    fig = _figure(9.0, 2.3 * (1 + math.ceil(len(chosen) / _PANELS)) + 0.5)
    spec = fig.add_gridspec(1 + math.ceil(len(chosen) / _PANELS), _PANELS)
    moments = (("mean", x.mean(0), s.mean(0)), ("standard deviation", x.std(0), s.std(0)))  # each (D,), (D,)
    for k, (name, a, b) in enumerate(moments):
        ax = fig.add_subplot(spec[0, 2 * k : 2 * k + 2])
        ax.scatter(a, b, s=8, alpha=0.7, color="C0" if k == 0 else "C2")
        _diagonal(ax, a, b)
        ax.set_title(f"{name} of each of the {x.shape[1]} features", fontsize="small")
        ax.set_xlabel("data", fontsize="small")
        ax.set_ylabel("x ~ p(x)", fontsize="small")
        ax.tick_params(labelsize="x-small")
    for i, j in enumerate(chosen):
        ax = fig.add_subplot(spec[1 + i // _PANELS, i % _PANELS])
        bins = _edges(x[:, j], s[:, j])
        ax.hist(x[:, j], bins=bins, density=True, color="C0", alpha=0.5, label=f"data ({x.shape[0]})")
        ax.hist(s[:, j], bins=bins, density=True, histtype="step", color="C1", linewidth=1.5,
                label=f"x ~ p(x) ({s.shape[0]})")  # fmt: skip
        ax.set_title(f"$x_{{{j}}}$", fontsize="small")
        ax.tick_params(labelsize="x-small")
        if i == 0:
            ax.legend(fontsize="x-small")
    fig.suptitle("Posterior-predictive check: the data against draws from the model")
    return fig
