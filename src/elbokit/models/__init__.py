"""Latent-variable models: the protocols and the exact linear-Gaussian reference."""

from elbokit.models.base import Guide, LatentModel
from elbokit.models.linear_gaussian import LinearGaussian, LinearGaussianSample

__all__ = ["Guide", "LatentModel", "LinearGaussian", "LinearGaussianSample"]
