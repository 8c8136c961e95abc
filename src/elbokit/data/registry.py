"""Datasets by name: ``register`` a loader, ``load`` a name or a file.

A loader is a function of keyword-only options returning a :class:`Dataset`. The options it declares are the
ones it understands, among ``data_dir``, ``binarize``, ``seed`` and ``cache_dir``:

* ``binarize`` and ``data_dir`` change what is loaded, so passing one to a loader that does not declare it is a
  :class:`DataError` (``load("digits", binarize="fixed")``);
* ``seed`` and ``cache_dir`` are general settings (a run always has a seed) and are only passed to the
  loaders that declare them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from elbokit.data.base import DataError, Dataset, expand_user
from elbokit.data.files import load_file

Loader = Callable[..., Dataset]
L = TypeVar("L", bound=Loader)

FILE_SUFFIXES: tuple[str, ...] = (".npy", ".npz", ".csv", ".h5ad", ".mtx")

_REGISTRY: dict[str, Loader] = {}


def register(name: str) -> Callable[[L], L]:
    """Decorator: make ``loader`` loadable as ``load(name, ...)``.

    Example::

        @register("my-data")
        def _my_data(*, seed: int = 0) -> Dataset: ...
    """
    if not name or name != name.strip() or Path(name).suffix in FILE_SUFFIXES:
        raise ValueError(f"dataset name must be non-empty, without surrounding spaces or a file suffix, got {name!r}")

    def decorate(loader: L) -> L:
        if name in _REGISTRY and _REGISTRY[name] is not loader:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = loader
        return loader

    return decorate


def available() -> list[str]:
    """The registered dataset names, in registration order."""
    return list(_REGISTRY)


def load(
    name_or_path: str,
    *,
    data_dir: str | Path | None = None,
    binarize: str | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    layer: str | None = None,
) -> Dataset:
    """Load a registered dataset by name, or a ``.npy`` / ``.npz`` / ``.csv`` / ``.h5ad`` / ``.mtx`` file.

    Args:
        name_or_path: a name from :func:`available`, or a file path.
        data_dir: a folder holding the dataset's files (for the datasets read from files: mnist, ...).
        binarize: ``"dynamic"`` or ``"fixed"``, for ``binarized-mnist`` only; ``None`` takes its default.
        seed: seeds every random choice of the loader (a split's permutation, a fixed binarization, synthetic
            data). Validation and test of ``binarized-mnist`` do not depend on it.
        cache_dir: the download cache (default ``$ELBOKIT_DATA`` or ``~/.cache/elbokit``).
        layer: for an ``.h5ad`` file, the AnnData layer to read instead of ``X``.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: an unknown name, a missing or malformed file, or an option the dataset does not take.
    """
    name = str(name_or_path)
    loader = _REGISTRY.get(name)
    if loader is None:
        path = expand_user(name)
        if path.suffix.lower() in FILE_SUFFIXES or _exists(path):
            if binarize is not None or data_dir is not None:
                option = "binarize" if binarize is not None else "data_dir"
                raise DataError(f"{option} does not apply to a file ({name}); it applies to named datasets only")
            return load_file(path, seed=seed, layer=layer)
        raise DataError(
            f"unknown dataset {name!r}: expected one of {', '.join(_REGISTRY)} or a {'/'.join(FILE_SUFFIXES)} file"
        )
    if layer is not None:
        raise DataError(f"layer applies to .h5ad files only; dataset {name!r} takes no layer (got {layer!r})")
    params = inspect.signature(loader).parameters
    options: dict[str, object] = {}
    for option, value in (("data_dir", data_dir), ("binarize", binarize)):
        if value is None:
            continue
        if option not in params:
            raise DataError(f"dataset {name!r} takes no {option} option (got {value!r})")
        options[option] = value
    if "seed" in params:
        options["seed"] = seed
    if "cache_dir" in params and cache_dir is not None:
        options["cache_dir"] = cache_dir
    return loader(**options)


def _exists(path: Path) -> bool:
    """``path.exists()``, and False where the name cannot be a file (too long, a folder without permission)."""
    try:
        return path.exists()
    except OSError:
        return False
