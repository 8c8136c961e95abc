"""Numeric CSV files: numbers separated by commas, one row per point; a first row with no numbers is a header
(:func:`read_header` reads its column names)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from elbokit.data.base import DataError, check_finite


def read_csv(path: Path) -> np.ndarray:
    """Parse a numeric CSV into (N, D) float32; a first row in which no field is a number is a header.

    numpy's C parser reads well-formed files; anything it rejects, or any NaN / inf, is re-read line by line to
    name the offending line.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: no data rows")
    header = all(_float(f) is None for f in lines[first].split(","))
    try:
        with np.errstate(over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": reported below
            x = np.loadtxt(
                io.StringIO(text), delimiter=",", comments=None, skiprows=first + header, ndmin=2, dtype=np.float64
            ).astype(np.float32)
        if x.size and np.isfinite(x).all():
            return x
    except ValueError:
        pass
    return _read_csv_by_line(path, lines, header)


def _read_csv_by_line(path: Path, lines: list[str], header: bool) -> np.ndarray:
    rows: list[list[float]] = []
    numbers: list[int] = []  # the 1-based line number of each row
    width = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if header and width is None:
            width = len(fields)
            continue
        values = [_float(f) for f in fields]
        bad = next((f for f, v in zip(fields, values, strict=True) if v is None), None)
        if bad is not None:
            raise DataError(f"{path}, line {number}: non-numeric value {bad!r}")
        if width is not None and len(values) != width:
            raise DataError(f"{path}, line {number}: {len(values)} values, expected {width}")
        width = len(values)
        rows.append([v for v in values if v is not None])
        numbers.append(number)
    if not rows:
        raise DataError(f"{path}: no data rows")
    with np.errstate(over="ignore"):
        x = np.asarray(rows, dtype=np.float64).astype(np.float32)
    check_finite(x, str(path), numbers)
    return x


def _float(field: str) -> float | None:
    try:
        return float(field)
    except ValueError:
        return None


def read_header(text: str, path: Path) -> tuple[list[str], int]:
    """The column names on the first non-blank line, and its 1-based number.

    The rule matches :func:`~elbokit.data._csv.read_csv`'s: a first line in which no field reads as a number is a
    header; a name may be quoted (``"medv"``, as R's ``write.csv`` writes it), but holds no comma.
    """
    lines = text.splitlines()
    number = next((i for i, line in enumerate(lines) if line.strip()), None)
    if number is None:
        raise DataError(f"{path}: no header row and no data rows")
    line = lines[number]
    numeric = [f.strip() for f in line.split(",") if _float(f) is not None]
    if numeric:
        if len(numeric) == len(line.split(",")):
            raise DataError(
                f"{path}, line {number + 1}: no header row (this line holds numbers); "
                "a table's first line names its columns"
            )
        raise DataError(f"{path}, line {number + 1}: column name {numeric[0]!r} in the header reads as a number")
    columns = [_unquote(f.strip()) for f in line.split(",")]  # split as read_csv splits the rows
    for i, column in enumerate(columns):
        if not column:
            raise DataError(f"{path}, line {number + 1}: column {i + 1} has no name in the header")
        if column in columns[:i]:
            raise DataError(f"{path}, line {number + 1}: duplicate column name {column!r} in the header")
    return columns, number + 1


def _unquote(name: str) -> str:
    """A CSV-quoted name without its quotes and doubled inner quotes; an unquoted name as it is."""
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return name[1:-1].replace('""', '"').strip()
    return name
