r"""One model's disentanglement in one result: MIG, DCI and the FactorVAE score of its codes, and the latent
that carries each factor (the one a traversal of that factor varies).

.. math::
    j^{(k)} = \arg\max_j I(z_j; v_k)

the latent with the most mutual information with factor k, as in MIG's numerator (Chen et al. 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from torch import Tensor

from elbokit.diagnostics.disentanglement import _check, dci, factor_vae_score, mig


class Disentanglement(NamedTuple):
    """The disentanglement metrics of codes z (N, d) against factors (N, F).

    Attributes:
        mig: the mutual information gap (:func:`elbokit.diagnostics.mig`), in [0, 1].
        dci_disentanglement: DCI's D (:func:`elbokit.diagnostics.dci`), in [0, 1].
        dci_completeness: DCI's C, in [0, 1].
        dci_informativeness: DCI's I, the predictors' held-out accuracy, in [0, 1].
        factor_vae: the FactorVAE score (:func:`elbokit.diagnostics.factor_vae_score`), chance 1 / F.
        factor_names: the F factors' names.
        mig_per_factor: (F,) each factor's normalised gap (nan for a factor with one value).
        latent_for_factor: (F,) the latent j with the largest I(z_j; v_k).
        n: the number of points the metrics were computed on.
    """

    mig: float
    dci_disentanglement: float
    dci_completeness: float
    dci_informativeness: float
    factor_vae: float
    factor_names: tuple[str, ...]
    mig_per_factor: tuple[float, ...]
    latent_for_factor: tuple[int, ...]
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists for the tuples (a nan stays a float nan; write JSON with ``allow_nan``)."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in self._asdict().items()}


def disentanglement(
    z: Tensor, factors: Tensor, *, names: Sequence[str] | None = None, seed: int = 0
) -> Disentanglement:
    """MIG, DCI (random-forest importances) and the FactorVAE score of codes ``z`` against ``factors``.

    Args:
        z: (N, d) codes, e.g. the means of q(z|x) (``VAE.encode``).
        factors: (N, F) non-negative integer factors of the same points.
        names: the F factors' names (default ``factor 0``, ``factor 1``, ...).
        seed: seeds DCI's split and forests and the FactorVAE votes.

    Returns:
        Disentanglement.
    """
    _check(z, factors)
    f = factors.shape[1]
    names = tuple(names) if names is not None else tuple(f"factor {k}" for k in range(f))
    if len(names) != f or not all(isinstance(name, str) for name in names):
        raise ValueError(f"names must be {f} strings, one per factor, got {names!r}")
    m = mig(z, factors)
    d = dci(z, factors, seed=seed)
    score = factor_vae_score(z, factors, seed=seed)
    return Disentanglement(
        mig=m.value, dci_disentanglement=d.disentanglement, dci_completeness=d.completeness,
        dci_informativeness=d.informativeness, factor_vae=score.value, factor_names=names,
        mig_per_factor=tuple(float(v) for v in m.per_factor), n=int(z.shape[0]),
        latent_for_factor=tuple(int(j) for j in m.mutual_information.argmax(0)),
    )  # fmt: skip
