"""Bounds on log p(x) and their gradient estimators."""

from elbokit.estimators._weights import LogWeights, log_weights
from elbokit.estimators.elbo import elbo
from elbokit.estimators.global_elbo import GlobalBound, global_elbo
from elbokit.estimators.gradients import gradient_variance
from elbokit.estimators.iwae import iwae, iwae_bound
from elbokit.estimators.marginal import log_marginal

__all__ = [
    "GlobalBound", "LogWeights", "elbo", "global_elbo", "gradient_variance", "iwae", "iwae_bound", "log_marginal",
    "log_weights",
]  # fmt: skip
