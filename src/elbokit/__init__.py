"""elbokit: latent-variable models trained by the evidence lower bound, and the truth about the bound.

The whole public API::

    import elbokit as ek
    from elbokit.models import LinearGaussian

    ek.elbo(model, guide, x, samples=1, kl="auto", beta=1.0, gradient="reparam")  # -> Bound
    ek.global_elbo(model, q_w, x, y, num_data=N, samples=1)  # one w for all points -> GlobalBound
    ek.iwae(model, guide, x, k=50, gradient="reparam" | "stl" | "dreg")        # -> Bound
    ek.log_marginal(model, guide, x, k=5000)                                   # -> Estimate
    ek.gradient_variance(model, guide, x, params=...)                          # -> {name: GradientStats}
    ek.AmortizedGaussian, ek.LocalGaussian, ek.NonAmortizedGaussian            # guides
    ek.AmortizedFlow, ek.LocalFlow                                             # flow guides (elbokit[flows])
    ek.VAE.mlp(784, 50, hidden=(200, 200), likelihood="bernoulli")             # a model whose encoder is a guide
    ek.fit(vae, vae.encoder, ek.data.load("binarized-mnist"), ek.RunConfig(epochs=10))  # -> FitResult
    ek.Run.open("runs/demo")  # a run directory: .evaluate() .diagnose() .report() .sample() (elbokit.runs)
    ek.BNN(13, (50,), 1, task="regression", estimator="local")  # a Bayesian neural network: q(w) mean-field
    ek.fit_bnn(bnn, ek.data.load_table("boston"), ek.RunConfig(model="bnn"))   # -> FitResult; ek.evaluate_bnn
"""

import importlib
from typing import TYPE_CHECKING, Any

from elbokit import data
from elbokit import distributions as _distributions  # noqa: F401  (registers extra KL pairs)
from elbokit.config import RunConfig
from elbokit.estimators import (
    GlobalBound,
    elbo,
    global_elbo,
    gradient_variance,
    iwae,
    iwae_bound,
    log_marginal,
    log_weights,
)
from elbokit.guides import AmortizedFlow, AmortizedGaussian, LocalFlow, LocalGaussian, NonAmortizedGaussian
from elbokit.models import (
    BNN,
    VAE,
    BayesianLinear,
    BayesianLinearRegression,
    FixedGuide,
    Guide,
    LatentModel,
    LinearGaussian,
)
from elbokit.types import Bound, Estimate, GradientStats

if TYPE_CHECKING:
    from elbokit.runs import Run
    from elbokit.runs.bnn import BNNRun
    from elbokit.runs.bnn_evaluation import BNNEvaluation, evaluate_bnn
    from elbokit.train import FitResult, fit
    from elbokit.train.bnn import fit_bnn

#: Names whose modules load on first use: the trainer and the run directory (``import elbokit.cli`` stays light).
_LAZY = {"fit": "elbokit.train", "FitResult": "elbokit.train", "Run": "elbokit.runs", "fit_bnn": "elbokit.train.bnn",
         "BNNRun": "elbokit.runs.bnn", "BNNEvaluation": "elbokit.runs.bnn_evaluation",
         "evaluate_bnn": "elbokit.runs.bnn_evaluation"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'elbokit' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "BNN",
    "VAE",
    "AmortizedFlow",
    "AmortizedGaussian",
    "BNNEvaluation",
    "BNNRun",
    "BayesianLinear",
    "BayesianLinearRegression",
    "Bound",
    "Estimate",
    "FitResult",
    "FixedGuide",
    "GlobalBound",
    "GradientStats",
    "Guide",
    "LatentModel",
    "LinearGaussian",
    "LocalFlow",
    "LocalGaussian",
    "NonAmortizedGaussian",
    "Run",
    "RunConfig",
    "__version__",
    "data",
    "elbo",
    "evaluate_bnn",
    "fit",
    "fit_bnn",
    "global_elbo",
    "gradient_variance",
    "iwae",
    "iwae_bound",
    "log_marginal",
    "log_weights",
]
