"""elbokit: latent-variable models trained by the evidence lower bound, and the truth about the bound.

The whole public API::

    import elbokit as ek
    from elbokit.models import LinearGaussian

    ek.elbo(model, guide, x, samples=1, kl="auto", beta=1.0, gradient="reparam")  # -> Bound
    ek.iwae(model, guide, x, k=50, gradient="reparam" | "stl" | "dreg")        # -> Bound
    ek.log_marginal(model, guide, x, k=5000)                                   # -> Estimate
    ek.gradient_variance(model, guide, x, params=...)                          # -> {name: GradientStats}
    ek.AmortizedGaussian, ek.LocalGaussian                                     # guides
"""

from elbokit import distributions as _distributions  # noqa: F401  (registers extra KL pairs)
from elbokit.estimators import elbo, gradient_variance, iwae, iwae_bound, log_marginal, log_weights
from elbokit.guides import AmortizedGaussian, LocalGaussian
from elbokit.models import Guide, LatentModel, LinearGaussian
from elbokit.types import Bound, Estimate, GradientStats

__version__ = "0.1.0"

__all__ = [
    "AmortizedGaussian",
    "Bound",
    "Estimate",
    "GradientStats",
    "Guide",
    "LatentModel",
    "LinearGaussian",
    "LocalGaussian",
    "__version__",
    "elbo",
    "gradient_variance",
    "iwae",
    "iwae_bound",
    "log_marginal",
    "log_weights",
]
