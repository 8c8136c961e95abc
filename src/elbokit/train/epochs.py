"""What each epoch of :func:`elbokit.fit` starts from: the device, the data order and binarization of the epoch
(functions of (seed, epoch) alone, so that a resumed run draws what an uninterrupted one does), and the stop
requests (SIGINT, SIGTERM) checked between steps."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = ["epoch_generator", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when present, else the CPU) or a torch device name; ValueError for one not usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu or cuda[:i], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator for one epoch's data order (stream 0) or binarization (stream 1): a function of
    (seed, epoch) alone, so a resumed run draws what an uninterrupted one does."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 4 + stream)


def _epoch_data(train: Tensor, *, seed: int, epoch: int, dynamic: bool) -> tuple[Tensor, Tensor]:
    order = torch.randperm(train.shape[0], generator=epoch_generator(seed, epoch, 0)).to(train.device)
    if not dynamic:
        return train, order
    # Dynamic binarization (a fresh x ~ Bernoulli(intensity) each epoch), drawn on the CPU for device-free
    # reproducibility.
    draw = torch.bernoulli(train.cpu(), generator=epoch_generator(seed, epoch, 1))
    return draw.to(train.device), order


@contextmanager
def _stop_requests() -> Iterator[Callable[[], bool]]:
    """SIGINT / SIGTERM set a flag checked between steps (the main thread only; elsewhere, no handlers)."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        requested.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield requested.is_set
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
