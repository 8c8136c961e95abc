"""Latent-variable models: the protocols, the exact linear-Gaussian reference, VAEs and their likelihoods."""

from elbokit.distributions.counts import NegativeBinomialMean, ZeroInflatedNegativeBinomial, nb_log_prob
from elbokit.models.base import FixedGuide, Guide, LatentModel
from elbokit.models.bayes_linear import BayesianLinearRegression
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

__all__ = [
    "LIKELIHOODS",
    "VAE",
    "BayesianLinearRegression",
    "Bernoulli",
    "ContinuousBernoulli",
    "CountLikelihood",
    "FixedGuide",
    "Gaussian",
    "Guide",
    "Laplace",
    "LatentModel",
    "Likelihood",
    "LinearGaussian",
    "LinearGaussianSample",
    "NegativeBinomialMean",
    "ZeroInflatedNegativeBinomial",
    "make_likelihood",
    "mlp",
    "nb_log_prob",
]
