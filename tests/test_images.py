"""Image grids and PNG files: the written bytes are decoded here by an independent reader (chunk layout, CRCs,
IHDR fields, zlib stream, filter bytes) and compared pixel by pixel."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest
import torch

from elbokit.report.images import image_grid, write_png


def _read_png(path: Path) -> tuple[int, int, bytes]:
    """(width, height, pixel bytes row by row) of an 8-bit greyscale, non-interlaced PNG; asserts its structure."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks: list[tuple[bytes, bytes]] = []
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds and chunks[-1][1] == b""
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, compression, filtering, interlace) == (8, 0, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (width + 1)
    rows = [raw[r * (width + 1) : (r + 1) * (width + 1)] for r in range(height)]
    assert all(row[0] == 0 for row in rows), "every scanline starts with filter byte 0"
    return width, height, b"".join(row[1:] for row in rows)


def _expected_bytes(image: torch.Tensor) -> bytes:
    return bytes(round(255 * min(max(float(v), 0.0), 1.0)) for v in image.flatten())


def test_png_round_trip(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(5, 7, generator=gen)
    image[0, 0], image[0, 1], image[4, 6] = 0.0, 1.0, 0.5
    path = tmp_path / "image.png"
    write_png(path, image)
    width, height, pixels = _read_png(path)
    assert (width, height) == (7, 5)
    assert pixels == _expected_bytes(image)
    assert pixels[:2] == b"\x00\xff" and pixels[-1] == 128  # round(127.5) is 128 (ties to even)


def test_png_clips_and_accepts_str_paths(tmp_path: Path) -> None:
    image = torch.tensor([[-0.5, 0.25, 1.5]], dtype=torch.float32)
    path = tmp_path / "clipped.png"
    write_png(str(path), image)
    assert _read_png(path) == (3, 1, bytes([0, 64, 255]))


def test_write_is_atomic_and_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "grid.png"
    write_png(path, torch.zeros(2, 2))
    write_png(path, torch.ones(3, 4))
    assert os.listdir(tmp_path) == ["grid.png"]  # no temporary file left beside it
    assert _read_png(path) == (4, 3, b"\xff" * 12)


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "grid.png"
    write_png(path, torch.zeros(2, 2))
    before = path.read_bytes()

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_png(path, torch.ones(2, 2))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["grid.png"]


@pytest.mark.parametrize(
    ("image", "needle"),
    [
        (torch.tensor([[0.1, float("nan")]]), "finite"),
        (torch.tensor([[float("inf")]]), "finite"),
        (torch.zeros(2, 2, 2), "2-D"),
        (torch.zeros(4), "2-D"),
        (torch.zeros(0, 3), "2-D"),
        (torch.zeros(2, 2, dtype=torch.uint8), "floating"),
    ],
)
def test_write_png_rejects(tmp_path: Path, image: torch.Tensor, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        write_png(tmp_path / "bad.png", image)
    assert os.listdir(tmp_path) == []


def test_grid_layout() -> None:
    """5 images of 2x3 with values 0.1..0.5: 3 columns by default (ceil sqrt 5), 2 rows, 1-pixel padding."""
    values = [0.1, 0.2, 0.3, 0.4, 0.5]
    images = torch.stack([torch.full((2, 3), v) for v in values])
    grid = image_grid(images)
    assert grid.shape == (2 * 2 + 3, 3 * 3 + 4)
    for i, v in enumerate(values):
        top, left = 1 + (i // 3) * 3, 1 + (i % 3) * 4
        assert bool((grid[top : top + 2, left : left + 3] == v).all())
    mask = torch.ones_like(grid, dtype=torch.bool)
    for i in range(5):
        top, left = 1 + (i // 3) * 3, 1 + (i % 3) * 4
        mask[top : top + 2, left : left + 3] = False
    assert bool((grid[mask] == 1.0).all())  # padding and the empty sixth cell


def test_grid_options() -> None:
    images = torch.rand(6, 4, 5)
    one_row = image_grid(images, columns=6, padding=0)
    torch.testing.assert_close(one_row, torch.cat(list(images), dim=1))
    column = image_grid(images.reshape(6, 20), image_shape=(4, 5), columns=1, padding=2, pad_value=0.0)
    assert column.shape == (6 * 4 + 7 * 2, 5 + 4)
    torch.testing.assert_close(column[2:6, 2:7], images[0])
    torch.testing.assert_close(column[8:12, 2:7], images[1])
    assert image_grid(images, columns=10).shape == (4 + 2, 6 * 5 + 7)  # never more columns than images
    assert image_grid(torch.rand(1, 3, 3)).shape == (5, 5)


@pytest.mark.parametrize(
    ("images", "kwargs", "needle"),
    [
        (torch.rand(4, 6), {}, "image_shape"),
        (torch.rand(4, 6), {"image_shape": (2, 2)}, "does not match"),
        (torch.rand(4, 2, 2), {"image_shape": (2, 2)}, "image_shape"),
        (torch.rand(2, 2, 2, 2), {}, "shape"),
        (torch.rand(0, 2, 2), {}, "at least one"),
        (torch.full((1, 2, 2), float("nan")), {}, "finite"),
        (torch.rand(4, 2, 2), {"columns": 0}, "columns"),
        (torch.rand(4, 2, 2), {"padding": -1}, "padding"),
    ],
)
def test_grid_rejects(images: torch.Tensor, kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        image_grid(images, **kwargs)  # type: ignore[arg-type]


def test_grid_to_png(tmp_path: Path) -> None:
    images = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(1))
    grid = image_grid(images, columns=3)
    write_png(tmp_path / "g.png", grid)
    width, height, pixels = _read_png(tmp_path / "g.png")
    assert (height, width) == (4, 10) and pixels == _expected_bytes(grid)
