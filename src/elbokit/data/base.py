"""The dataset container, the one error type of the data layer, and helpers shared by the loaders.

Every dataset is three splits of flat float32 vectors, ``(N, D)``, with optional int64 labels ``(N,)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SPLITS: tuple[str, ...] = ("train", "validation", "test")
BINARIZE: tuple[str, ...] = ("none", "dynamic", "fixed")
SUPPORTS: tuple[str, ...] = ("binary", "unit", "count", "real")
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines splits on


class DataError(ValueError):
    """Bad data or a bad data request; the message is one line naming the problem and the file or name.

    Line breaks in the message (from a file name, say) are escaped (``\\n``), so it stays one line.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(message.translate({ord(c): repr(c)[1:-1] for c in _LINE_BREAKS}))


def expand_user(path: str | Path) -> Path:
    """``Path(path).expanduser()``, with a DataError naming the path when ``~user`` names no user."""
    try:
        return Path(path).expanduser()
    except RuntimeError as err:  # "Could not determine home directory."
        raise DataError(f"cannot expand ~ in {path}: {err}") from err


@dataclass(frozen=True)
class Dataset:
    """Three splits of flat float32 vectors and what is known about them.

    Attributes:
        name: registry name (``"mnist"``) or, for a user file, its path.
        train: (N_train, D) float32.
        validation: (N_val, D) float32.
        test: (N_test, D) float32.
        train_labels: (N_train,) int64 class labels, or ``None``.
        validation_labels: (N_val,) int64, or ``None``.
        test_labels: (N_test,) int64, or ``None``.
        image_shape: (H, W) with H * W = D when each vector is an image, else ``None``.
        binarize: ``"none"``; ``"dynamic"``: ``train`` holds probabilities and the trainer draws
            x ~ Bernoulli(train) afresh each epoch (validation and test are already binary); ``"fixed"``: every
            split is already one binary draw.
        support: the values a data point takes, and so the likelihoods that fit: ``"binary"`` ({0, 1}),
            ``"unit"`` ([0, 1]), ``"count"`` (non-negative integers, e.g. UMI counts) or ``"real"``. For
            ``binarize="dynamic"`` it describes the data the model sees, i.e. train after binarization.
        source: where the data came from (a file or folder path, a package), for the run's record.
        feature_names: D names of the coordinates (genes of a count matrix), or ``None``.
        point_names: split -> the names of its points in order (cell barcodes), or ``None``.
    """

    name: str
    train: Tensor
    validation: Tensor
    test: Tensor
    train_labels: Tensor | None
    validation_labels: Tensor | None
    test_labels: Tensor | None
    image_shape: tuple[int, int] | None
    binarize: str
    support: str
    source: str
    feature_names: tuple[str, ...] | None = None
    point_names: dict[str, tuple[str, ...]] | None = field(default=None, hash=False)  # a dict is unhashable

    def __post_init__(self) -> None:
        if self.binarize not in BINARIZE:
            raise DataError(f"{self.name}: binarize must be one of {', '.join(BINARIZE)}, got {self.binarize!r}")
        if self.support not in SUPPORTS:
            raise DataError(f"{self.name}: support must be one of {', '.join(SUPPORTS)}, got {self.support!r}")
        dim = self.train.shape[-1] if self.train.dim() == 2 else None
        for split in SPLITS:
            x, y = self.split(split), self.labels(split)
            if x.dim() != 2 or x.dtype != torch.float32 or x.shape[1] != dim or x.shape[0] < 1:
                raise DataError(
                    f"{self.name}: split {split} must be a non-empty (N, {dim}) float32 tensor, "
                    f"got {tuple(x.shape)} {x.dtype}"
                )
            if y is not None and (y.dtype != torch.int64 or tuple(y.shape) != (x.shape[0],)):
                raise DataError(
                    f"{self.name}: {split} labels must be ({x.shape[0]},) int64, got {tuple(y.shape)} {y.dtype}"
                )
        if self.image_shape is not None and self.image_shape[0] * self.image_shape[1] != dim:
            raise DataError(f"{self.name}: image_shape {self.image_shape} does not match data_dim {dim}")
        if self.feature_names is not None and len(self.feature_names) != dim:
            raise DataError(f"{self.name}: {len(self.feature_names)} feature names for data_dim {dim}")
        if self.point_names is not None:
            sizes = {split: len(self.point_names.get(split, ())) for split in SPLITS}
            if any(sizes[split] != self.split(split).shape[0] for split in SPLITS):
                raise DataError(f"{self.name}: point names per split {sizes} do not match the split sizes")

    @property
    def data_dim(self) -> int:
        """D, the length of one data vector."""
        return int(self.train.shape[1])

    def split(self, name: str) -> Tensor:
        """The (N, D) tensor of split ``name``: ``"train"``, ``"validation"`` or ``"test"``."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        x: Tensor = getattr(self, name)
        return x

    def labels(self, name: str) -> Tensor | None:
        """The (N,) int64 labels of split ``name``, or ``None`` when the dataset has none."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        y: Tensor | None = getattr(self, f"{name}_labels")
        return y

    def describe(self) -> dict[str, object]:
        """A JSON-able summary for the run's record.

        Keys: ``name``, ``sizes`` (split -> N), ``data_dim``, ``image_shape`` (list or ``None``), ``binarize``,
        ``support``, ``train_values`` (what ``train`` holds), ``labels`` (bool) and ``source``; where the
        dataset names its features, also ``feature_names`` (``{"count": D, "first": [up to 5 names]}``), and
        ``point_names`` (``True``) where it names its points.
        """
        if self.binarize == "dynamic":
            train_values = "probabilities in [0, 1]; binarized x ~ Bernoulli(train) afresh each epoch"
        elif self.binarize == "fixed":
            train_values = "one fixed binary draw"
        else:
            train_values = self.support
        described: dict[str, object] = {
            "name": self.name,
            "sizes": {split: int(self.split(split).shape[0]) for split in SPLITS},
            "data_dim": self.data_dim,
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "binarize": self.binarize,
            "support": self.support,
            "train_values": train_values,
            "labels": self.train_labels is not None,
            "source": self.source,
        }
        if self.feature_names is not None:
            described["feature_names"] = {"count": len(self.feature_names), "first": list(self.feature_names[:5])}
        if self.point_names is not None:
            described["point_names"] = True
        return described


def infer_support(*arrays: Tensor) -> str:
    """The narrowest support holding every value, checked in this order: ``"binary"`` when every value is 0 or 1,
    ``"unit"`` when all lie in [0, 1], ``"count"`` when all are non-negative integers (some then > 1), else
    ``"real"``.

    So grey values in [0, 1] (digits / 16, MNIST / 255) stay ``"unit"`` and an integer array with values above 1
    (UMI counts) is ``"count"``.
    """
    if all(bool(((x == 0) | (x == 1)).all()) for x in arrays):
        return "binary"
    if all(bool(((x >= 0) & (x <= 1)).all()) for x in arrays):
        return "unit"
    if all(bool(((x >= 0) & (x == torch.round(x))).all()) for x in arrays):
        return "count"
    return "real"


def split_sizes(n: int) -> tuple[int, int, int]:
    """Train / validation / test sizes for n >= 3 points: ~80/10/10, at least one point in each split."""
    if n < 3:
        raise DataError(f"need at least 3 points to make train, validation and test splits, got {n}")
    n_val = n_test = max(1, round(0.1 * n))
    return n - n_val - n_test, n_val, n_test


def permutation_split(n: int, *, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Index tensors (int64) of a seeded random ~80/10/10 split of ``range(n)``."""
    n_train, n_val, _ = split_sizes(n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def as_float32(array: np.ndarray) -> Tensor:
    """A float32 tensor copy of ``array`` (independent of torch's default dtype)."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def as_labels(array: np.ndarray) -> Tensor:
    """An int64 tensor copy of ``array``."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def check_finite(x: np.ndarray, where: str, lines: list[int] | None = None) -> None:
    """Refuse NaN or inf values of an (N, D) array, naming how many and the first row (and its line in a text
    file, where ``lines`` maps rows to 1-based line numbers)."""
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(bad.any(axis=1).argmax())
        at = f"row {row}" if lines is None else f"row {row} (line {lines[row]})"
        raise DataError(f"{where}: {int(bad.sum())} NaN or inf values, the first in {at}")


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type where it has none): one line for a DataError."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
