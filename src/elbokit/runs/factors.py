"""A run's disentanglement: its codes E_q z against the data's known generative factors (sprite datasets)."""

from __future__ import annotations

import torch

from elbokit.data import Dataset, known_factors
from elbokit.data.dsprites import FACTOR_DATASETS
from elbokit.diagnostics.disentangle import Disentanglement, disentanglement
from elbokit.models import VAE

#: The SweepPoint fields a sweep fills from :class:`Disentanglement` (for data with known factors).
SCORES = ("mig", "dci_disentanglement", "dci_completeness", "dci_informativeness", "factor_vae")
_BATCH = 500  # points encoded at once


def check_scorable(data: Dataset) -> None:
    """For data with known factors, refuse at once (ValueError, one line) when scikit-learn, which DCI's
    predictors come from, is missing: a sweep would otherwise fail after training its models."""
    if data.name not in FACTOR_DATASETS:
        return
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ValueError(f"scoring {data.name}'s factors (DCI) needs scikit-learn: "
                         "pip install 'elbokit[disentanglement]'") from None  # fmt: skip


@torch.no_grad()
def factor_scores(
    model: VAE, data: Dataset, split: str = "test", *, limit: int | None = 5000, data_seed: int = 0, seed: int = 0
) -> Disentanglement | None:
    """:func:`elbokit.diagnostics.disentanglement` of the codes ``model.encode(x)`` of the first ``limit`` points
    of a split, against their factors; ``None`` when the data has no known factors.

    Args:
        model: the VAE whose encoder gives the codes.
        data: the dataset (a sprite dataset has factors; any other gives ``None``).
        split: ``"train"``, ``"validation"`` or ``"test"``.
        limit: the first ``limit`` points (``None``: the whole split).
        data_seed: the seed the dataset was loaded with (its subset and splits follow it).
        seed: seeds the metrics' own draws.
    """
    known = known_factors(data.name, split, seed=data_seed)
    if known is None:
        return None
    check_scorable(data)
    factors, names = known
    x = data.split(split)[:limit]
    device = next(model.parameters()).device
    z = torch.cat([model.encode(chunk.to(device)).cpu() for chunk in x.split(_BATCH)])  # (N, d)
    return disentanglement(z, factors[: x.shape[0]], names=names, seed=seed)
