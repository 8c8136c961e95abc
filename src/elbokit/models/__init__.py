"""Latent-variable models: the protocols, the exact linear-Gaussian reference, VAEs and their likelihoods."""

from typing import TYPE_CHECKING, Any

from elbokit.distributions.counts import NegativeBinomialMean, ZeroInflatedNegativeBinomial, nb_log_prob
from elbokit.models.base import FixedGuide, Guide, LatentModel
from elbokit.models.bayes_linear import BayesianLinearRegression
from elbokit.models.bnn_layers import BayesianLinear, GaussianPrior, ScaleMixturePrior, parse_prior
from elbokit.models.counts import CountLikelihood
from elbokit.models.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    ContinuousBernoulli,
    Gaussian,
    Laplace,
    Likelihood,
    make_likelihood,
)
from elbokit.models.linear_gaussian import LinearGaussian, LinearGaussianSample
from elbokit.models.mlp import mlp
from elbokit.models.vae import VAE

if TYPE_CHECKING:
    from elbokit.models.bnn import BNN, Prediction


def __getattr__(name: str) -> Any:
    # The network loads on first use: it builds on the estimators, which build on this package's checks.
    if name in ("BNN", "Prediction"):
        from elbokit.models import bnn

        return getattr(bnn, name)
    raise AttributeError(f"module 'elbokit.models' has no attribute {name!r}")

__all__ = [
    "BNN",
    "LIKELIHOODS",
    "VAE",
    "BayesianLinear",
    "BayesianLinearRegression",
    "Bernoulli",
    "ContinuousBernoulli",
    "CountLikelihood",
    "FixedGuide",
    "Gaussian",
    "GaussianPrior",
    "Guide",
    "Laplace",
    "LatentModel",
    "Likelihood",
    "LinearGaussian",
    "LinearGaussianSample",
    "NegativeBinomialMean",
    "Prediction",
    "ScaleMixturePrior",
    "ZeroInflatedNegativeBinomial",
    "make_likelihood",
    "mlp",
    "nb_log_prob",
    "parse_prior",
]
