r"""What one training step maximises, and the validation bound.

For the ``elbo`` objective the step's bound is the β_t-ELBO with an analytic KL where one is registered,

.. math::
    \mathcal{L}_t = \mathbb{E}_q[\log p(x \mid z)] - \beta_t\,\mathrm{KL}(q(z \mid x) \,\|\, p(z)),

with free bits replacing the KL by Σ_j max(λ, E_batch KL_j); for ``iwae`` it is IWAE_k.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, kl_divergence

from elbokit.config import RunConfig
from elbokit.estimators import elbo, iwae
from elbokit.models.base import FixedGuide, Guide, LatentModel
from elbokit.train.schedules import Schedule
from elbokit.types import Bound


def _free_bits_kl(q: Distribution, prior: Distribution, free_bits: float) -> Tensor:
    r"""Σ_j max(λ, mean_batch KL(q(z_j|x) ‖ p(z_j))) (Kingma et al. 2016): a scalar."""
    if not (isinstance(q, Independent) and isinstance(prior, Independent)):
        raise ValueError("free bits needs a factorised q and prior (Independent distributions)")
    per_dim = kl_divergence(q.base_dist, prior.base_dist)  # (B, d)
    return per_dim.mean(0).clamp(min=free_bits).sum()


def training_bound(
    model: LatentModel, guide: Guide, x: Tensor, config: RunConfig, schedule: Schedule, step: int
) -> tuple[Bound, Tensor, float]:
    """The step's bound, the loss to minimise and β_t."""
    if config.objective == "iwae":
        bound = iwae(model, guide, x, k=config.k, gradient=config.gradient)  # type: ignore[arg-type]
        return bound, bound.loss, 1.0
    beta = config.beta * schedule.factor(step)
    if schedule.kind != "freebits":
        bound = elbo(model, guide, x, samples=config.k, beta=beta, gradient=config.gradient)  # type: ignore[arg-type]
        return bound, bound.loss, beta
    q = guide(x)
    bound = elbo(model, lambda _x: q, x, samples=config.k, beta=0.0, gradient=config.gradient)  # type: ignore[arg-type]
    loss = bound.loss + beta * _free_bits_kl(q, model.prior(), schedule.free_bits)
    return bound._replace(value=bound.reconstruction - beta * bound.kl), loss, beta


def is_local(guide: object) -> bool:
    """Whether ``guide`` holds one q per training point (LocalGaussian, LocalFlow, NonAmortizedGaussian): it has
    ``select(index)``."""
    return callable(getattr(guide, "select", None)) and isinstance(getattr(guide, "num_points", None), int)


@torch.inference_mode()
def evaluate_bound(
    model: LatentModel, guide: Guide, x: Tensor, *, objective: str = "elbo", k: int = 1, batch_size: int = 1000,
    local: bool = False,
) -> dict[str, float]:
    """Mean ELBO (β = 1, analytic KL), its reconstruction and KL, and IWAE_k for the iwae objective.

    ``local``: x are the training points of a local guide (:func:`is_local`), in order, and each batch's q is
    theirs (``guide.select``)."""
    totals = {"bound": 0.0, "elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
    for start in range(0, x.shape[0], batch_size):
        batch = x[start : start + batch_size]
        if local:
            index = torch.arange(start, start + batch.shape[0], device=x.device)
            guide_batch: Guide = FixedGuide(guide.select(index))  # type: ignore[attr-defined]
        else:
            guide_batch = guide
        b = elbo(model, guide_batch, batch)
        totals["elbo"] += float(b.value.sum())
        totals["reconstruction"] += float(b.reconstruction.sum())
        totals["kl"] += float(b.kl.sum())
        totals["bound"] += float(iwae(model, guide_batch, batch, k=k).value.sum()) if objective == "iwae" else 0.0
    n = x.shape[0]
    out = {name: value / n for name, value in totals.items()}
    if objective != "iwae":
        out["bound"] = out["elbo"]
    return out
