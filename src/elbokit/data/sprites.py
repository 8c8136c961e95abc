"""Sprites drawn exactly: :func:`render` puts one square, ellipse or heart of a given scale, orientation and position
on a W x W binary image, vectorised over many sprites (the renderer of :mod:`elbokit.data.dsprites`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from elbokit.data.base import DataError

SHAPES: tuple[str, ...] = ("square", "ellipse", "heart")
RADIUS_FRACTION = 0.2  # the sprite's radius at scale 1, as a fraction of the image width
_HEART_CENTROID_Y = 0.293481  # area centroid of (x^2 + y^2 - 1)^3 <= x^2 y^3, computed numerically
_HEART_SCALE = 1.0 + _HEART_CENTROID_Y  # distance from that centroid to the heart's point (0, -1)
_CHUNK = 4096  # images per vectorised step: bounds the float64 temporaries to a few tens of MB


def render(
    shape: Tensor | Sequence[int] | int,
    scale: Tensor | Sequence[float] | float,
    orientation: Tensor | Sequence[float] | float,
    x: Tensor | Sequence[float] | float,
    y: Tensor | Sequence[float] | float,
    *,
    image_size: int = 64,
) -> Tensor:
    r"""Binary images of sprites, one per factor combination (the arguments broadcast to N).

    A pixel with centre p (pixel units, rows downwards) is on when its sprite-frame coordinates

    .. math::
        (a, b) = R(-\theta) \, \frac{(p_\text{col} - c_x,\ c_y - p_\text{row})}{0.2\, W s}, \qquad
        c = m + (x, y) (W - 2 m),\ m = 0.2 W + 1,

    pass the shape's inside-test (see the module docstring). Only a window around each sprite is evaluated.

    Args:
        shape: (N,) codes 0 (square), 1 (ellipse), 2 (heart).
        scale: (N,) in (0, 1].
        orientation: (N,) radians, counter-clockwise as displayed.
        x: (N,) horizontal position in [0, 1], left to right.
        y: (N,) vertical position in [0, 1], top to bottom.
        image_size: W, for W x W images, at least 8.

    Returns:
        (N, W, W) float32 in {0, 1}.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"image_size must be an int >= 8, got {image_size!r}")
    shape_t = torch.as_tensor(shape)
    if shape_t.is_floating_point() or shape_t.is_complex() or shape_t.dtype == torch.bool:
        raise DataError(f"shape must hold integer codes 0, 1, 2, got dtype {shape_t.dtype}")
    f64 = torch.float64
    try:
        shape_t, scale_t, theta, x_t, y_t = torch.broadcast_tensors(
            shape_t.to(torch.int64).reshape(-1),
            *(torch.as_tensor(v, dtype=f64).reshape(-1) for v in (scale, orientation, x, y)),
        )
    except RuntimeError as err:
        raise DataError(f"render's factor arguments do not broadcast to one length: {err}") from err
    if bool(((shape_t < 0) | (shape_t >= len(SHAPES))).any()):
        raise DataError(f"shape codes must be 0, 1 or 2 ({', '.join(SHAPES)})")
    if not bool(((scale_t > 0) & (scale_t <= 1)).all()):
        raise DataError("scale must lie in (0, 1]")
    if not bool(torch.isfinite(theta).all()):
        raise DataError("orientation must be finite")
    if not bool(((x_t >= 0) & (x_t <= 1) & (y_t >= 0) & (y_t <= 1)).all()):
        raise DataError("x and y must lie in [0, 1]")
    n, w = shape_t.shape[0], image_size
    radius = RADIUS_FRACTION * w  # pixels, at scale 1
    margin = radius + 1.0
    cx = margin + x_t * (w - 2 * margin)  # (N,) pixels
    cy = margin + y_t * (w - 2 * margin)
    out = torch.zeros(n, w, w, dtype=torch.float32)
    for code in range(len(SHAPES)):
        members = torch.nonzero(shape_t == code).reshape(-1)
        for start in range(0, members.shape[0], _CHUNK):
            i = members[start : start + _CHUNK]
            _draw(out, i, code, scale_t[i] * radius, theta[i], cx[i], cy[i], radius)
    return out


def _draw(out: Tensor, i: Tensor, code: int, r: Tensor, theta: Tensor, cx: Tensor, cy: Tensor, radius: float) -> None:
    """Draw sprites ``i`` of one shape into ``out`` (N, W, W), evaluating a K x K window around each centre.

    Every pixel centre within ``radius`` of (cx, cy) lies in the window: its origin is floor(c - radius) and
    K = ceil(2 radius) + 1, and pixel centres are half-integers.
    """
    w = out.shape[-1]
    k = math.ceil(2 * radius) + 1
    steps = torch.arange(k, dtype=torch.int64)
    col0 = torch.floor(cx - radius).to(torch.int64).clamp(0, w - k)  # (B,)
    row0 = torch.floor(cy - radius).to(torch.int64).clamp(0, w - k)
    cols = col0[:, None] + steps  # (B, K)
    rows = row0[:, None] + steps
    u = (cols.to(torch.float64) + 0.5 - cx[:, None]) / r[:, None]  # (B, K) in sprite radii, rightwards
    v = (cy[:, None] - rows.to(torch.float64) - 0.5) / r[:, None]  # (B, K) upwards
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    a = cos * u[:, None, :] + sin * v[:, :, None]  # (B, K, K): rotated back by -theta
    b = cos * v[:, :, None] - sin * u[:, None, :]
    inside = _INSIDE[code](a, b)  # (B, K, K) bool
    out[i[:, None, None], rows[:, :, None], cols[:, None, :]] = inside.to(torch.float32)


def _inside_square(a: Tensor, b: Tensor) -> Tensor:
    """The square with corners on the unit circle, sides along the axes."""
    return torch.maximum(a.abs(), b.abs()) <= 1.0 / math.sqrt(2.0)


def _inside_ellipse(a: Tensor, b: Tensor) -> Tensor:
    """The 2:1 ellipse with semi-axes 1 (along a) and 1/2."""
    return a * a + 4.0 * b * b <= 1.0


def _inside_heart(a: Tensor, b: Tensor) -> Tensor:
    """The heart (X^2 + Y^2 - 1)^3 <= X^2 Y^3, centred on its area centroid, its point on the unit circle."""
    hx = _HEART_SCALE * a
    hy = _HEART_SCALE * b + _HEART_CENTROID_Y
    x2 = hx * hx
    return (x2 + hy * hy - 1.0) ** 3 <= x2 * hy**3


_INSIDE = (_inside_square, _inside_ellipse, _inside_heart)  # by shape code
