r"""Figures of a run and of its diagnostics, as ``matplotlib.figure.Figure`` objects.

Each function here takes one of the library's typed results (a :class:`~elbokit.train.FitResult`, a
:class:`~elbokit.models.VAE`, :class:`~elbokit.diagnostics.Collapse`, :class:`~elbokit.diagnostics.GapSummary`,
IWAE curve points, rate-distortion points, :class:`~elbokit.diagnostics.ModeSeekingResult`) and returns a new
Figure, built without pyplot: no backend is selected, no global figure registry is touched, and nothing is
shown or saved (``fig.savefig(buffer, format="png")`` renders one, as the HTML report does). Values are in nats
per data point. This is the only module of elbokit that imports matplotlib, so the rest of the library, the
training loop and the diagnostics included, runs without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from numpy.typing import NDArray
from torch import Tensor

from elbokit.diagnostics.collapse import Collapse
from elbokit.diagnostics.evidence import CurvePoint
from elbokit.diagnostics.gaps import Gaps, GapSummary
from elbokit.diagnostics.mode_seeking import ModeSeekingResult
from elbokit.diagnostics.rate_distortion import RatePoint, SweepPoint, elbo_line
from elbokit.models.vae import VAE
from elbokit.report.images import image_grid
from elbokit.train.loop import FitResult

__all__ = [
    "gap_waterfall",
    "iwae_curve",
    "kl_per_dim",
    "latent_manifold",
    "latent_scatter",
    "latent_traversals",
    "mode_seeking",
    "rate_distortion",
    "reconstructions",
    "sample_grid",
    "training_curves",
]

TRAVERSAL_VALUES = (-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0)
NATS = "nats per data point"
ACTIVE, INACTIVE = "C0", "0.65"  # bar colours of kl_per_dim


# -- helpers ---------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _numpy(t: Tensor) -> NDArray[np.float64]:
    return t.detach().to("cpu", torch.float64).numpy()


def _markers(n: int) -> str:
    """Markers on short series, so that a run of one or a few epochs still shows its points."""
    return "o" if n <= 30 else ""


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_dims(dims: Sequence[int], latent_dim: int, *, count: int | None = None) -> list[int]:
    dims = list(dims)
    if count is not None and len(dims) != count:
        raise ValueError(f"dims must name {count} latent dimensions, got {tuple(dims)}")
    if not dims:
        raise ValueError("dims must name at least one latent dimension, got none")
    for j in dims:
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < latent_dim:
            raise ValueError(f"dims must be integers in [0, {latent_dim}) for a {latent_dim}-d latent, got {j!r}")
    if len(set(dims)) != len(dims):
        raise ValueError(f"dims must be distinct, got {tuple(dims)}")
    return dims


def _grid_height(grid: Tensor, width: float, extra: float) -> float:
    """The figure height that shows ``grid`` at ``width`` inches without stretching, plus ``extra``."""
    return min(9.0, max(1.5, width * grid.shape[0] / grid.shape[1] + extra))


def _show_grid(ax: Axes, grid: Tensor) -> None:
    ax.imshow(_numpy(grid), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")


def _cell_centres(count: int, size: int, padding: int) -> list[float]:
    """Pixel coordinates of the centres of ``count`` cells of ``size`` pixels in an image_grid row or column."""
    return [padding + i * (size + padding) + (size - 1) / 2 for i in range(count)]


def _latent_reference(model: VAE) -> Tensor:
    """The prior's mean, (d,): zeros on the model's device and in its dtype."""
    mean: Tensor = model.prior().mean
    return mean


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


# -- images ----------------------------------------------------------------------------------------------------


def sample_grid(
    images: Tensor, image_shape: tuple[int, int], *, columns: int = 8, title: str = "Samples from p(z)"
) -> Figure:
    """A grid of images (N, H*W) in [0, 1], e.g. E[x|z] for z ~ p(z), in grey, ``columns`` to a row.

    Look for variety (one repeated blur says the decoder ignores z) and for sharpness.
    """
    columns = _check_int("columns", columns, 1)
    grid = image_grid(images.detach().cpu(), image_shape=image_shape, columns=columns)
    fig = _figure(6.0, _grid_height(grid, 6.0, 0.5))
    ax = fig.add_subplot()
    _show_grid(ax, grid)
    ax.set_title(title)
    ax.set_axis_off()
    return fig


def reconstructions(
    originals: Tensor, reconstructed: Tensor, image_shape: tuple[int, int], *, columns: int = 8
) -> Figure:
    """Data (upper panel) and their reconstructions (lower panel), image i in the same cell of both.

    Look for reconstructions that keep each image's identity (its digit, its stroke) rather than drifting to a
    class average, which is what a low-rate model does.

    Raises:
        ValueError: if the two tensors differ in shape.
    """
    if originals.shape != reconstructed.shape:
        raise ValueError(
            f"originals and reconstructed must have the same shape, got {tuple(originals.shape)} "
            f"and {tuple(reconstructed.shape)}"
        )
    columns = _check_int("columns", columns, 1)
    grids = [image_grid(t.detach().cpu(), image_shape=image_shape, columns=columns) for t in (originals, reconstructed)]
    fig = _figure(6.0, min(9.0, 2 * _grid_height(grids[0], 6.0, 0.4) + 0.4))
    fig.suptitle("Data and reconstructions E[x | z = E_q z]")
    for i, (grid, name) in enumerate(zip(grids, ("data", "reconstruction"), strict=True)):
        ax = fig.add_subplot(2, 1, i + 1)
        _show_grid(ax, grid)
        ax.set_title(name)
        ax.set_axis_off()
    return fig


def latent_traversals(
    model: VAE,
    image_shape: tuple[int, int],
    *,
    dims: Sequence[int] | None = None,
    values: Sequence[float] = TRAVERSAL_VALUES,
) -> Figure:
    """E[x|z] as one latent z_j moves through ``values`` with every other latent at 0: one row per z_j.

    Look for rows that change smoothly and in one interpretable way (a disentangled dimension) and for rows
    that do not change at all: those dimensions are inactive (compare :func:`kl_per_dim`).

    Args:
        model: the VAE.
        image_shape: (H, W) with H W = D.
        dims: the latent dimensions, one row each (default: the first min(8, d)).
        values: the values each takes, one column each (default -3 to 3 in steps of 0.75).
    """
    d = model.latent_dim
    rows = _check_dims(list(range(min(8, d))) if dims is None else dims, d)
    columns = [float(v) for v in values]
    if not columns or not all(math.isfinite(v) for v in columns):
        raise ValueError(f"values must be at least one finite number, got {tuple(values)}")
    with torch.inference_mode():
        reference = _latent_reference(model)
        z = reference.new_zeros(len(rows), len(columns), d)  # (R, C, d)
        for r, j in enumerate(rows):
            z[r, :, j] = torch.tensor(columns, dtype=z.dtype, device=z.device)
        decoded = model.decode(z.reshape(-1, d)).cpu()  # (R C, D)
    padding = 1
    grid = image_grid(decoded, image_shape=image_shape, columns=len(columns), padding=padding)
    height, width = image_shape
    fig = _figure(6.5, _grid_height(grid, 6.0, 1.0))
    ax = fig.add_subplot()
    _show_grid(ax, grid)
    ax.set_xticks(_cell_centres(len(columns), width, padding), [f"{v:g}" for v in columns])
    ax.set_yticks(_cell_centres(len(rows), height, padding), [f"$z_{{{j}}}$" for j in rows])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set(
        title="Latent traversals: E[x|z], one latent varied, the others 0",
        xlabel="value of $z_j$ (prior standard deviations)",
        ylabel="latent dimension",
    )
    return fig


def latent_manifold(model: VAE, image_shape: tuple[int, int], *, dims: tuple[int, int] = (0, 1), n: int = 15) -> Figure:
    r"""E[x|z] on an n x n grid of two latents at the prior's quantiles, the others 0 (Kingma & Welling 2014).

    .. math::
        z_{i}, z_{j} \in \{\Phi^{-1}(u) : u = 0.05, \dots, 0.95\}

    Equal steps in u are equal steps of prior mass, so each cell covers as much of p(z) as any other. Look for
    a smooth morphing between plausible images with no blank or garbled region (a hole the decoder never saw).

    References:
        Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014 (fig. 4).
    """
    d = model.latent_dim
    if d < 2:
        raise ValueError(f"a manifold needs a latent of dimension >= 2, got d = {d}")
    i, j = _check_dims(dims, d, count=2)
    n = _check_int("n", n, 2)
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, n, dtype=torch.float64))  # (n,)
    with torch.inference_mode():
        reference = _latent_reference(model)
        q = quantiles.to(reference.device, reference.dtype)
        z = reference.new_zeros(n, n, d)  # (rows, columns, d): z_j falls down the rows, z_i rises along them
        z[:, :, i] = q.unsqueeze(0)
        z[:, :, j] = q.flip(0).unsqueeze(1)
        decoded = model.decode(z.reshape(-1, d)).cpu()  # (n n, D)
    grid = image_grid(decoded, image_shape=image_shape, columns=n, padding=0)
    height, width = image_shape
    fig = _figure(6.0, 6.3)
    ax = fig.add_subplot()
    _show_grid(ax, grid)
    shown = sorted({*range(0, n, max(1, n // 5)), n - 1})
    ax.set_xticks([_cell_centres(n, width, 0)[k] for k in shown], [f"{float(quantiles[k]):.2f}" for k in shown])
    ax.set_yticks(
        [_cell_centres(n, height, 0)[k] for k in shown], [f"{float(quantiles[n - 1 - k]):.2f}" for k in shown]
    )
    ax.set(
        title="Latent manifold: E[x|z] over the prior's 5%–95% quantiles",
        xlabel=f"$z_{{{i}}}$ (prior standard deviations)",
        ylabel=f"$z_{{{j}}}$ (prior standard deviations)",
    )
    return fig


# -- latent space ----------------------------------------------------------------------------------------------


def latent_scatter(model: VAE, x: Tensor, labels: Tensor | None = None, *, dims: tuple[int, int] = (0, 1)) -> Figure:
    """The encoder's means E_q[z|x] of the points of x on two latent dimensions, coloured by label.

    Look for the points filling the region of the prior N(0, I) (the circles mark 1 and 2 standard deviations)
    and for classes that separate; a dimension whose means all sit at 0 is collapsed.

    Args:
        model: the VAE.
        x: (N, D) data.
        labels: (N,) class labels (a legend when there are at most 20 integer classes, else a colour bar), or
            None for one colour.
        dims: the two latent dimensions on the x and y axes.

    Raises:
        ValueError: for a latent of dimension < 2, dims out of range, or labels that do not match x.
    """
    d = model.latent_dim
    if d < 2:
        raise ValueError(f"a scatter of two latent dimensions needs d >= 2, got d = {d}")
    i, j = _check_dims(dims, d, count=2)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (N, D) with N >= 1, got {tuple(x.shape)}")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != x.shape[0]):
        raise ValueError(f"labels must have shape ({x.shape[0]},) to match x, got {tuple(labels.shape)}")
    with torch.inference_mode():
        reference = _latent_reference(model)
        mean = model.encoder(x.to(reference.device, reference.dtype)).mean  # (N, d)
        points = _numpy(mean[:, [i, j]])  # (N, 2)
    fig = _figure(6.0, 5.0)
    ax = fig.add_subplot()
    theta = np.linspace(0.0, 2 * math.pi, 200)
    for radius in (1.0, 2.0):
        ax.plot(
            radius * np.cos(theta),
            radius * np.sin(theta),
            ":",
            color="0.5",
            linewidth=1,
            label="prior N(0, I): 1 and 2 sd" if radius == 1.0 else "_nolegend_",
        )
    size = 12 if len(points) <= 2000 else 4
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.7, color="C0", label="E_q[z|x]")
        ax.legend(fontsize="small")
    else:
        values = labels.detach().cpu()
        classes = values.unique()
        if not values.is_floating_point() and len(classes) <= 20:
            cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
            for c, label in enumerate(classes.tolist()):
                chosen = (values == label).numpy()
                ax.scatter(points[chosen, 0], points[chosen, 1], s=size, alpha=0.7, color=cmap(c), label=str(label))
            ax.legend(title="label", fontsize="small", markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
        else:
            scatter = ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.7, c=_numpy(values), cmap="viridis")
            fig.colorbar(scatter, ax=ax, label="label")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(
        title=f"Encoder means of {len(points)} points",
        xlabel=rf"$E_q[z_{{{i}}} \mid x]$ (prior standard deviations)",
        ylabel=rf"$E_q[z_{{{j}}} \mid x]$ (prior standard deviations)",
    )
    return fig


def kl_per_dim(collapse: Collapse) -> Figure:
    """Mean KL(q(z_j|x) || p(z_j)) of each latent dimension, active units in colour, inactive ones in grey.

    Look for how many dimensions carry information: an inactive unit (Burda et al. 2016's activity
    Cov_x E_q[z_j] below the threshold) has a KL near 0, its q(z_j|x) equal to the prior for every x.
    """
    kl = _numpy(collapse.kl_per_dim).reshape(-1)
    active = (_numpy(collapse.activity).reshape(-1) > collapse.threshold).tolist()
    d = len(kl)
    if d < 1 or len(active) != d:
        raise ValueError(f"kl_per_dim and activity must be (d,) with d >= 1, got {len(kl)} and {len(active)} entries")
    fig = _figure(min(9.0, max(6.0, 3.0 + 0.15 * d)), 4.0)
    ax = fig.add_subplot()
    ax.bar(np.arange(d), kl, color=[ACTIVE if a else INACTIVE for a in active], width=0.8)
    handles = [
        Patch(color=ACTIVE, label=rf"active ($\mathrm{{Cov}}_x\,E_q[z_j]$ > {collapse.threshold:g})"),
        Patch(color=INACTIVE, label="inactive"),
    ]
    ax.legend(handles=handles, fontsize="small")
    if d <= 20:
        ax.set_xticks(np.arange(d))
    ax.set(
        title=f"KL per latent dimension: {collapse.active_units} of {d} active\n"
        f"(mutual information I(x; z) = {collapse.mutual_information:.2f} nats)",
        xlabel="latent dimension j",
        ylabel=f"KL(q(z_j|x) || p(z_j)), {NATS}",
    )
    return fig


# -- the bound and the evidence --------------------------------------------------------------------------------


def gap_waterfall(gaps: Gaps | GapSummary) -> Figure:
    r"""The inference gap as a waterfall: log p̂(x), down by the approximation gap to L[q*], down by the
    amortization gap to L[q], and beside it the noise of a single-draw ELBO estimate.

    .. math::
        \log \hat p(x) - \mathcal L[q] = \underbrace{\log \hat p(x) - \mathcal L[q^*]}_{\text{approximation}}
        + \underbrace{\mathcal L[q^*] - \mathcal L[q]}_{\text{amortization}}

    Look for which gap dominates: a large amortization gap says a better encoder (or refinement) would help; a
    large approximation gap says the Gaussian family itself is too poor. Set both against the sample noise.

    References:
        Cremer, Li & Duvenaud, "Inference suboptimality in variational autoencoders", ICML 2018.
    """
    s = gaps.summary() if isinstance(gaps, Gaps) else gaps
    levels = (s.log_px, s.elbo_optimal, s.elbo_amortized)
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    half = 0.3
    ax.errorbar([0], [s.log_px], yerr=[2 * s.log_px_stderr], fmt="none", ecolor="black", capsize=4)
    ax.hlines(
        [s.log_px], -half, half, color="black", linewidth=3, label=r"$\log \hat p(x)$ (importance-sampled, ±2 se)"
    )
    ax.bar(
        [1],
        [-s.approximation],
        bottom=[s.log_px],
        width=2 * half,
        color="C1",
        label=r"approximation gap $\log \hat p(x) - \mathcal{L}[q^*]$",
    )
    ax.bar(
        [2],
        [-s.amortization],
        bottom=[s.elbo_optimal],
        width=2 * half,
        color="C2",
        label=r"amortization gap $\mathcal{L}[q^*] - \mathcal{L}[q]$",
    )
    for x0, level in ((0, s.log_px), (1, s.elbo_optimal), (2, s.elbo_amortized)):
        ax.hlines([level], x0 + half, x0 + 1 - half, color="0.4", linestyle=":", linewidth=1)  # connectors
    ax.errorbar(
        [3],
        [s.elbo_amortized],
        yerr=[s.elbo_sample_sd],
        fmt="o",
        color="C3",
        capsize=6,
        label=r"ELBO sample noise: ±1 sd of a single-draw estimate of $\mathcal{L}[q]$",
    )
    notes = (
        (0, s.log_px, f"{s.log_px:.2f}"),
        (1, s.elbo_optimal, f"−{s.approximation:.2f}" if s.approximation >= 0 else f"+{-s.approximation:.2f}"),
        (2, s.elbo_amortized, f"−{s.amortization:.2f}" if s.amortization >= 0 else f"+{-s.amortization:.2f}"),
        (3, s.elbo_amortized, f"±{s.elbo_sample_sd:.2f}"),
    )
    low = min(*levels, s.elbo_amortized - s.elbo_sample_sd, s.log_px - 2 * s.log_px_stderr)
    high = max(*levels, s.elbo_amortized + s.elbo_sample_sd, s.log_px + 2 * s.log_px_stderr)
    span = max(high - low, 1e-3)
    for x0, y0, text in notes:
        ax.annotate(text, (x0 + half, y0), xytext=(4, -2), textcoords="offset points", fontsize="small", va="top")
    ax.set_ylim(low - 0.15 * span, high + 0.35 * span)  # headroom for the legend
    ax.set_xlim(-0.6, 3.9)
    ax.set_xticks([0, 1, 2, 3], [r"$\log \hat p(x)$", r"$\mathcal{L}[q^*]$", r"$\mathcal{L}[q]$", "ELBO sample noise"])
    ax.set(title=f"Inference gap (n = {s.n}, {s.family} Gaussian q*, {s.steps} refinement steps)", ylabel=NATS)
    ax.legend(fontsize="x-small", loc="upper right")
    return fig


def iwae_curve(
    points: Sequence[CurvePoint],
    *,
    log_px: tuple[float, float] | None = None,
    ais: tuple[float, float] | None = None,
) -> Figure:
    """IWAE_k against k (log axis) with ±2 standard-error bars, and reference lines for log p̂(x).

    Look for the curve flattening: still climbing at the largest k, IWAE_k (and any log p(x) estimated with as
    many samples) is still biased low. The gap between the curve and the AIS line is bias IWAE_k has left.

    Args:
        points: the curve, e.g. from :func:`elbokit.diagnostics.iwae_curve`.
        log_px: (value, stderr) of an importance-sampled log p̂(x), drawn as a line with a ±2 stderr band.
        ais: (value, stderr) of an AIS estimate of log p(x), drawn likewise.

    Raises:
        ValueError: for no points or a k < 1.
    """
    if not points:
        raise ValueError("points must hold at least one CurvePoint, got none")
    ordered = sorted(points, key=lambda p: p.k)
    if ordered[0].k < 1:
        raise ValueError(f"every k must be >= 1, got {ordered[0].k}")
    k = np.array([p.k for p in ordered], dtype=np.float64)
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    ax.errorbar(
        k,
        [p.value for p in ordered],
        yerr=[2 * p.stderr for p in ordered],
        fmt="o-",
        color="C0",
        capsize=3,
        label=r"IWAE$_k$ (mean over points, ±2 se)",
    )
    for reference, name, colour in (
        (log_px, r"$\log \hat p(x)$, importance-sampled", "C1"),
        (ais, r"$\log \hat p(x)$, AIS", "C2"),
    ):
        if reference is not None:
            value, stderr = reference
            ax.axhline(value, color=colour, linestyle="--", label=f"{name} (±2 se band)")
            ax.axhspan(value - 2 * stderr, value + 2 * stderr, color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    if len(k) == 1:
        ax.set_xlim(k[0] / 3, k[0] * 3)
    ax.set(
        title=r"IWAE$_k$ bound against the number of samples k",
        xlabel="k (importance samples per point, log scale)",
        ylabel=NATS,
    )
    ax.legend(fontsize="small")
    return fig


def rate_distortion(points: Sequence[SweepPoint] | Sequence[RatePoint], *, log_px: float | None = None) -> Figure:
    r"""Models in the rate-distortion plane (Alemi et al. 2018), each with its line of constant ELBO.

    .. math::
        R + D = -\mathrm{ELBO}, \qquad R + D \ge -\log p(x)

    Each point is (R, D) with ±2 standard-error bars on D (R is in closed form); the dashed line through it is
    its ELBO's (slope -1): points on one line have the same bound. The dotted line R + D = -log p̂(x) is the
    lowest any guide for that model can reach. Look for the trade: a larger β moves left (less rate) and up
    (more distortion); a point at R ≈ 0 has collapsed.

    Args:
        points: SweepPoints (annotated with β; the dotted line is the best model's log p̂(x)) or RatePoints.
        log_px: log p̂(x) whose line to draw (for SweepPoints it replaces the best model's).

    Raises:
        ValueError: for no points or a mix of SweepPoints and RatePoints.

    References:
        Alemi, Poole, Fischer, Dillon, Saurous & Murphy, "Fixing a broken ELBO", ICML 2018.
    """
    items: list[SweepPoint | RatePoint] = list(points)
    if not items:
        raise ValueError("points must hold at least one SweepPoint or RatePoint, got none")
    sweep = all(isinstance(p, SweepPoint) for p in items)
    if not sweep and not all(isinstance(p, RatePoint) for p in items):
        kinds = sorted({type(p).__name__ for p in items})
        raise ValueError(f"points must be all SweepPoints or all RatePoints, got {', '.join(kinds)}")
    rates = [p.rate for p in items]
    r_max = 1.25 * max(max(rates), 0.0) + 0.5
    ends = [0.0, r_max]
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot()
    for n, p in enumerate(items):
        colour = f"C{n % 10}"
        ax.plot(
            ends,
            elbo_line(p.elbo, ends),
            "--",
            color=colour,
            linewidth=1,
            alpha=0.8,
            label="R + D = −ELBO (constant ELBO)" if n == 0 else "_nolegend_",
        )
        spread = 2 * p.distortion_stderr if math.isfinite(p.distortion_stderr) else 0.0  # inf: one point, K = 1
        ax.errorbar(
            [p.rate],
            [p.distortion],
            yerr=[spread],
            fmt="o",
            color=colour,
            capsize=3,
            label="model (R, D), ±2 se in D" if n == 0 else "_nolegend_",
        )
        if isinstance(p, SweepPoint):
            ax.annotate(
                f"β={p.beta:g}", (p.rate, p.distortion), xytext=(5, 5), textcoords="offset points", fontsize="small"
            )
    evidence: tuple[float, str] | None = None
    if log_px is not None:
        evidence = (log_px, r"R + D = $-\log \hat p(x)$")
    elif sweep:
        best = max((p for p in items if isinstance(p, SweepPoint)), key=lambda p: p.log_px)
        evidence = (best.log_px, rf"R + D = $-\log \hat p(x)$ of the best model (β={best.beta:g})")
    if evidence is not None:
        ax.plot(ends, elbo_line(evidence[0], ends), ":", color="black", linewidth=1.5, label=evidence[1])
    ax.set_xlim(0.0, r_max)
    ax.set(
        title="Rate-distortion plane (Alemi et al. 2018)",
        xlabel=rf"rate R = KL(q(z|x) || p(z)), {NATS}",
        ylabel=rf"distortion D = $-E_q \log p(x|z)$, {NATS}",
    )
    ax.legend(fontsize="small")
    return fig


def mode_seeking(result: ModeSeekingResult) -> Figure:
    """A two-mode target and the Gaussians fitted to it by the reverse KL (the ELBO's) and by the forward KL.

    Look for the reverse-KL q sitting inside one mode (mode-seeking: it avoids mass where p has none) and the
    forward-KL q spread over both and the empty valley between (mass-covering).
    """
    grid = _numpy(result.grid)
    densities = [_numpy(t) for t in (result.target_log_density, result.reverse_log_density, result.forward_log_density)]
    if any(t.shape != grid.shape for t in densities) or grid.ndim != 1:
        raise ValueError(
            f"the log densities must match the grid's shape {grid.shape}, got {[t.shape for t in densities]}"
        )
    target, reverse, forward = (np.exp(t) for t in densities)
    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot()
    ax.fill_between(grid, target, color="0.75", label="target p(z), two modes")
    r, f = result.reverse, result.forward
    ax.plot(
        grid,
        reverse,
        color="C0",
        linewidth=2,
        label=f"reverse KL(q || p), the ELBO's: mode-seeking (m = {r.loc:.2f}, s = {r.scale:.2f})",
    )
    ax.plot(
        grid,
        forward,
        color="C1",
        linewidth=2,
        linestyle="--",
        label=f"forward KL(p || q): mass-covering (m = {f.loc:.2f}, s = {f.scale:.2f})",
    )
    for n, mode in enumerate(result.modes):
        ax.axvline(mode, color="black", linestyle=":", linewidth=1, label="modes of p" if n == 0 else "_nolegend_")
    ax.set_ylim(0.0, 1.75 * float(max(target.max(), reverse.max(), forward.max())))
    ax.set(
        title="A Gaussian q fitted to two modes: reverse against forward KL", xlabel="z", ylabel="density (per unit z)"
    )
    ax.legend(fontsize="small", loc="upper left")
    return fig
