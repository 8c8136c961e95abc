r"""The layer of a Bayesian neural network: a linear map whose weights have a mean-field Gaussian q, and its priors.

.. math::
    q(W, b) = \prod_{jk} \mathcal N(W_{jk}; \mu_{jk}, \sigma_{jk}^2) \prod_j \mathcal N(b_j; \mu^b_j, (\sigma^b_j)^2),
    \qquad \sigma = \mathrm{softplus}(\rho)

Three estimators of the pre-activations a = h Wᵀ + b for a batch of inputs h, S Monte-Carlo samples at once; each
gives every point the same marginal distribution as weights drawn from q, so each is unbiased for the ELBO's data
term, and they differ only in how the noise of different points is correlated:

- ``"weights"``: one draw of (W, b) per sample s, shared by the B points (Blundell et al. 2015).
- ``"local"``: the local reparameterization trick (Kingma, Salimans & Welling 2015): for a Gaussian q the
  pre-activations are Gaussian, a_ij ~ N(h_i μ_jᵀ + μ^b_j, h_i² (σ_j²)ᵀ + (σ^b_j)²), drawn independently per point.
- ``"flipout"`` (Wen et al. 2018): one shared perturbation ΔW = σ ∘ ε per sample, made independent-looking
  across points by random signs, a_i = h_i μᵀ + μ^b + r_i ∘ ((h_i ∘ s_i) ΔWᵀ + Δb), r_i, s_i uniform on {±1}. As ε is
  symmetric, ΔW ∘ r_i s_iᵀ has q's law for every point.

References:
    Blundell, Cornebise, Kavukcuoglu & Wierstra, "Weight Uncertainty in Neural Networks", ICML 2015.
    Kingma, Salimans & Welling, "Variational Dropout and the Local Reparameterization Trick", NeurIPS 2015.
    Wen, Vicol, Ba, Tran & Grosse, "Flipout: Efficient Pseudo-Independent Weight Perturbations on
    Mini-Batches", ICLR 2018.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal, kl_divergence
from torch.nn import functional as F

Estimator = Literal["local", "weights", "flipout"]
ESTIMATORS: tuple[Estimator, ...] = ("local", "weights", "flipout")
"""The estimators of a Bayesian layer's outputs, see the module's docstring."""


def check_estimator(estimator: object) -> Estimator:
    """Return ``estimator`` if it names one of :data:`ESTIMATORS`, else raise a one-line ValueError."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be 'local', 'weights' or 'flipout', got {estimator!r}")
    return estimator


def _finite_positive(name: str, value: float) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < float(value) < math.inf
    if not ok:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class GaussianPrior:
    """p(w) = N(0, scale²) for every weight and bias; its KL with a Gaussian q is in closed form.

    Args:
        scale: the prior standard deviation, finite > 0.
    """

    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _finite_positive("prior scale", self.scale))

    kl_is_exact = True

    def distribution(self, like: Tensor) -> Distribution:
        """p(w) for one weight, batch (): broadcasts against any w of ``like``'s dtype and device."""
        return Normal(like.new_zeros(()), like.new_tensor(self.scale), validate_args=False)  # checked at __init__


@dataclass(frozen=True)
class ScaleMixturePrior:
    r"""The scale mixture of Blundell et al. (2015) for every weight and bias:

    .. math::
        p(w) = \pi\, \mathcal N(w; 0, s_1^2) + (1 - \pi)\, \mathcal N(w; 0, s_2^2)

    a wide component and a narrow one (s_2 ≪ s_1) that pulls weights to zero. KL(q ‖ p) has no closed form.

    Args:
        pi: the weight of the first component, 0 < pi < 1.
        scale1, scale2: the components' standard deviations, finite > 0.

    References:
        Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015, section 3.3.
    """

    pi: float = 0.5
    scale1: float = 1.0
    scale2: float = 0.0025

    def __post_init__(self) -> None:
        if isinstance(self.pi, bool) or not isinstance(self.pi, (int, float)) or not 0 < self.pi < 1:
            raise ValueError(f"mixture weight pi must be a number with 0 < pi < 1, got {self.pi!r}")
        object.__setattr__(self, "pi", float(self.pi))
        object.__setattr__(self, "scale1", _finite_positive("mixture scale1", self.scale1))
        object.__setattr__(self, "scale2", _finite_positive("mixture scale2", self.scale2))

    kl_is_exact = False

    def distribution(self, like: Tensor) -> Distribution:
        """p(w) for one weight, batch (): ``MixtureSameFamily`` of two zero-mean Normals; broadcasts against any w."""
        # the parameters were checked at __init__: torch's checks (a device sync each) would only repeat them
        mixing = Categorical(probs=like.new_tensor([self.pi, 1 - self.pi]), validate_args=False)
        components = Normal(like.new_zeros(2), like.new_tensor([self.scale1, self.scale2]), validate_args=False)
        return MixtureSameFamily(mixing, components, validate_args=False)


Prior = GaussianPrior | ScaleMixturePrior

_NUMBER = r"\s*([^,]+?)\s*"


def parse_prior(text: str) -> Prior:
    """A prior from its text form: ``normal`` (scale 1), ``normal:S``, ``mixture`` (0.5, 1, 0.0025) or
    ``mixture:PI,S1,S2``, with S, S1, S2 finite > 0 and 0 < PI < 1. Raises a one-line ValueError otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"prior must be a string such as 'normal:1' or 'mixture:0.5,1,0.0025', got {text!r}")
    spec = text.strip().lower()
    expected = "'normal', 'normal:S', 'mixture' or 'mixture:PI,S1,S2'"
    try:
        if spec == "normal":
            return GaussianPrior()
        if spec == "mixture":
            return ScaleMixturePrior()
        if match := re.fullmatch(rf"normal:{_NUMBER}", spec):
            return GaussianPrior(float(match.group(1)))
        if match := re.fullmatch(rf"mixture:{_NUMBER},{_NUMBER},{_NUMBER}", spec):
            pi, scale1, scale2 = (float(g) for g in match.groups())
            return ScaleMixturePrior(pi, scale1, scale2)
    except ValueError as error:  # float() of a non-number, or a value out of range
        raise ValueError(f"prior must be {expected}, got {text!r}: {error}") from None
    raise ValueError(f"prior must be {expected}, got {text!r}")


def _inverse_softplus(y: float) -> float:
    """ρ with softplus(ρ) = y > 0: log(expm1(y))."""
    return math.log(math.expm1(y))


def _signs(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Independent uniform ±1 of ``like``'s dtype and device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=like.device, dtype=like.dtype)
    return 2 * bits - 1


class BayesianLinear(nn.Module):
    r"""A linear layer with a mean-field Gaussian q over its weight (out, in) and bias (out,).

    Parameters ``weight_mu``, ``weight_rho``, ``bias_mu``, ``bias_rho``; the standard deviations are
    softplus(ρ). The means start as ``nn.Linear``'s default (uniform on ±1/√in), the standard deviations at
    ``init_scale`` (1e-3 by default): a network that starts nearly deterministic trains like an ordinary one while
    the KL term opens the variances up; large initial variances drown the data term in noise (Blundell et al. 2015
    start at softplus(-3) ≈ 0.05 and smaller, for the same reason).

    Args:
        in_features, out_features: the layer's sizes, >= 1.
        prior: p(w) of every weight and bias; ``GaussianPrior(1.0)`` when None.
        init_scale: q's initial standard deviation of every weight and bias, finite > 0.
    """

    def __init__(self, in_features: int, out_features: int, *, prior: Prior | None = None,
                 init_scale: float = 1e-3) -> None:  # fmt: skip
        super().__init__()
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {size!r}")
        prior = GaussianPrior() if prior is None else prior
        if not isinstance(prior, (GaussianPrior, ScaleMixturePrior)):
            raise ValueError(f"prior must be a GaussianPrior or a ScaleMixturePrior, got {type(prior).__name__}")
        self.in_features = in_features
        self.out_features = out_features
        self.prior: Prior = prior
        self.init_scale = _finite_positive("init_scale", init_scale)
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_rho = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_rho = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Means as ``nn.Linear`` initialises its weight and bias, standard deviations ``init_scale``."""
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))  # U(±1/√in), nn.Linear's default
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_rho, _inverse_softplus(self.init_scale))
        nn.init.constant_(self.bias_rho, _inverse_softplus(self.init_scale))

    @property
    def weight_scale(self) -> Tensor:
        """σ of the weight, softplus(ρ): (out, in)."""
        return F.softplus(self.weight_rho)

    @property
    def bias_scale(self) -> Tensor:
        """σ of the bias, softplus(ρ): (out,)."""
        return F.softplus(self.bias_rho)

    @property
    def kl_is_exact(self) -> bool:
        """Whether :meth:`kl` is in closed form (a Gaussian prior) or a one-draw Monte-Carlo estimate."""
        return self.prior.kl_is_exact

    def scales(self) -> tuple[Tensor, Tensor]:
        """(σ of the weight, σ of the bias): computed once per step and handed to :meth:`forward` and :meth:`kl`,
        which would otherwise each take softplus (and its backward) over every parameter."""
        return self.weight_scale, self.bias_scale

    def forward(self, h: Tensor, *, estimator: str = "local", generator: torch.Generator | None = None,
                scales: tuple[Tensor, Tensor] | None = None) -> Tensor:  # fmt: skip
        """Pre-activations h Wᵀ + b of S samples of the weights' noise (see the module's docstring).

        Args:
            h: (S, B, in) inputs, one row of S per Monte-Carlo sample.
            estimator: ``"local"``, ``"weights"`` or ``"flipout"``.
            generator: the source of every random number drawn here (torch's global one when None).
            scales: :meth:`scales`, where the caller has them already.

        Returns:
            (S, B, out).
        """
        estimator = check_estimator(estimator)
        if not isinstance(h, Tensor) or h.dim() != 3 or h.shape[-1] != self.in_features:
            given = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(f"h must have shape (S, B, {self.in_features}), got {given}")
        samples, batch = h.shape[0], h.shape[1]
        w_mu, b_mu = self.weight_mu, self.bias_mu
        w_sigma, b_sigma = self.scales() if scales is None else scales
        if estimator == "weights":
            eps_w = torch.randn((samples, *w_mu.shape), generator=generator, dtype=h.dtype, device=h.device)
            eps_b = torch.randn((samples, 1, self.out_features), generator=generator, dtype=h.dtype, device=h.device)
            weight = w_mu + w_sigma * eps_w  # (S, out, in)
            bias = b_mu + b_sigma * eps_b  # (S, 1, out)
            return torch.baddbmm(bias, h, weight.transpose(1, 2))  # (S, B, out)
        mean = F.linear(h, w_mu, b_mu)  # (S, B, out)
        if estimator == "local":
            variance = F.linear(h.square(), w_sigma.square(), b_sigma.square())  # (S, B, out)
            eps = torch.randn(mean.shape, generator=generator, dtype=h.dtype, device=h.device)
            return mean + variance.sqrt() * eps
        eps_w = torch.randn((samples, *w_mu.shape), generator=generator, dtype=h.dtype, device=h.device)
        eps_b = torch.randn((samples, 1, self.out_features), generator=generator, dtype=h.dtype, device=h.device)
        signs_in = _signs((samples, batch, self.in_features), h, generator)  # s_i
        signs_out = _signs((samples, batch, self.out_features), h, generator)  # r_i
        delta_w = w_sigma * eps_w  # (S, out, in): one perturbation per sample
        perturbation = torch.baddbmm(b_sigma * eps_b, h * signs_in, delta_w.transpose(1, 2))  # (S, B, out)
        return mean + signs_out * perturbation

    def kl(self, generator: torch.Generator | None = None, *, scales: tuple[Tensor, Tensor] | None = None) -> Tensor:
        r"""KL(q ‖ p) summed over the weight and the bias: a scalar.

        Closed form (``kl_divergence(Normal, Normal)``) for a :class:`GaussianPrior`; for a
        :class:`ScaleMixturePrior` the one-draw Monte-Carlo estimate log q(w) - log p(w) at a fresh
        reparameterized w = μ + σ ε, ε from ``generator`` (unbiased, with a pathwise gradient).
        """
        w_sigma, b_sigma = self.scales() if scales is None else scales
        total = self.weight_mu.new_zeros(())
        for mu, sigma in ((self.weight_mu, w_sigma), (self.bias_mu, b_sigma)):
            q = Normal(mu, sigma)
            p = self.prior.distribution(mu)
            if self.kl_is_exact:
                total = total + kl_divergence(q, p).sum()
            else:
                eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
                w = mu + sigma * eps
                total = total + (q.log_prob(w) - p.log_prob(w)).sum()
        return total

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, prior={self.prior}"
