"""Argument types, the parser class and the small helpers the ``elbokit`` commands share."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class UsageError(Exception):
    """Bad input from the user: reported in one line with exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _number_list(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v >= 0) for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return values


def add_device(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    what = "default" if default == "auto" else "default: the run's own setting"
    p.add_argument("--device", default=default, help=f"auto (CUDA when present), cpu or cuda[:i] ({what})")


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", choices=("auto", "best", "last"), default="auto",
                   help="best (the best validation epoch), last, or auto (default: best when the run stopped "
                   "early, else last)")  # fmt: skip


#: The longest computation the command line starts: beyond it, a smaller --k or --limit is asked for.
MAX_SECONDS = 24 * 3600


def duration(seconds: float) -> str:
    """``3 min``, ``2.5 h``, ``41 days``: a rough duration for a message."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.2g} {unit}"
    return f"{seconds:.2g} s"


def check_duration(seconds: float, what: str, *, smaller: str = "--k or --limit") -> None:
    """Refuse a computation estimated beyond :data:`MAX_SECONDS`; announce one longer than a minute."""
    if seconds > MAX_SECONDS:
        raise UsageError(f"{what} would take about {duration(seconds)} here (over the {duration(MAX_SECONDS)} the "
                         f"command line starts); give a smaller {smaller}")  # fmt: skip
    if seconds > 60:
        print(f"elbokit: {what} will take about {duration(seconds)}", file=sys.stderr, flush=True)


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Collect the library's warnings during the block and print each as one ``elbokit: warning:`` line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                print(f"elbokit: warning: {w.message}", file=sys.stderr)


def add_nproc_flag(p: argparse.ArgumentParser) -> None:
    """``--nproc N``: the command in N local processes on torch.distributed (under torchrun: one per rank)."""
    p.add_argument("--nproc", type=_positive_int, default=1,
                   help="run on N local processes (torch.distributed: gloo, or NCCL with a GPU per rank); under "
                   "torchrun the command joins its group instead")  # fmt: skip
