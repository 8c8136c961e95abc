"""Checks of single RunConfig fields: one-line ValueErrors naming the field, what it takes and what it got."""

from __future__ import annotations

import json
import math
import re

DEVICE = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


def check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")


def check_int(name: str, value: object, *, low: int) -> None:
    """An integer >= low; bools and floats (even 2.0) are refused: a count or seed is written as an integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")


def check_float(name: str, value: object, *, low: float, strict: bool = False) -> float:
    """A finite real number >= low (> low when strict), as a float; bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value}")
    return value


def check_hidden(value: object) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"hidden must be a list of layer sizes (integers >= 1), got {value!r}")
    for h in value:
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ValueError(f"hidden sizes must be integers >= 1, got {h!r} in {list(value)}")
    return tuple(value)


def check_extra(value: object) -> None:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise ValueError(f"extra must be a table of notes keyed by strings, got {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"extra must hold JSON values only: {err}") from None
