"""Switching torch.distributions' per-call argument checks off where the arguments are already known good."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch.distributions import Distribution


@contextmanager
def unvalidated() -> Iterator[None]:
    """Switch off torch.distributions' per-call argument checks (each a ``.all()`` and, on a GPU, a host sync).

    For loops that check their data once and then evaluate the same kinds of distributions many times: the
    trainer (the data are checked against the likelihood's support when a run starts) and the chunks of
    importance samples after the first.
    """
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(previous)
