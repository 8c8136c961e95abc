"""Reports: one self-contained HTML page of a model's diagnosis, with or without a run directory.

::

    d = dx.diagnose(model, guide, x, k=1000)
    elbokit.report.write(d, "report.html", model=model, x=x, image_shape=(28, 28), discrete=True)

:func:`write` and :func:`render` take a :class:`~elbokit.diagnostics.Diagnosis`, the model and the points it was
computed on, and draw everything from them (and from a training history, a β sweep, settings and a dataset
description where given); they read no file. ``elbokit report`` (:meth:`elbokit.runs.Run.report`) hands them a
run's pieces. Image grids as PNG in pure stdlib are in :mod:`elbokit.report.images`, the figures in
:mod:`elbokit.report.plots` (the only matplotlib import in the package), the page in :mod:`elbokit.report.html`.

Nothing in the core imports this package's figures, and importing it loads no matplotlib: that happens when a
report is made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from elbokit._io import atomic_write

if TYPE_CHECKING:
    from elbokit.diagnostics import Diagnosis, Disentanglement, SweepPoint
    from elbokit.models import LatentModel

__all__ = ["render", "write"]


def _check(diagnosis: Any, x: Any, labels: Any, image_shape: Any, history: Any, sweep: Any,
           disentanglement: Any = None) -> None:  # fmt: skip
    """ValueError (one line) for arguments that do not fit together."""
    from elbokit.diagnostics import Diagnosis, Disentanglement, SweepPoint

    if not isinstance(diagnosis, Diagnosis):
        raise ValueError(f"diagnosis must be an elbokit.diagnostics.Diagnosis, got {type(diagnosis).__name__}")
    n = diagnosis.n
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < n:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be the diagnosis's points, a (B, *event) tensor with B >= n = {n}, got {shape}")
    if labels is not None and (not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] < n):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a (B,) tensor with B >= n = {n}, got {shape}")
    if image_shape is not None:
        dim = x[0].numel()
        if (not isinstance(image_shape, (tuple, list)) or len(image_shape) != 2
                or not all(type(v) is int and v > 0 for v in image_shape)
                or image_shape[0] * image_shape[1] != dim):  # fmt: skip
            raise ValueError(f"image_shape must be (H, W) with H W = D = {dim}, got {image_shape!r}")
    if isinstance(history, (str, bytes)) or not all(isinstance(row, Mapping) for row in history):
        raise ValueError("history must be a sequence of mappings, one per epoch (the lines of metrics.jsonl)")
    if sweep is not None and not all(isinstance(p, SweepPoint) for p in sweep):
        raise ValueError("sweep must be a sequence of elbokit.diagnostics.SweepPoint")
    if disentanglement is not None and not isinstance(disentanglement, Disentanglement):
        raise ValueError(f"disentanglement must be an elbokit.diagnostics.Disentanglement, "
                         f"got {type(disentanglement).__name__}")  # fmt: skip


def render(
    diagnosis: Diagnosis,
    *,
    model: LatentModel,
    x: Tensor,
    labels: Tensor | None = None,
    image_shape: tuple[int, int] | None = None,
    discrete: bool = False,
    history: Sequence[Mapping[str, Any]] = (),
    sweep: Sequence[SweepPoint] | None = None,
    disentanglement: Disentanglement | None = None,
    settings: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """The report of ``diagnosis`` as one self-contained HTML string (figures inline, no script, nothing fetched).

    Args:
        diagnosis: what :func:`elbokit.diagnostics.diagnose` returned for ``model`` on ``x``.
        model: the LatentModel diagnosed. Its ``sample(n, generator=..., mean=True)`` (and ``mean=False``: draws of
            x) and ``reconstruct(x)`` are used for the images or, for other data, the per-feature figures;
            ``encode(x)`` and ``decode(z)`` (with ``latent_dim`` and ``prior()``) for the latent figures. A figure
            whose method the model lacks says so instead.
        x: (B, *event) the points diagnosed; the first ``diagnosis.n`` are used.
        labels: (B,) class labels of x, to colour the latent space by (else it is coloured by log p(x)).
        image_shape: (H, W) when each point is an image of H W values in [0, 1]; None for other data.
        discrete: whether x is discrete (binary, counts), so that log p(x) is a log probability and bits per
            dimension mean something; False for continuous likelihoods (a density).
        history: per-epoch rows (``metrics.jsonl``, ``FitResult.history``) for the training curves; only their
            numbers are drawn. Empty: no training section.
        sweep: a β sweep's points, drawn on the rate-distortion plane instead of this model's one point (and,
            where they carry disentanglement scores, against β).
        disentanglement: the model's disentanglement scores on data with known factors
            (:func:`elbokit.diagnostics.disentanglement`): a section with them and a traversal per factor.
        settings: the configuration to list (e.g. ``RunConfig.to_dict()``).
        dataset: a description of the data to list (e.g. a run's ``dataset.json``); its ``name`` opens the page.
        title: what the report is of (the page is titled "elbokit report: {title}").

    Raises:
        ValueError: for arguments that do not fit (x with fewer than n points, an image_shape that is not D).
    """
    _check(diagnosis, x, labels, image_shape, history, sweep, disentanglement)
    from elbokit.report.html import render_page
    from elbokit.report.sections import build_sections

    sections = build_sections(diagnosis, model=model, x=x, labels=labels, image_shape=image_shape,
                              history=history, sweep=sweep, disentanglement=disentanglement)  # fmt: skip
    return render_page(diagnosis, sections, data_dim=x[0].numel(), discrete=discrete, settings=settings,
                       dataset=dataset, title=title)  # fmt: skip


def write(
    diagnosis: Diagnosis,
    path: str | Path,
    *,
    model: LatentModel,
    x: Tensor,
    labels: Tensor | None = None,
    image_shape: tuple[int, int] | None = None,
    discrete: bool = False,
    history: Sequence[Mapping[str, Any]] = (),
    sweep: Sequence[SweepPoint] | None = None,
    disentanglement: Disentanglement | None = None,
    settings: Mapping[str, Any] | None = None,
    dataset: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> Path:
    """Write :func:`render`'s page to ``path`` atomically (an earlier file stays whole until the new one is
    complete) and return the path. The arguments are :func:`render`'s."""
    page = render(diagnosis, model=model, x=x, labels=labels, image_shape=image_shape, discrete=discrete,
                  history=history, sweep=sweep, disentanglement=disentanglement, settings=settings, dataset=dataset,
                  title=title)  # fmt: skip
    path = Path(path)
    atomic_write(path, page.encode("utf-8"))
    return path
