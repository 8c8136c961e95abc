r"""Datasets that need no files: scikit-learn's 8x8 ``digits`` and ``synthetic`` linear-Gaussian data.

``synthetic`` is drawn from a known :class:`~elbokit.models.LinearGaussian`,

.. math::
    z \sim \mathcal N(0, I_5), \qquad x \mid z \sim \mathcal N(W z + b, \operatorname{diag}(s^2)) \in \mathbb R^{20},

so its exact log p(x) is available (:func:`synthetic_model` rebuilds the model from the seed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from elbokit.data.base import DataError, Dataset, as_float32, as_labels, permutation_split
from elbokit.data.registry import register

if TYPE_CHECKING:
    from elbokit.models import LinearGaussian

SYNTHETIC_DATA_DIM = 20
SYNTHETIC_LATENT_DIM = 5
SYNTHETIC_SIZES = (8000, 1000, 1000)  # train, validation, test


@register("digits")
def load_digits(*, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), values / 16 in [0, 1], with labels.

    Split by a permutation seeded by ``seed`` into 1,437 / 180 / 180 (~80/10/10).
    """
    try:
        import sklearn
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise DataError("dataset 'digits' needs scikit-learn: pip install scikit-learn") from err
    bunch = sklearn_digits()
    x = as_float32(np.asarray(bunch.data, dtype=np.float64) / 16.0)  # (1797, 64), pixel counts 0..16
    y = as_labels(np.asarray(bunch.target))
    train, validation, test = permutation_split(len(x), seed=seed)
    return Dataset(
        name="digits",
        train=x[train],
        validation=x[validation],
        test=x[test],
        train_labels=y[train],
        validation_labels=y[validation],
        test_labels=y[test],
        image_shape=(8, 8),
        binarize="none",
        support="unit",
        source=f"scikit-learn {sklearn.__version__} sklearn.datasets.load_digits",
    )


def synthetic_model(seed: int = 0) -> LinearGaussian:
    """The float32 LinearGaussian (D = 20, d = 5) behind ``load("synthetic", seed=seed)``.

    W and b are standard normal, s is uniform in [0.5, 1.5], all drawn from ``torch.Generator().manual_seed(seed)``
    before the data.
    """
    from elbokit.models import LinearGaussian

    return _synthetic_model(torch.Generator().manual_seed(seed), LinearGaussian)


def _synthetic_model(generator: torch.Generator, cls: type[LinearGaussian]) -> LinearGaussian:
    dims, f32 = (SYNTHETIC_DATA_DIM, SYNTHETIC_LATENT_DIM), torch.float32
    weight = torch.randn(dims, generator=generator, dtype=f32)
    bias = torch.randn(SYNTHETIC_DATA_DIM, generator=generator, dtype=f32)
    noise_scale = 0.5 + torch.rand(SYNTHETIC_DATA_DIM, generator=generator, dtype=f32)
    return cls(weight, bias, noise_scale)


@register("synthetic")
def load_synthetic(*, seed: int = 0) -> Dataset:
    """8,000 / 1,000 / 1,000 points from a seeded linear-Gaussian model (D = 20, d = 5); no labels.

    Model parameters and data come from one ``torch.Generator`` seeded by ``seed``; the model is
    :func:`synthetic_model` ``(seed)``.
    """
    from elbokit.models import LinearGaussian

    generator = torch.Generator().manual_seed(seed)
    model = _synthetic_model(generator, LinearGaussian)
    with torch.no_grad():
        x = model.sample(sum(SYNTHETIC_SIZES), generator=generator).x.to(torch.float32)  # (10000, 20)
    n_train, n_val, _ = SYNTHETIC_SIZES
    return Dataset(
        name="synthetic",
        train=x[:n_train].clone(),
        validation=x[n_train : n_train + n_val].clone(),
        test=x[n_train + n_val :].clone(),
        train_labels=None,
        validation_labels=None,
        test_labels=None,
        image_shape=None,
        binarize="none",
        support="real",
        source=f"elbokit.models.LinearGaussian(D={SYNTHETIC_DATA_DIM}, d={SYNTHETIC_LATENT_DIM}, seed={seed})",
    )
