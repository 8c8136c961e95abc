"""Figures of what the model draws and of its latent space: samples, reconstructions, traversals, the
decoded manifold and the encoded data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import Tensor

from elbokit.models.vae import VAE
from elbokit.report.images import image_grid
from elbokit.report.plots._base import (
    TRAVERSAL_VALUES,
    _cell_centres,
    _check_dims,
    _check_int,
    _figure,
    _grid_height,
    _latent_reference,
    _numpy,
    _show_grid,
)

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
    labels: Sequence[str] | None = None,
) -> Figure:
    """E[x|z] as one latent z_j moves through ``values`` with every other latent at 0: one row per z_j.

    Look for rows that change smoothly and in one interpretable way (a disentangled dimension) and for rows
    that do not change at all: those dimensions are inactive (compare :func:`kl_per_dim`).

    Args:
        model: the VAE.
        image_shape: (H, W) with H W = D.
        dims: the latent dimensions, one row each (default: the first min(8, d)).
        values: the values each takes, one column each (default -3 to 3 in steps of 0.75).
        labels: a name for each row (default ``z_j``), e.g. the generative factor the latent carries; with labels
            a latent may have more than one row (two factors it carries).
    """
    d = model.latent_dim
    rows = _check_dims(list(range(min(8, d))) if dims is None else dims, d, distinct=labels is None)
    columns = [float(v) for v in values]
    if not columns or not all(math.isfinite(v) for v in columns):
        raise ValueError(f"values must be at least one finite number, got {tuple(values)}")
    names = [f"$z_{{{j}}}$" for j in rows] if labels is None else [str(name) for name in labels]
    if len(names) != len(rows):
        raise ValueError(f"labels must name each of the {len(rows)} rows, got {len(names)}")
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
    ax.set_yticks(_cell_centres(len(rows), height, padding), names)
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


def latent_scatter(model: VAE, x: Tensor, labels: Tensor | None = None, *, dims: tuple[int, int] = (0, 1),
                   colour_label: str = "label") -> Figure:  # fmt: skip
    """The encoder's means E_q[z|x] of the points of x on two latent dimensions, coloured by label (or by any
    value per point, such as its log p(x)).

    Look for the points filling the region of the prior N(0, I) (the circles mark 1 and 2 standard deviations)
    and for classes that separate; a dimension whose means all sit at 0 is collapsed.

    Args:
        model: the VAE.
        x: (N, D) data.
        labels: (N,) class labels (a legend when there are at most 20 integer classes, else a colour bar), or
            None for one colour.
        dims: the two latent dimensions on the x and y axes.
        colour_label: what ``labels`` are, for the legend's title or the colour bar.

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
        mean = model.encode(x.to(reference.device, reference.dtype))  # (N, d): E_q z (a flow's: see VAE.encode)
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
            ax.legend(
                title=colour_label, fontsize="small", markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5)
            )
        else:
            scatter = ax.scatter(points[:, 0], points[:, 1], s=size, alpha=0.7, c=_numpy(values), cmap="viridis")
            fig.colorbar(scatter, ax=ax, label=colour_label)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(
        title=f"Encoder means of {len(points)} points",
        xlabel=rf"$E_q[z_{{{i}}} \mid x]$ (prior standard deviations)",
        ylabel=rf"$E_q[z_{{{j}}} \mid x]$ (prior standard deviations)",
    )
    return fig
