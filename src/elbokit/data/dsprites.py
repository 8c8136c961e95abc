r"""dSprites, rendered here: binary images of one sprite on a grid of five generative factors.

dSprites (Matthey et al., 2017) holds one 64x64 binary image for every combination of

=============  ======  ==============================================
factor         values
=============  ======  ==============================================
shape          3       square, ellipse, heart (codes 0, 1, 2)
scale          6       linearly spaced in [0.5, 1]
orientation    40      2 pi k / 40, k = 0..39, in [0, 2 pi)
x              32      linearly spaced in [0, 1]
y              32      linearly spaced in [0, 1]
=============  ======  ==============================================

737,280 images in all, in dSprites' order: the flat index is the mixed-radix number of the factor codes, the
shape slowest and y fastest (:func:`factor_values`, :func:`factor_index`). No package ships the images (the
original downloads), so :func:`render` draws them exactly and deterministically, vectorised over many factor
combinations: each pixel centre is moved into the sprite's frame (shifted by the position, inverse-rotated,
divided by the size) and tested against the shape's inside-test,

.. math::
    \text{square: } \max(|a|, |b|) \le 1/\sqrt 2, \qquad \text{ellipse: } a^2 + (2 b)^2 \le 1, \qquad
    \text{heart: } (X^2 + Y^2 - 1)^3 - X^2 Y^3 \le 0,\ X = h a,\ Y = h b + y_0,

where (a, b) are the pixel centre's coordinates in the sprite frame, in units of the sprite's radius, and the
heart's curve is shifted by its area centroid y_0 = 0.293481 and scaled by h = 1 + y_0 (its point, (0, -1), is
the point farthest from the centroid). Every shape thus lies in the unit disc around its centre of mass, the
square touching it with its corners, the ellipse (2:1, the long axis along x at orientation 0) with its ends and
the heart with its point. Sizes and positions, for an image of W x W pixels:

* the sprite's radius is ``scale * 0.2 * W`` pixels: at scale 1 its disc is 0.4 W across (25.6 px of 64), the
  square's side 0.28 W (18.1 px), the ellipse 25.6 x 12.8 px, the heart 20.2 px wide and 25.6 px tall;
* its centre sits at pixel coordinate ``m + x (W - 2 m)`` (and likewise for y), ``m = 0.2 W + 1``: the centres span
  [13.8, 50.2] px of 64 in steps of 1.17 px, so no sprite at any scale or orientation reaches the image's
  border row or column;
* x grows to the right and y downwards (the image's column and row, as ``imshow`` shows them); orientation turns
  the sprite counter-clockwise as displayed, about its centre of mass; at orientation 0 the heart stands upright.

Two registered datasets (binary, ``support="binary"``, with the shape code as the label):

* ``"dsprites"``: 60,000 / 5,000 / 5,000 images of the full 64x64 grid, a random subset of the 737,280 drawn
  without replacement by ``seed`` (all of them as float32 would take 12 GB). Rendering them takes seconds.
* ``"dsprites-small"``: the whole of a smaller grid, 32x32 images of shape 3 x scale 3 ([0.5, 0.75, 1]) x
  orientation 8 (multiples of 45 degrees) x x 8 x y 8 = 4,608 images, split 3,686 / 461 / 461 by ``seed``.

A run finds its factors again from the dataset name and the seed: :func:`split_indices` redraws the same flat
indices and :func:`load_factors` decodes them to (N, 5) factor codes, so nothing is saved beside the data.
Any image of the full grid is ``render_index(index)``.

>>> from elbokit.data import load
>>> from elbokit.data.dsprites import load_factors  # registers "dsprites" and "dsprites-small"
>>> ds = load("dsprites-small", seed=0)
>>> ds.train.shape, ds.image_shape, ds.support
(torch.Size([3686, 1024]), (32, 32), 'binary')
>>> load_factors("dsprites-small", seed=0).train.shape
torch.Size([3686, 5])

References:
    Matthey, Higgins, Hassabis & Lerchner, "dSprites: Disentanglement testing Sprites dataset" (2017),
    https://github.com/deepmind/dsprites-dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from elbokit.data.base import SPLITS, DataError, Dataset, permutation_split
from elbokit.data.registry import register
from elbokit.data.sprites import RADIUS_FRACTION as RADIUS_FRACTION  # the renderer, re-exported
from elbokit.data.sprites import SHAPES as SHAPES
from elbokit.data.sprites import render as render

FACTORS: tuple[str, ...] = ("shape", "scale", "orientation", "x", "y")
FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
DSPRITES_SIZES: tuple[int, int, int] = (60_000, 5_000, 5_000)  # train, validation, test of "dsprites"


Codes = Tensor  # (N, 5) int64 factor codes


class Factor(NamedTuple):
    """One generative factor: its name and the value of each of its codes (shape: 0, 1, 2)."""

    name: str
    values: tuple[float, ...]

    @property
    def size(self) -> int:
        """The number of codes."""
        return len(self.values)


class Splits(NamedTuple):
    """A tensor per split: flat grid indices (N,) or factor codes (N, 5), by split."""

    train: Tensor
    validation: Tensor
    test: Tensor

    def split(self, name: str) -> Tensor:
        """The tensor of split ``name``: ``"train"``, ``"validation"`` or ``"test"``."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        x: Tensor = getattr(self, name)
        return x


def _factors(sizes: Sequence[int]) -> tuple[Factor, ...]:
    """The five factors with ``sizes`` codes each, spaced as dSprites spaces them."""
    n_shape, n_scale, n_orientation, n_x, n_y = sizes
    return (
        Factor("shape", tuple(float(k) for k in range(n_shape))),
        Factor("scale", tuple(0.5 + 0.5 * k / (n_scale - 1) for k in range(n_scale))),
        Factor("orientation", tuple(2.0 * math.pi * k / n_orientation for k in range(n_orientation))),
        Factor("x", tuple(k / (n_x - 1) for k in range(n_x))),
        Factor("y", tuple(k / (n_y - 1) for k in range(n_y))),
    )


@dataclass(frozen=True)
class SpriteGrid:
    """A full grid of factor combinations and the image size they are rendered at.

    Attributes:
        name: the dataset drawn from it.
        image_size: W, for W x W images.
        factors: the five :class:`Factor` s, in :data:`FACTORS` order.
    """

    name: str
    image_size: int
    factors: tuple[Factor, ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of codes of each factor."""
        return tuple(factor.size for factor in self.factors)

    def __len__(self) -> int:
        return math.prod(self.sizes)

    def codes(self, index: Tensor) -> Codes:
        r"""Factor codes of flat indices, the mixed-radix digits, shape slowest and y fastest:

        .. math::
            i = (((c_\text{shape} n_\text{scale} + c_\text{scale}) n_\text{orientation} + c_\text{orientation})
            n_x + c_x) n_y + c_y.

        Args:
            index: (N,) integers in [0, len(grid)).

        Returns:
            (N, 5) int64 codes.
        """
        index = self._check_index(index)
        codes = torch.empty(index.shape[0], len(FACTORS), dtype=torch.int64)
        rest = index
        for j in reversed(range(len(FACTORS))):
            codes[:, j] = rest % self.sizes[j]
            rest = rest // self.sizes[j]
        return codes

    def index(self, codes: Tensor) -> Tensor:
        """Flat indices of factor codes, the inverse of :meth:`codes`.

        Args:
            codes: (N, 5) integers, column j in [0, sizes[j]).

        Returns:
            (N,) int64 indices.
        """
        codes = torch.as_tensor(codes)
        if codes.dim() != 2 or codes.shape[1] != len(FACTORS) or codes.is_floating_point() or codes.is_complex():
            raise DataError(f"factor codes must be an (N, {len(FACTORS)}) integer tensor, got {tuple(codes.shape)}")
        codes = codes.to(torch.int64)
        sizes = torch.tensor(self.sizes, dtype=torch.int64)
        if bool(((codes < 0) | (codes >= sizes)).any()):
            raise DataError(f"factor codes must lie in [0, {self.sizes}) column by column")
        index = torch.zeros(codes.shape[0], dtype=torch.int64)
        for j, size in enumerate(self.sizes):
            index = index * size + codes[:, j]
        return index

    def values(self, codes: Tensor) -> Tensor:
        """The factor values of factor codes: shape code, scale, orientation (radians), x, y.

        Args:
            codes: (N, 5) integer codes.

        Returns:
            (N, 5) float64 values.
        """
        codes = self.codes(self.index(codes))  # checks them
        columns = [torch.tensor(f.values, dtype=torch.float64)[codes[:, j]] for j, f in enumerate(self.factors)]
        return torch.stack(columns, dim=1)

    def images(self, index: Tensor) -> Tensor:
        """The images of flat indices of this grid.

        Args:
            index: (N,) integers in [0, len(grid)).

        Returns:
            (N, W, W) float32 in {0, 1}.
        """
        v = self.values(self.codes(index))  # (N, 5)
        return render(v[:, 0].to(torch.int64), v[:, 1], v[:, 2], v[:, 3], v[:, 4], image_size=self.image_size)

    def _check_index(self, index: Tensor) -> Tensor:
        index = torch.as_tensor(index)
        if index.dim() != 1 or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise DataError(f"grid indices must be a 1-d integer tensor, got {tuple(index.shape)} {index.dtype}")
        index = index.to(torch.int64)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise DataError(f"grid indices must lie in [0, {len(self)}), got [{int(index.min())}, {int(index.max())}]")
        return index


DSPRITES = SpriteGrid("dsprites", 64, _factors(FACTOR_SIZES))
DSPRITES_SMALL = SpriteGrid("dsprites-small", 32, _factors((3, 3, 8, 8, 8)))
DSPRITES_FACTORS: tuple[Factor, ...] = DSPRITES.factors  # the full grid's factors and their values
_GRIDS = {grid.name: grid for grid in (DSPRITES, DSPRITES_SMALL)}
FACTOR_DATASETS: tuple[str, ...] = tuple(_GRIDS)  # the registered datasets with known generative factors


def sprite_grid(name: str) -> SpriteGrid:
    """The grid of ``"dsprites"`` or ``"dsprites-small"``."""
    grid = _GRIDS.get(name)
    if grid is None:
        raise DataError(f"unknown sprite dataset {name!r}: expected one of {', '.join(_GRIDS)}")
    return grid


def factor_values(index: Tensor) -> Codes:
    """The (N, 5) int64 factor codes of (N,) flat indices of the full dSprites grid (:meth:`SpriteGrid.codes`)."""
    return DSPRITES.codes(index)


def factor_index(codes: Tensor) -> Tensor:
    """The (N,) int64 flat indices of (N, 5) factor codes of the full dSprites grid, the inverse of
    :func:`factor_values`."""
    return DSPRITES.index(codes)


def render_index(index: Tensor) -> Tensor:
    """The (N, 64, 64) float32 images of (N,) flat indices of the full dSprites grid."""
    return DSPRITES.images(index)


def split_indices(name: str, *, seed: int = 0) -> Splits:
    """The flat grid indices of each split of ``load(name, seed=seed)``.

    ``"dsprites"``: the first 60,000 / next 5,000 / next 5,000 of ``torch.randperm(737280)`` drawn from
    ``torch.Generator().manual_seed(seed)``. ``"dsprites-small"``: the whole grid, split ~80/10/10 by
    :func:`~elbokit.data.base.permutation_split` ``(4608, seed=seed)``.

    Args:
        name: ``"dsprites"`` or ``"dsprites-small"``.
        seed: the loader's seed.

    Returns:
        :class:`Splits` of (N,) int64 indices.
    """
    grid = sprite_grid(name)
    if grid is DSPRITES:
        n_train, n_val, n_test = DSPRITES_SIZES
        perm = torch.randperm(len(grid), generator=torch.Generator().manual_seed(seed))
        return Splits(perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val : n_train + n_val + n_test])
    return Splits(*permutation_split(len(grid), seed=seed))


def load_factors(name: str, *, seed: int = 0) -> Splits:
    """The factor codes of every image of ``load(name, seed=seed)``, recomputed from the name and the seed.

    Args:
        name: ``"dsprites"`` or ``"dsprites-small"``.
        seed: the loader's seed.

    Returns:
        :class:`Splits` of (N, 5) int64 codes, columns in :data:`FACTORS` order; the values they stand for are
        ``sprite_grid(name).values(codes)``.
    """
    grid = sprite_grid(name)
    return Splits(*(grid.codes(index) for index in split_indices(name, seed=seed)))


def _load(name: str, seed: int) -> Dataset:
    grid = sprite_grid(name)
    indices = split_indices(name, seed=seed)
    images = [grid.images(index).reshape(index.shape[0], -1) for index in indices]  # (N, W * W) each
    labels = [grid.codes(index)[:, 0].clone() for index in indices]  # the shape code
    n = sum(index.shape[0] for index in indices)
    combinations = " x ".join(f"{factor.name} {factor.size}" for factor in grid.factors)
    return Dataset(
        name=name,
        train=images[0],
        validation=images[1],
        test=images[2],
        train_labels=labels[0],
        validation_labels=labels[1],
        test_labels=labels[2],
        image_shape=(grid.image_size, grid.image_size),
        binarize="none",
        support="binary",
        source=(
            f"elbokit.data.dsprites: {n} of the {len(grid)} combinations of {combinations}, rendered at "
            f"{grid.image_size}x{grid.image_size}, drawn by seed={seed}; labels = shape code"
        ),
    )


@register("dsprites")
def load_dsprites(*, seed: int = 0) -> Dataset:
    """60,000 / 5,000 / 5,000 binary 64x64 dSprites images drawn by ``seed`` from the 737,280; label = shape.

    Factors of every image: :func:`load_factors` ``("dsprites", seed=seed)``.
    """
    return _load("dsprites", seed)


@register("dsprites-small")
def load_dsprites_small(*, seed: int = 0) -> Dataset:
    """All 4,608 binary 32x32 images of the small grid (shape 3, scale 3, orientation 8, x 8, y 8), split
    3,686 / 461 / 461 by ``seed``; label = shape.

    Factors of every image: :func:`load_factors` ``("dsprites-small", seed=seed)``.
    """
    return _load("dsprites-small", seed)


def known_factors(name: str, split: str, *, seed: int = 0) -> tuple[Tensor, tuple[str, ...]] | None:
    """The (N, 5) factor codes of split ``split`` of dataset ``name`` and the factors' names, or ``None`` for a
    dataset without known generative factors (anything but the sprite datasets)."""
    if name not in _GRIDS:
        return None
    return load_factors(name, seed=seed).split(split), tuple(factor.name for factor in _GRIDS[name].factors)
