r"""Greyscale image grids and 8-bit PNG files, with the standard library only (no matplotlib, no Pillow).

A PNG (ISO/IEC 15948) is the 8-byte signature and a sequence of chunks, each
``length (4 bytes, big-endian) | type (4) | data | CRC-32 of type + data (4)``: here IHDR (width, height, bit
depth 8, colour type 0 = greyscale), one IDAT holding the zlib-compressed scanlines, each prefixed by filter
byte 0 (none), and IEND.
"""

from __future__ import annotations

import math
import os
import struct
import zlib

import torch
from torch import Tensor

from elbokit._io import atomic_write

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_finite(name: str, values: Tensor) -> None:
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise ValueError(f"{name} must be finite, got {int((~finite).sum())} NaN or infinite value(s)")


def image_grid(
    images: Tensor,
    *,
    columns: int | None = None,
    padding: int = 1,
    image_shape: tuple[int, int] | None = None,
    pad_value: float = 1.0,
) -> Tensor:
    """Tile N images into one, row by row: (N, H, W) -> (H', W').

    With R = ceil(N / C) rows of C columns, H' = R H + (R + 1) padding and W' = C W + (C + 1) padding: a border
    of ``padding`` pixels surrounds every image. Cells past the N-th are filled with ``pad_value``.

    Args:
        images: (N, H, W), or (N, H W) with ``image_shape=(H, W)``; values in [0, 1] (not clipped here).
        columns: C; default ceil(sqrt(N)), a near-square grid.
        padding: pixels between images and around the border, >= 0.
        image_shape: (H, W) of flat images.
        pad_value: grey level of the padding (1 = white).

    Returns:
        (H', W'), the dtype and device of ``images``.
    """
    if images.dim() == 2 and image_shape is not None:
        height, width = image_shape
        if height < 1 or width < 1 or height * width != images.shape[1]:
            raise ValueError(f"image_shape {tuple(image_shape)} does not match flat images of {images.shape[1]} pixels")
        images = images.reshape(-1, height, width)
    elif images.dim() != 3 or image_shape is not None:
        raise ValueError(
            "images must have shape (N, H, W), or (N, H*W) with image_shape=(H, W); "
            f"got shape {tuple(images.shape)} with image_shape={image_shape}"
        )
    n, height, width = images.shape
    if n < 1 or height < 1 or width < 1:
        raise ValueError(f"images must hold at least one non-empty image, got shape {tuple(images.shape)}")
    _check_finite("images", images)
    if columns is None:
        columns = math.ceil(math.sqrt(n))
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ValueError(f"columns must be an integer >= 1, got {columns!r}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    step_h, step_w = height + padding, width + padding
    grid = images.new_full((rows * step_h + padding, columns * step_w + padding), pad_value)
    for i in range(n):
        top, left = padding + (i // columns) * step_h, padding + (i % columns) * step_w
        grid[top : top + height, left : left + width] = images[i]
    return grid


def _chunk(kind: bytes, data: bytes) -> bytes:
    """length | type | data | CRC-32(type + data)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(image: Tensor) -> bytes:
    """An 8-bit greyscale PNG of a 2-D image with values in [0, 1] (clipped to it), pixel = round(255 v)."""
    if image.dim() != 2 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be a non-empty 2-D (H, W) tensor, got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"image must hold floating-point values in [0, 1], got dtype {image.dtype}")
    _check_finite("image", image)
    height, width = image.shape
    pixels = (image.detach().to("cpu", torch.float64).clamp(0, 1) * 255).round().to(torch.uint8)  # (H, W)
    scanlines = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), pixels], 1)  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # depth 8, greyscale, deflate, no interlace
    return b"".join(
        [
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(scanlines.numpy().tobytes())),
            _chunk(b"IEND", b""),
        ]
    )


def write_png(path: str | os.PathLike[str], image: Tensor) -> None:
    """Write a 2-D greyscale image in [0, 1] (values outside are clipped) to ``path`` as an 8-bit PNG.

    The write is atomic: the bytes go to a temporary file in the same folder, are flushed to disk (fsync) and
    the file is renamed over ``path`` (os.replace), so a reader sees the old file or the new one, never a part.

    Args:
        path: the file to write; its folder must exist.
        image: (H, W).
    """
    data = png_bytes(image)  # before any file is touched: bad input leaves nothing behind
    atomic_write(path, data)
