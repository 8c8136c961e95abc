"""Argument checks shared by the models, the estimators and the diagnostics.

Each raises a one-line ``ValueError`` that says what was expected and what was given. The checks of a data batch
come in two parts: :func:`check_batch` reads only a tensor's metadata (type, shape, dtype, device) and so costs no
device sync; :func:`check_values` reads the values (finiteness, the likelihood's support), a host sync on a GPU,
and its callers run it only while torch.distributions' own argument checks are on
(``Distribution._validate_args``), so that the training loop, which runs with them off, pays nothing for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain

import torch
from torch import Tensor, nn


def check_positive_int(name: str, value: int) -> None:
    """Raise unless ``value`` is an int >= 1 (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_nonnegative(name: str, value: float) -> None:
    """Raise unless ``value`` is a finite real number >= 0 (an int or a float; not a bool, not a tensor)."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    try:
        ok = ok and 0 <= float(value) < math.inf  # an int too large for a float is refused too
    except OverflowError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def dtype_and_device(module: object) -> tuple[torch.dtype, torch.device] | None:
    """The dtype and device of an ``nn.Module``'s first floating-point parameter or buffer (depth first, a module's
    own before its children's): what its inputs must have; ``None`` for anything else, or a module without one.

    Called on every estimator call, so it walks the module dicts itself: ``parameters()`` builds the set of all
    submodules first, 10 microseconds on a VAE where this takes under 1.
    """
    if not isinstance(module, nn.Module):
        return None
    stack = [module]
    while stack:
        m = stack.pop()
        for t in chain(m._parameters.values(), m._buffers.values()):
            if t is not None and t.is_floating_point():
                return t.dtype, t.device
        stack.extend(reversed(m._modules.values()))  # type: ignore[arg-type]
    return None


def check_batch(
    x: object,
    *,
    event_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    owner: str = "the model",
) -> None:
    """Raise unless x is a non-empty floating-point batch (B, *event), with ``event_shape``, ``dtype`` and
    ``device`` where given (those of ``owner``, named in the message). Metadata only: no device sync."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (B, *event), got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.dim() < 2:
        raise ValueError(f"x must have shape (B, *event) with a batch dimension, got shape {shape}")
    if shape[0] == 0:
        raise ValueError(f"x must hold at least one data point, got an empty batch of shape {shape}")
    if event_shape is not None and shape[1:] != tuple(event_shape):
        expected = (*event_shape,)
        raise ValueError(f"x must have event shape {expected} for {owner}, got {shape[1:]} (x has shape {shape})")
    if not x.is_floating_point():
        wanted = f"{owner}'s dtype {dtype}" if dtype is not None else "a floating-point dtype"
        raise ValueError(f"x must have {wanted}, got {x.dtype}: convert it with x.to({dtype or 'torch.float32'})")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"x must have {owner}'s dtype {dtype}, got {x.dtype}: convert it with x.to({dtype})")
    if device is not None and x.device != device:
        raise ValueError(f"x must be on {owner}'s device {device}, got {x.device}")


def check_values(x: Tensor, owner: str = "x") -> None:
    """Raise if x holds NaN or infinite values (one device sync; a second one only to describe a failure)."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        shape = tuple(x.shape)
        raise ValueError(f"{owner} must be finite, got {bad} NaN or infinite value(s) in {owner} of shape {shape}")


def check_guide_options(latent_dim: int, min_scale: float, guide: str, covariance: str, num_points: int | None) -> None:
    """The checks :meth:`VAE.mlp` and :meth:`VAE.conv` share: one-line ValueErrors for options that do not fit."""
    check_positive_int("latent_dim", latent_dim)
    check_nonnegative("min_scale", min_scale)
    if guide not in ("gaussian", "flow", "local"):
        raise ValueError(f"guide must be 'gaussian', 'flow' or 'local', got {guide!r}")
    if (guide == "local") != (num_points is not None):
        raise ValueError("num_points goes with guide='local' (the training points' count), and only with it")
    if guide == "flow" and covariance != "diagonal":
        raise ValueError(f"a flow guide's base is diagonal: covariance must be 'diagonal', got {covariance!r}")
