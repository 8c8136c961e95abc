r"""Bayesian neural networks trained by the ELBO of their weights, a latent shared by every data point.

.. math::
    \mathcal L(q) = \sum_{i=1}^N \mathbb E_{q(w)}[\log p(y_i \mid x_i, w)] - \mathrm{KL}(q(w) \,\|\, p(w))
    \approx \frac NB \sum_{i \in \text{batch}} \frac1S \sum_{s=1}^S \log p(y_i \mid x_i, w_s) - \mathrm{KL}

("Bayes by backprop", Blundell et al. 2015), with q a mean-field Gaussian over every weight and bias
(:class:`~elbokit.models.bnn_layers.BayesianLinear`) and the draws w_s made by one of three estimators
(:data:`ESTIMATORS`: weight sampling, local reparameterization, Flipout). A regression network has a learned
homoscedastic noise, a point estimate; a classifier has a Categorical likelihood. Inputs are standardized inside
the network by buffers set from the training data; the likelihood is in y's original units.

With no hidden layer, a Gaussian prior and a fixed noise, the network is Bayesian linear regression
(:class:`~elbokit.models.bayes_linear.BayesianLinearRegression`, its bias a weight on a column of ones), whose ELBO
is exact: the oracle of these estimators.

References:
    Blundell, Cornebise, Kavukcuoglu & Wierstra, "Weight Uncertainty in Neural Networks", ICML 2015.
    Kingma, Salimans & Welling, "Variational Dropout and the Local Reparameterization Trick", NeurIPS 2015.
    Wen, Vicol, Ba, Tran & Grosse, "Flipout", ICLR 2018.
    Hernández-Lobato & Adams, "Probabilistic Backpropagation", ICML 2015 (the UCI protocol: standardized
    inputs and targets, the test log-likelihood in the original units).
    Depeweg et al., "Decomposition of Uncertainty in Bayesian Deep Learning", ICML 2018 (entropy = aleatoric +
    mutual information).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Normal

from elbokit.models._checks import check_batch, check_positive_int, check_values
from elbokit.models.bnn_layers import (
    ESTIMATORS,
    BayesianLinear,
    Estimator,
    GaussianPrior,
    Prior,
    ScaleMixturePrior,
    check_estimator,
    parse_prior,
)
from elbokit.models.bnn_predictive import Prediction
from elbokit.types import Gradient, GradientStats

if TYPE_CHECKING:
    from elbokit.estimators.global_elbo import GlobalBound

__all__ = ["BNN", "ESTIMATORS", "BayesianLinear", "GaussianPrior", "Prediction", "ScaleMixturePrior", "parse_prior"]

TASKS = ("regression", "classification")


def _log_noise(noise_scale: float) -> float:
    if isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float)) or not 0 < noise_scale < math.inf:
        raise ValueError(f"noise_scale must be a finite number > 0, got {noise_scale!r}")
    return math.log(noise_scale)


class BNN(nn.Module):
    r"""A Bayesian multilayer perceptron: BayesianLinear layers with ``activation()`` between them.

    .. math::
        z = (x - \bar x) / s_x, \quad f = W_L\, a(\cdots a(W_1 z + b_1) \cdots) + b_L, \qquad
        y \sim \mathcal N(\bar y + s_y f, (s_y \sigma)^2) \ \text{(regression)}, \quad
        y \sim \mathrm{Categorical}(\mathrm{softmax}(f)) \ \text{(classification)}

    The noise σ (in standardized units) is ``exp(log_noise)``, a point estimate learned with q. Buffers
    ``x_mean``, ``x_std`` (in,) and, for regression, ``y_mean``, ``y_std`` () are in the state dict; they
    default to 0 and 1 and are set by :meth:`standardize`.

    Args:
        in_features: the inputs' size, >= 1.
        hidden: the hidden layers' widths, each >= 1; ``()`` for a linear model.
        out_features: 1 for regression, the number of classes (>= 2) for classification.
        task: ``"regression"`` or ``"classification"``.
        activation: the nonlinearity's class, instantiated between every pair of layers.
        prior: p(w) of every weight and bias (``GaussianPrior(1.0)`` when None).
        estimator: the default of :data:`ESTIMATORS` for :meth:`outputs` and :meth:`bound`.
        noise_scale: σ's initial value, standardized units (regression only).
        init_scale: q's initial standard deviation of every weight and bias.
    """

    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor

    def __init__(self, in_features: int, hidden: Sequence[int] = (50,), out_features: int = 1, *,
                 task: str = "regression", activation: type[nn.Module] = nn.ReLU, prior: Prior | None = None,
                 estimator: str = "local", noise_scale: float = 1.0, init_scale: float = 1e-3) -> None:  # fmt: skip
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ValueError(f"hidden must be a sequence of layer widths, got {hidden!r}")
        sizes = (in_features, *hidden, out_features)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise ValueError(f"every layer size must be an integer >= 1, got in {in_features}, hidden {tuple(hidden)}, "
                             f"out {out_features}")  # fmt: skip
        if task == "regression" and out_features != 1:
            raise ValueError(f"a regression BNN has out_features 1, got {out_features}")
        if task == "classification" and out_features < 2:
            raise ValueError(f"a classification BNN has out_features = the number of classes >= 2, got {out_features}")
        self.task = task
        self.estimator: Estimator = check_estimator(estimator)
        self.in_features = in_features
        self.out_features = out_features
        self.layers = nn.ModuleList(
            BayesianLinear(n_in, n_out, prior=prior, init_scale=init_scale) for n_in, n_out in pairwise(sizes)
        )
        self.activations = nn.ModuleList(activation() for _ in sizes[2:])
        self.register_buffer("x_mean", torch.zeros(in_features))
        self.register_buffer("x_std", torch.ones(in_features))
        if task == "regression":
            self.log_noise = nn.Parameter(torch.tensor(_log_noise(noise_scale)))
            self.register_buffer("y_mean", torch.zeros(()))
            self.register_buffer("y_std", torch.ones(()))

    @property
    def noise(self) -> Tensor:
        """σ = exp(log_noise), the regression noise in standardized units: a scalar."""
        if self.task != "regression":
            raise ValueError("noise is defined for a regression BNN, got a classification one")
        return self.log_noise.exp()

    @property
    def kl_is_exact(self) -> bool:
        """Whether :meth:`kl` is in closed form (every layer's prior Gaussian)."""
        return all(cast(BayesianLinear, layer).kl_is_exact for layer in self.layers)

    def _dtype_device(self) -> tuple[torch.dtype, torch.device]:
        return self.x_mean.dtype, self.x_mean.device

    def _check_x(self, x: object) -> Tensor:
        dtype, device = self._dtype_device()
        check_batch(x, event_shape=(self.in_features,), dtype=dtype, device=device, owner="the BNN")
        x = cast(Tensor, x)
        if Distribution._validate_args:  # a device sync: only while torch.distributions' checks are on
            check_values(x, "x")
        return x

    def _check_y(self, y: object, batch: int) -> Tensor:
        dtype, device = self._dtype_device()
        if self.task == "regression":
            if not isinstance(y, Tensor) or y.shape != (batch,) or y.dtype != dtype or y.device != device:
                given = f"{tuple(y.shape)} {y.dtype} on {y.device}" if isinstance(y, Tensor) else type(y).__name__
                raise ValueError(f"y must be a ({batch},) {dtype} tensor on {device} (one target per row of x), "
                                 f"got {given}")  # fmt: skip
            if Distribution._validate_args:
                check_values(y, "y")
            return y
        if not isinstance(y, Tensor) or y.shape != (batch,) or y.dtype != torch.int64 or y.device != device:
            given = f"{tuple(y.shape)} {y.dtype} on {y.device}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f"y must be a ({batch},) torch.int64 tensor of class labels on {device}, got {given}")
        if Distribution._validate_args and not bool(((y >= 0) & (y < self.out_features)).all()):
            low, high = int(y.min()), int(y.max())
            raise ValueError(f"labels must lie in [0, {self.out_features}), got values from {low} to {high}")
        return y

    @torch.no_grad()
    def standardize(self, x_train: Tensor, y_train: Tensor | None = None) -> None:
        """Set ``x_mean``, ``x_std`` (and, for regression with ``y_train``, ``y_mean``, ``y_std``) from training data.

        Standard deviations with divisor N - 1; a constant column (std 0, or a single point) gets std 1.
        """
        x_train = self._check_x(x_train)
        std, mean = torch.std_mean(x_train, dim=0)
        self.x_mean.copy_(mean)
        self.x_std.copy_(torch.where(torch.isfinite(std) & (std > 0), std, torch.ones_like(std)))
        if y_train is None:
            return
        y_train = self._check_y(y_train, x_train.shape[0])
        if self.task == "regression":
            y_sd, y_mean = torch.std_mean(y_train)
            self.y_mean.copy_(y_mean)
            self.y_std.copy_(y_sd if bool(torch.isfinite(y_sd) & (y_sd > 0)) else torch.ones_like(y_sd))

    def outputs(self, x: Tensor, *, samples: int = 1, estimator: str | None = None,
                generator: torch.Generator | None = None,
                scales: Sequence[tuple[Tensor, Tensor]] | None = None) -> Tensor:  # fmt: skip
        """The network's outputs f for S draws of the weights, standardized units.

        Args:
            x: (B, in) inputs, original units.
            samples: S >= 1.
            estimator: one of :data:`ESTIMATORS`; the network's ``estimator`` when None.
            generator: the source of all the noise (torch's global generator when None).
            scales: each layer's :meth:`BayesianLinear.scales`, where the caller has them already.

        Returns:
            (S, B, out).
        """
        check_positive_int("samples", samples)
        estimator = check_estimator(self.estimator if estimator is None else estimator)
        x = self._check_x(x)
        z = (x - self.x_mean) / self.x_std  # (B, in)
        h = z.expand(samples, *z.shape)  # (S, B, in)
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = self.activations[i - 1](h)
            h = layer(h, estimator=estimator, generator=generator, scales=None if scales is None else scales[i])
        return h

    def likelihood(self, outputs: Tensor) -> Distribution:
        """p(y | x, w) from outputs (S, B, out): regression ``Normal(y_mean + y_std f, y_std σ)`` over y in its
        original units, classification ``Categorical(logits=f)``; batch (S, B)."""
        if self.task == "regression":
            f = outputs.squeeze(-1)  # (S, B)
            return Normal(self.y_mean + self.y_std * f, (self.y_std * self.noise).expand(f.shape))
        return Categorical(logits=outputs)

    def kl(self, generator: torch.Generator | None = None, *,
           scales: Sequence[tuple[Tensor, Tensor]] | None = None) -> Tensor:  # fmt: skip
        """KL(q ‖ p) of all the weights and biases, a scalar: exact for a Gaussian prior, else a one-draw estimate
        (``scales``: each layer's σ, where the caller has them already)."""
        layers = [cast(BayesianLinear, layer) for layer in self.layers]
        kls = [layer.kl(generator, scales=None if scales is None else scales[i]) for i, layer in enumerate(layers)]
        return torch.stack(kls).sum()

    def bound(self, x: Tensor, y: Tensor, *, num_data: int, samples: int = 1, estimator: str | None = None,
              generator: torch.Generator | None = None) -> GlobalBound:  # fmt: skip
        r"""The ELBO of q over N = ``num_data`` points, estimated on the minibatch (x, y) of B points.

        .. math::
            \hat{\mathcal L} = \frac NB \sum_{i=1}^B \frac1S \sum_{s=1}^S \log p(y_i \mid x_i, w_s) - \mathrm{KL}

        As :func:`elbokit.estimators.global_elbo.global_elbo`: unbiased for the whole set's bound under every
        estimator (each gives every point q's marginal law), and ``loss = -value / N``.

        Args:
            x: (B, in) inputs; y: (B,) float targets (regression) or int64 labels in [0, C) (classification).
            num_data: N >= B.
            samples: S draws of the weights.
            estimator: one of :data:`ESTIMATORS`; the network's ``estimator`` when None.
            generator: the source of all the noise, the KL's draw included.

        Returns:
            :class:`~elbokit.estimators.global_elbo.GlobalBound`, ``kl_method`` "analytic" or "mc".
        """
        # imported here: elbokit.estimators imports elbokit.models (a cycle at import time, not at call time)
        from elbokit.estimators.global_elbo import GlobalBound

        check_positive_int("num_data", num_data)
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        batch = x.shape[0]
        if batch > num_data:
            raise ValueError(f"num_data must be >= the minibatch's {batch} points, got {num_data}")
        scales = [cast(BayesianLinear, layer).scales() for layer in self.layers]  # softplus once per step
        outputs = self.outputs(x, samples=samples, estimator=estimator, generator=generator, scales=scales)
        reconstruction = self.likelihood(outputs).log_prob(y).mean(0)  # (B,)
        kl = self.kl(generator, scales=scales)
        scale = num_data / batch
        total = scale * reconstruction.sum()
        value = total - kl
        return GlobalBound(value=value, per_point=value / num_data, reconstruction=reconstruction,
                           reconstruction_total=total, kl=kl, kl_per_point=kl / num_data, scale=scale,
                           loss=-value / num_data, kl_method="analytic" if self.kl_is_exact else "mc",
                           samples=samples)  # fmt: skip

    @torch.no_grad()
    def predict(self, x: Tensor, *, samples: int = 100, generator: torch.Generator | None = None) -> Prediction:
        """The predictive mean and its uncertainty from S weight draws (see :class:`Prediction`), without autograd.

        The draws use the ``"weights"`` estimator, so that each draw is one network applied to all of x.
        """
        f = self.outputs(x, samples=samples, estimator="weights", generator=generator)  # (S, B, out)
        if self.task == "regression":
            means = self.y_mean + self.y_std * f.squeeze(-1)  # (S, B)
            mean = means.mean(0)
            epistemic = means.var(0, correction=0)
            aleatoric = (self.y_std * self.noise).square().expand_as(mean)
            return Prediction(mean, epistemic, aleatoric, epistemic + aleatoric, self.task, samples)
        probs = f.softmax(-1).mean(0)  # (B, C)
        entropy = Categorical(probs=probs).entropy()  # (B,)
        aleatoric = Categorical(logits=f).entropy().mean(0)  # (B,)
        epistemic = (entropy - aleatoric).clamp_min(0)
        return Prediction(probs, epistemic, aleatoric, entropy, self.task, samples)

    @torch.no_grad()
    def log_predictive(self, x: Tensor, y: Tensor, *, samples: int = 100,
                       generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        r"""The log predictive density of each point, the test log-likelihood of the UCI protocol (no autograd):

        .. math::
            \log \frac1S \sum_{s=1}^S p(y_i \mid x_i, w_s) = \operatorname{logsumexp}_s \log p(y_i \mid x_i, w_s)
            - \log S

        with the ``"weights"`` estimator (one network per draw). Returns (B,), in y's original units.
        """
        x = self._check_x(x)
        y = self._check_y(y, x.shape[0])
        f = self.outputs(x, samples=samples, estimator="weights", generator=generator)
        log_lik = self.likelihood(f).log_prob(y)  # (S, B)
        return torch.logsumexp(log_lik, 0) - math.log(samples)

    def gradient_variance(self, x: Tensor, y: Tensor, *, num_data: int, estimators: Sequence[str] = ESTIMATORS,
                          samples: int = 1, repeats: int = 100, params: Sequence[Tensor] | None = None,
                          generator: torch.Generator | None = None) -> dict[str, GradientStats]:  # fmt: skip
        """Mean, variance and SNR of the gradient of the per-point bound under each estimator, R draws each.

        The gradient is that of ``bound.per_point`` (= -``bound.loss``, the ascent direction), as in
        :func:`elbokit.estimators.gradients.gradient_variance`; the variance does not depend on the sign.

        Args:
            x, y, num_data, samples: as for :meth:`bound`.
            estimators: names from :data:`ESTIMATORS`.
            repeats: R >= 2 independent draws per estimator.
            params: tensors to differentiate; every layer's ``weight_mu`` then ``weight_rho`` (layer by layer)
                when None.
            generator: the source of all the noise.

        Returns:
            One GradientStats per estimator, keyed by its name (also its ``gradient`` field), over the P entries of
            ``params`` flattened and concatenated.
        """
        from elbokit.estimators.gradients import flat_gradient, moments  # see bound(): an import cycle

        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
            raise ValueError(f"repeats must be an integer >= 2, got {repeats!r}")
        if isinstance(estimators, str) or not isinstance(estimators, Sequence) or not estimators:
            raise ValueError(f"estimators must be a non-empty sequence of names from {ESTIMATORS}, got {estimators!r}")
        names = [check_estimator(name) for name in estimators]
        if params is None:
            layers = [cast(BayesianLinear, layer) for layer in self.layers]
            params = [p for layer in layers for p in (layer.weight_mu, layer.weight_rho)]
        checked = list(params)
        if not checked or not all(isinstance(p, Tensor) and p.requires_grad for p in checked):
            raise ValueError("params must be a non-empty sequence of tensors with requires_grad=True")

        def draw(estimator: Estimator) -> Tensor:
            bound = self.bound(x, y, num_data=num_data, samples=samples, estimator=estimator, generator=generator)
            return flat_gradient(bound.per_point, checked)  # (P,)

        stats: dict[str, GradientStats] = {}
        for name in names:
            draws = torch.stack([draw(name) for _ in range(repeats)])  # (R, P)
            stats[name] = moments(draws, cast(Gradient, name))
        return stats
