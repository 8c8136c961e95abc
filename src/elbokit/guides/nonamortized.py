r"""Non-amortized variational inference as a model's guide: :class:`NonAmortizedGaussian`.

Classical VI keeps one free q_n(z) per data point instead of an encoder (Hoffman et al. 2013, with minibatches:
each step updates the q of the batch's points and the model's global parameters). Such a guide answers for the
training points only; for any other x (a test set, a reconstruction, a diagnostic) it does what VI does for a new
point: q is fitted by maximising that point's ELBO under the model, starting from the prior,

.. math::
    q_x = \arg\max_{q \in \mathcal Q} \; \mathbb E_q[\log p(x \mid z)] - \mathrm{KL}(q \,\|\, p(z)),
    \qquad q^{(0)} = p(z),

by :func:`elbokit.diagnostics.refine` (Adam per point, closed-form KL). A run trained with ``guide="local"`` has
this guide as its model's ``encoder``, so every command (evaluate, diagnose, report, sample) works on it as on an
amortized run; the amortization gap it reports is then the part of the bound that this fit leaves on the table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from elbokit.guides._gaussian import Covariance, LocalGaussian, _check_covariance

#: Optimisation steps and Adam's initial learning rate of the fit of q for a point outside the training set.
FIT_STEPS = 300
FIT_LR = 0.1


class NonAmortizedGaussian(nn.Module):
    """One free Gaussian q per training point (``table``, a :class:`~elbokit.LocalGaussian`), and for any other
    x, q fitted per point by maximising its ELBO from the prior.

    ``select(index)``, ``distribution()`` and ``num_points`` are the table's, so :func:`elbokit.fit` trains it on
    minibatches that carry their points' indices. Calling the guide on x fits q afresh (``steps`` steps of
    :func:`elbokit.diagnostics.refine` from p(z), in the table's covariance family) under the model it was bound
    to (:meth:`bind`; a :class:`~elbokit.models.VAE` binds its encoder itself). The fit draws from torch's global
    generator, so a seeded caller gets the same q each time.

    Args:
        num_points: N, the training points.
        latent_dim: d.
        covariance: ``"diagonal"`` or ``"full"``.
        steps: most steps of the fit for a new point.
        lr: Adam's initial learning rate of that fit.
    """

    def __init__(self, num_points: int, latent_dim: int, *, covariance: Covariance = "diagonal",
                 steps: int = FIT_STEPS, lr: float = FIT_LR, dtype: torch.dtype | None = None) -> None:  # fmt: skip
        super().__init__()
        _check_covariance(covariance)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.table = LocalGaussian(num_points, latent_dim, covariance=covariance, dtype=dtype)
        self.covariance: Covariance = covariance
        self.steps, self.lr = steps, float(lr)
        # The model the fit maximises the ELBO under; kept out of the module tree (it holds this guide).
        self.__dict__["_model"] = None

    def bind(self, model: Any) -> None:
        """Fit new points' q under ``model`` (a LatentModel: ``prior()`` and ``likelihood(z)``)."""
        self.__dict__["_model"] = model

    @property
    def num_points(self) -> int:
        return self.table.num_points

    def select(self, index: Tensor) -> Distribution:
        """The training points ``index``'s q: batch (len(index),)."""
        return self.table.select(index)

    def distribution(self) -> Distribution:
        """Every training point's q: batch (N,)."""
        return self.table.distribution()

    def forward(self, x: Tensor) -> Distribution:
        """q fitted to each point of x (batch (B,), detached): ``steps`` steps of refinement from p(z)."""
        from elbokit.diagnostics.refine import refine  # diagnostics imports guides
        from elbokit.models.base import FixedGuide

        model = self.__dict__["_model"]
        if model is None:
            raise ValueError("this NonAmortizedGaussian is bound to no model: call bind(model) before q(x)")
        # An optimisation per point: autograd on, also when called under torch.inference_mode().
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone() if x.is_inference() else x
            start = model.prior().expand(x.shape[:1])
            return refine(model, FixedGuide(start), x, steps=self.steps, lr=self.lr, family=self.covariance)

    def extra_repr(self) -> str:
        return f"num_points={self.num_points}, covariance={self.covariance}, steps={self.steps}, lr={self.lr:g}"


def fitted_once(guide: Any, x: Tensor) -> Any:
    """The guide to use for the batch x: a :class:`NonAmortizedGaussian` fits q to x once here (every later use
    for x then takes that q, instead of fitting it again); any other guide is returned as it is."""
    from elbokit.models.base import FixedGuide

    return FixedGuide(guide(x)) if isinstance(guide, NonAmortizedGaussian) else guide
