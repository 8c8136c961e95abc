"""Checks of values read back from JSON files (diagnostics.json, evaluation.json, a checkpoint's metadata): a
crafted or stale file is refused by type and range before any of its values is used."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]


def is_real(value: Any) -> bool:
    """An int or float that converts to a float: not a bool, a string or an int too large for a float."""
    return isinstance(value, float) or (type(value) is int and abs(value) <= sys.float_info.max)


def is_finite(value: Any) -> bool:
    return is_real(value) and math.isfinite(value)


def count(low: int = 0, high: int | None = None) -> Check:
    """An int (not a bool) >= low (and < high)."""
    return lambda value: type(value) is int and value >= low and (high is None or value < high)


def one_of(*choices: str) -> Check:
    return lambda value: isinstance(value, str) and value in choices


def list_of(check: Check) -> Check:
    return lambda value: isinstance(value, list) and all(check(item) for item in value)


def record(checks: Mapping[str, Check], *, exact: bool = False) -> Check:
    """A JSON object holding each key of ``checks`` with a value that passes it (and no other key, if ``exact``)."""
    return lambda value: (isinstance(value, dict) and (not exact or set(value) == set(checks))
                          and all(key in value and check(value[key]) for key, check in checks.items()))  # fmt: skip
