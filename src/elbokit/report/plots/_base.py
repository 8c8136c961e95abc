"""Helpers and constants the figure modules share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import NDArray
from torch import Tensor

from elbokit.models.vae import VAE

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


def _check_dims(dims: Sequence[int], latent_dim: int, *, count: int | None = None, distinct: bool = True) -> list[int]:
    dims = list(dims)
    if count is not None and len(dims) != count:
        raise ValueError(f"dims must name {count} latent dimensions, got {tuple(dims)}")
    if not dims:
        raise ValueError("dims must name at least one latent dimension, got none")
    for j in dims:
        if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < latent_dim:
            raise ValueError(f"dims must be integers in [0, {latent_dim}) for a {latent_dim}-d latent, got {j!r}")
    if distinct and len(set(dims)) != len(dims):
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
