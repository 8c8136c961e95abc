"""The rendered dSprites grid: factor order, the renderer's geometry, and the registered datasets.

Expected values are computed independently: the grid order with ``numpy.unravel_index``, the images by a plain
numpy evaluation of the documented inside-tests on the whole pixel grid (the renderer evaluates a window).
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

import elbokit.data.dsprites as dsprites
from elbokit.data import DataError, Dataset, load
from elbokit.data.dsprites import (
    DSPRITES,
    DSPRITES_FACTORS,
    DSPRITES_SIZES,
    DSPRITES_SMALL,
    FACTOR_SIZES,
    FACTORS,
    SpriteGrid,
    factor_index,
    factor_values,
    load_factors,
    render,
    render_index,
    split_indices,
    sprite_grid,
)

SQUARE, ELLIPSE, HEART = 0, 1, 2


def _numpy_render(values: np.ndarray, image_size: int) -> np.ndarray:
    """(N, W, W) images of (N, 5) factor values, every pixel of the grid tested (the module docstring's recipe)."""
    shape, scale, theta, x, y = values.T
    w = image_size
    radius = 0.2 * w
    margin = radius + 1.0
    cx = margin + x * (w - 2 * margin)
    cy = margin + y * (w - 2 * margin)
    centres = np.arange(w) + 0.5
    r = (scale * radius)[:, None]
    u = (centres[None, :] - cx[:, None]) / r  # (N, W) rightwards
    v = (cy[:, None] - centres[None, :]) / r  # (N, W) upwards
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    a = cos * u[:, None, :] + sin * v[:, :, None]
    b = cos * v[:, :, None] - sin * u[:, None, :]
    square = np.maximum(np.abs(a), np.abs(b)) <= 1 / math.sqrt(2)
    ellipse = a * a + 4 * b * b <= 1
    hx, hy = 1.293481 * a, 1.293481 * b + 0.293481
    heart = (hx * hx + hy * hy - 1) ** 3 <= hx * hx * hy**3
    kind = shape.astype(int)[:, None, None]
    return np.where(kind == 0, square, np.where(kind == 1, ellipse, heart)).astype(np.float32)


def _one(shape: int, scale: float, theta: float, x: float = 0.5, y: float = 0.5, w: int = 64) -> torch.Tensor:
    return render([shape], [scale], [theta], [x], [y], image_size=w)[0]


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    """(column, row) centre of mass, in pixel coordinates (pixel j spans [j, j + 1])."""
    rows, cols = torch.nonzero(image, as_tuple=True)
    return float(cols.double().mean()) + 0.5, float(rows.double().mean()) + 0.5


# --- the factor grid -------------------------------------------------------------------------------------------------


def test_grid_has_every_combination_in_dsprites_order() -> None:
    assert FACTORS == ("shape", "scale", "orientation", "x", "y")
    assert FACTOR_SIZES == (3, 6, 40, 32, 32)
    assert len(DSPRITES) == 737_280 == math.prod(FACTOR_SIZES)
    index = torch.arange(len(DSPRITES))
    codes = factor_values(index)
    expected = np.stack(np.unravel_index(index.numpy(), FACTOR_SIZES), axis=1)  # C order: y fastest
    assert codes.dtype == torch.int64 and codes.shape == (737_280, 5)
    np.testing.assert_array_equal(codes.numpy(), expected)
    assert codes[0].tolist() == [0, 0, 0, 0, 0] and codes[-1].tolist() == [2, 5, 39, 31, 31]
    assert codes[1].tolist() == [0, 0, 0, 0, 1] and codes[32].tolist() == [0, 0, 0, 1, 0]  # y fastest


def test_factor_index_inverts_factor_values() -> None:
    index = torch.randint(0, len(DSPRITES), (5000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(factor_index(factor_values(index)), index)
    small = torch.randint(0, len(DSPRITES_SMALL), (500,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(DSPRITES_SMALL.index(DSPRITES_SMALL.codes(small)), small)


def test_factor_values_as_dsprites_spaces_them() -> None:
    values = {f.name: np.array(f.values) for f in DSPRITES_FACTORS}
    np.testing.assert_array_equal(values["shape"], [0, 1, 2])
    np.testing.assert_allclose(values["scale"], np.linspace(0.5, 1, 6), atol=1e-15)
    np.testing.assert_allclose(values["orientation"], 2 * np.pi * np.arange(40) / 40, atol=1e-15)
    assert values["orientation"].max() < 2 * np.pi
    np.testing.assert_allclose(values["x"], np.linspace(0, 1, 32), atol=1e-15)
    np.testing.assert_allclose(values["y"], np.linspace(0, 1, 32), atol=1e-15)
    assert DSPRITES_SMALL.sizes == (3, 3, 8, 8, 8) and DSPRITES_SMALL.image_size == 32
    codes = torch.tensor([[2, 5, 10, 31, 0]])
    np.testing.assert_allclose(DSPRITES.values(codes).numpy(), [[2.0, 1.0, np.pi / 2, 1.0, 0.0]], atol=1e-15)


# --- the renderer ----------------------------------------------------------------------------------------------------


def test_render_matches_a_whole_grid_evaluation() -> None:
    for grid, n in ((DSPRITES, 400), (DSPRITES_SMALL, 200)):
        index = torch.randint(0, len(grid), (n,), generator=torch.Generator().manual_seed(2))
        images = grid.images(index)
        expected = _numpy_render(grid.values(grid.codes(index)).numpy(), grid.image_size)
        assert images.shape == (n, grid.image_size, grid.image_size) and images.dtype == torch.float32
        assert int((images.numpy() != expected).sum()) <= 2  # a pixel centre on a boundary may round either way


def test_render_is_deterministic_and_binary() -> None:
    index = torch.randint(0, len(DSPRITES), (300,), generator=torch.Generator().manual_seed(3))
    first, second = render_index(index), render_index(index)
    assert torch.equal(first, second)
    assert bool(((first == 0) | (first == 1)).all())
    assert bool((first.sum(dim=(1, 2)) > 0).all())


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_pixel_mass_grows_with_scale(shape: int) -> None:
    scales = torch.tensor(DSPRITES_FACTORS[1].values)
    # the shape's area in units of its radius squared: 2 (square), pi / 2 (ellipse), the heart's / (1 + y0)^2
    unit_area = (2.0, math.pi / 2, 3.661973 / 1.293481**2)[shape]
    area = unit_area * (scales * 0.2 * 64) ** 2
    masses = []
    for theta, x, y in ((0.0, 0.5, 0.5), (0.3, 0.2, 0.7), (math.pi / 4, 0.9, 0.1), (2.0, 0.4, 0.6)):
        mass = render([shape] * 6, scales, [theta] * 6, [x] * 6, [y] * 6).sum(dim=(1, 2)).double()
        assert bool((mass.diff() >= 0).all()), mass  # an axis-aligned square may gain no pixel centre in a step
        torch.testing.assert_close(mass, area, rtol=0.25, atol=0.0)  # pixel edges at scale 0.5
        masses.append(mass)
    assert bool((torch.stack(masses).mean(dim=0).diff() > 0).all())


@pytest.mark.parametrize("shape", [SQUARE, ELLIPSE, HEART])
def test_centroid_follows_x_and_y(shape: int) -> None:
    positions = DSPRITES_FACTORS[3].values  # 32 values in [0, 1]
    n, w = len(positions), 64
    margin = 0.2 * w + 1
    nominal = [margin + p * (w - 2 * margin) for p in positions]
    for theta in (0.0, 1.0):
        along_x = render([shape] * n, [1.0] * n, [theta] * n, positions, [0.3] * n)
        along_y = render([shape] * n, [0.5] * n, [theta] * n, [0.7] * n, positions)
        cols = [_centroid(image)[0] for image in along_x]
        rows = [_centroid(image)[1] for image in along_y]
        assert all(b > a for a, b in pairwise(cols)) and all(b > a for a, b in pairwise(rows))
        assert max(abs(c - e) for c, e in zip(cols, nominal, strict=True)) < 1.0
        assert max(abs(r - e) for r, e in zip(rows, nominal, strict=True)) < 1.0
        # the other coordinate stays put
        assert max(_centroid(image)[1] for image in along_x) - min(_centroid(image)[1] for image in along_x) < 0.5


def test_rotation_symmetries() -> None:
    # At x = y = 0.5 the centre is the image centre, so torch.rot90 turns the image about the sprite's centre.
    for scale in (0.5, 0.8, 1.0):
        square, square_90 = _one(SQUARE, scale, 0.0), _one(SQUARE, scale, math.pi / 2)
        assert int((square != square_90).sum()) <= 4
        assert int((square_90 != torch.rot90(square, 1)).sum()) <= 4  # counter-clockwise as displayed
        ellipse, ellipse_90 = _one(ELLIPSE, scale, 0.0), _one(ELLIPSE, scale, math.pi / 2)
        assert int((ellipse != ellipse_90).sum()) > 0.5 * ellipse.sum()
        assert int((ellipse_90 != torch.rot90(ellipse, 1)).sum()) <= 4
        heart, heart_180 = _one(HEART, scale, 0.0), _one(HEART, scale, math.pi)
        assert int((heart != torch.rot90(heart, 2)).sum()) > 0.2 * heart.sum()  # not symmetric under 180 degrees
        assert int((heart_180 != torch.rot90(heart, 2)).sum()) <= 4
        assert torch.equal(heart, torch.flip(heart, dims=(1,)))  # but mirror-symmetric, upright
        rows = torch.nonzero(heart.sum(dim=1)).reshape(-1)
        assert heart[rows[0]].sum() > heart[rows[-1]].sum()  # lobes on top, the point at the bottom
    # a square turned off its axes is a different image
    assert int((_one(SQUARE, 1.0, 0.0) != _one(SQUARE, 1.0, math.pi / 4)).sum()) > 20


@pytest.mark.parametrize("grid", [DSPRITES, DSPRITES_SMALL], ids=lambda g: g.name)
def test_no_sprite_touches_the_border(grid: SpriteGrid) -> None:
    sizes = grid.sizes
    edges = [0, sizes[3] - 1]
    codes = torch.tensor(
        [
            [s, k, o, x, y]
            for s in range(sizes[0])
            for k in range(sizes[1])
            for o in range(sizes[2])
            for x in edges
            for y in range(0, sizes[4], 5 if grid is DSPRITES else 1)
        ]
    )
    images = grid.images(grid.index(codes))
    images_t = grid.images(grid.index(codes[:, [0, 1, 2, 4, 3]]))  # x and y swapped: top and bottom edges
    for batch in (images, images_t):
        assert bool((batch.sum(dim=(1, 2)) > 0).all())
        for border in (batch[:, 0, :], batch[:, -1, :], batch[:, :, 0], batch[:, :, -1]):
            assert float(border.sum()) == 0.0


def test_render_refuses_bad_factors() -> None:
    cases = [
        dict(shape=[3], scale=[1.0], orientation=[0.0], x=[0.5], y=[0.5]),
        dict(shape=[0.0], scale=[1.0], orientation=[0.0], x=[0.5], y=[0.5]),
        dict(shape=[0], scale=[0.0], orientation=[0.0], x=[0.5], y=[0.5]),
        dict(shape=[0], scale=[1.0], orientation=[math.inf], x=[0.5], y=[0.5]),
        dict(shape=[0], scale=[1.0], orientation=[0.0], x=[1.5], y=[0.5]),
        dict(shape=[0, 1], scale=[1.0, 1.0, 1.0], orientation=[0.0], x=[0.5], y=[0.5]),
    ]
    for case in cases:
        with pytest.raises(DataError) as info:
            render(**case)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="image_size"):
        render([0], [1.0], [0.0], [0.5], [0.5], image_size=4)
    with pytest.raises(DataError, match="737280"):
        factor_values(torch.tensor([737_280]))
    with pytest.raises(DataError, match="1-d integer"):
        factor_values(torch.tensor([0.5]))
    with pytest.raises(DataError, match="column by column"):
        factor_index(torch.tensor([[0, 6, 0, 0, 0]]))
    with pytest.raises(DataError, match="unknown sprite dataset"):
        sprite_grid("mnist")
    with pytest.raises(DataError, match="unknown split"):
        load_factors("dsprites-small").split("training")


# --- the registered datasets -----------------------------------------------------------------------------------------


def _check_against_factors(ds: Dataset, name: str, seed: int, rows: slice) -> None:
    grid = sprite_grid(name)
    factors = load_factors(name, seed=seed)
    for split in ("train", "validation", "test"):
        codes = factors.split(split)
        assert codes.dtype == torch.int64 and codes.shape == (ds.split(split).shape[0], 5)
        labels = ds.labels(split)
        assert labels is not None and torch.equal(labels, codes[:, 0])
        images = grid.images(grid.index(codes[rows])).reshape(-1, ds.data_dim)
        assert torch.equal(images, ds.split(split)[rows])


def test_dsprites_small() -> None:
    ds = load("dsprites-small", seed=0)
    assert ds.name == "dsprites-small" and "seed=0" in ds.source
    assert ds.describe()["sizes"] == {"train": 3686, "validation": 461, "test": 461}
    assert ds.image_shape == (32, 32) and ds.data_dim == 1024
    assert ds.support == "binary" and ds.binarize == "none"
    for split in ("train", "validation", "test"):
        x = ds.split(split)
        assert bool(((x == 0) | (x == 1)).all())
    _check_against_factors(ds, "dsprites-small", 0, slice(None))
    index = torch.cat(list(split_indices("dsprites-small", seed=0)))
    assert torch.equal(index.sort().values, torch.arange(len(DSPRITES_SMALL)))  # every combination once
    again, other = load("dsprites-small", seed=0), load("dsprites-small", seed=1)
    assert torch.equal(again.train, ds.train) and torch.equal(again.test_labels, ds.test_labels)
    assert not torch.equal(other.train, ds.train)
    with pytest.raises(DataError, match="takes no binarize"):
        load("dsprites-small", binarize="fixed")


def test_dsprites_indices_are_seeded() -> None:
    first, again, other = (split_indices("dsprites", seed=s) for s in (0, 0, 7))
    assert tuple(index.shape[0] for index in first) == DSPRITES_SIZES == (60_000, 5_000, 5_000)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first.train, other.train)
    index = torch.cat(list(first))
    assert index.unique().numel() == sum(DSPRITES_SIZES)  # drawn without replacement
    assert int(index.min()) >= 0 and int(index.max()) < len(DSPRITES)
    assert torch.equal(load_factors("dsprites", seed=0).test, factor_values(first.test))


def test_dsprites() -> None:
    ds = dsprites.load_dsprites(seed=3)  # the one full load of the suite (~5 s, 1.1 GB)
    assert ds.name == "dsprites" and "seed=3" in ds.source
    assert ds.describe()["sizes"] == {"train": 60_000, "validation": 5_000, "test": 5_000}
    assert ds.image_shape == (64, 64) and ds.data_dim == 4096
    assert ds.support == "binary" and ds.binarize == "none"
    head = ds.train[:2000]
    assert bool(((head == 0) | (head == 1)).all())
    _check_against_factors(ds, "dsprites", 3, slice(0, 50))
    labels = ds.train_labels
    assert labels is not None and torch.equal(labels.bincount(minlength=3).sign(), torch.ones(3, dtype=torch.int64))
