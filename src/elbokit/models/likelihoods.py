r"""Observation models p(x|z): the decoder's output turned into a ``torch.distributions`` object, in one place.

A decoder maps z (..., d) to ``out`` (..., output_size(D)); a :class:`Likelihood` maps ``out`` to a distribution
with batch (...) and event (D,), the D coordinates independent given z (summed by ``Independent``):

.. math::
    \text{bernoulli:}\ x_j \sim \mathrm{Bern}(\sigma(\eta_j)), \quad
    \text{continuous-bernoulli:}\ p(x_j) = C(\lambda_j)\, \lambda_j^{x_j} (1 - \lambda_j)^{1 - x_j},
    \ \lambda_j = \sigma(\eta_j),

.. math::
    \text{gaussian:}\ x_j \sim \mathcal N(\mu_j, s_j^2), \quad \text{laplace:}\ x_j \sim \mathrm{Laplace}(\mu_j, s_j).

The scale s of the Gaussian and the Laplace is a fixed number, ``"learned"`` (one free s_j per coordinate,
shared by all points) or ``"decoder"`` (the decoder outputs it per point: output_size 2D); learned scales are
s = softplus(raw) + min_scale. Specs such as ``"gaussian:0.1"`` or ``"laplace:learned"`` name a likelihood for
configs and the CLI (:func:`make_likelihood`; ``Likelihood.spec()`` is the inverse).

All log densities broadcast: ``likelihood(out).log_prob(x)`` with out (K, B, ...) and x (B, D) is (K, B).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli as _TorchBernoulli
from torch.distributions import ContinuousBernoulli as _TorchContinuousBernoulli
from torch.distributions import Distribution, Independent, Normal
from torch.distributions import Laplace as _TorchLaplace

LIKELIHOODS: tuple[str, ...] = ("bernoulli", "continuous-bernoulli", "gaussian", "laplace", "poisson", "nb", "zinb")
"""The likelihood names a spec can start with."""

_SCALED = ("gaussian", "laplace")
_DEFAULT_MIN_SCALE = 1e-3
_MEAN_CLAMP = 1e-3  # Bernoulli.inverse_mean keeps E[x|z] in [c, 1 - c] so that its logits stay finite


def _inverse_softplus(y: float) -> float:
    """x with softplus(x) = y > 0, stably: y + log(-expm1(-y))."""
    return y + math.log(-math.expm1(-y))


def _broadcasts_into(small: torch.Size, big: torch.Size) -> bool:
    """Whether a tensor of shape ``small`` broadcasts to ``big`` without growing it (``torch.broadcast_shapes``
    goes through symbolic shapes: tens of microseconds a call, and an import of sympy on the first)."""
    return len(small) <= len(big) and all(s in (1, b) for s, b in zip(reversed(small), reversed(big), strict=False))


class _BernoulliLogits(Independent):
    """Independent(Bernoulli(logits), 1) with a faster log_prob than torch's.

    The value is torch's, by the formula torch's binary cross-entropy with logits uses, (1 - x) eta -
    log sigma(eta), negated; torch's ``Bernoulli.log_prob`` materialises the broadcast x and negates the whole
    (K, B, D) array before the event sum. Grey values x in [0, 1] are accepted: the base distribution does not
    validate its samples.
    """

    def __init__(self, logits: Tensor) -> None:
        super().__init__(_TorchBernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    def expand(
        self, batch_shape: torch.Size | list[int] | tuple[int, ...], _instance: Distribution | None = None
    ) -> Distribution:
        return _BernoulliLogits(self.base_dist.logits.expand(*batch_shape, *self.event_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """sum_j x_j log sigma(eta_j) + (1 - x_j) log(1 - sigma(eta_j)) = sum_j log sigma(eta_j) - (1 - x_j) eta_j.

        Under autograd, torch's binary cross-entropy with logits, whose backward is one fused pass (training
        steps at batch 128 ran 0.4 ms slower through the three-pass form's backward). Without autograd, three
        passes over the (..., D) logits (log-sigmoid, a fused multiply-add, the sum) where the cross-entropy takes
        five: log p(x) at k = 5000 spends most of its non-matmul time here.
        """
        logits = self.base_dist.logits
        if torch.is_grad_enabled() and (logits.requires_grad or value.requires_grad):
            logits, value = torch.broadcast_tensors(logits, value)
            return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)
        out = F.logsigmoid(logits)
        complement = 1 - value
        if _broadcasts_into(complement.shape, out.shape):
            out = out.addcmul_(logits, complement, value=-1)
        else:
            out = torch.addcmul(out, logits, complement, value=-1)
        return out.sum(-1)


class Likelihood(nn.Module):
    """Base class: maps a decoder output (..., output_size(D)) to p(x|z) with batch (...), event (D,).

    Attributes:
        name: the spec name, one of :data:`LIKELIHOODS`.
        support: ``"unit"`` (x in [0, 1]) or ``"real"``.
    """

    name: str = ""
    support: str = "real"

    def output_size(self, data_dim: int) -> int:
        """Width the decoder's output must have for data of dimension D: D unless a subclass says otherwise."""
        return data_dim

    def forward(self, out: Tensor) -> Distribution:
        """p(x|z) from the decoder output ``out`` (..., output_size(D)): batch (...), event (D,)."""
        raise NotImplementedError

    def mean(self, out: Tensor) -> Tensor:
        """E[x|z]: (..., D)."""
        return self(out).mean

    def inverse_mean(self, mean: Tensor) -> Tensor:
        """The decoder output (its first D entries, those of the location) at which E[x|z] = ``mean``: (D,) -> (D,).

        Used to start a decoder at the data mean (``VAE.init_output_bias``).
        """
        raise NotImplementedError

    def check(self, x: Tensor) -> None:
        """Raise a one-line ValueError if x holds NaN or infinite values or values outside the support.

        One device sync when x is good (the failure's description costs more).
        """
        bad_values = ~torch.isfinite(x)
        if self.support == "unit":
            bad_values |= (x < 0) | (x > 1)
        if not bool(bad_values.any()):
            return
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"the {self.name} likelihood needs finite x; {bad} values are NaN or infinite")
        if self.support == "unit":
            outside = (x < 0) | (x > 1)
            if bool(outside.any()):
                lo, hi = float(x[outside].min()), float(x[outside].max())
                raise ValueError(
                    f"the {self.name} likelihood needs x in [0, 1]; {int(outside.sum())} values lie outside, "
                    f"in [{lo}, {hi}]"
                )

    def spec(self) -> str:
        """A string that :func:`make_likelihood` turns back into an equal likelihood."""
        return self.name

    def extra_repr(self) -> str:
        return repr(self.spec())


class Bernoulli(Likelihood):
    r"""x_j ~ Bernoulli(sigmoid(eta_j)), eta = the decoder's logits (D outputs).

    For grey values x in [0, 1] log p is the cross-entropy -sum_j BCE(eta_j, x_j): not a normalised density
    over [0, 1] (see :class:`ContinuousBernoulli` for one), but the usual reading of intensities.
    """

    name = "bernoulli"
    support = "unit"

    def forward(self, out: Tensor) -> Distribution:
        return _BernoulliLogits(out)

    def mean(self, out: Tensor) -> Tensor:
        """sigmoid(eta): (..., D)."""
        return torch.sigmoid(out)

    def inverse_mean(self, mean: Tensor) -> Tensor:
        """logit(clamp(mean, c, 1 - c)), c = 1e-3 (Burda et al. 2016 start the output bias there)."""
        return torch.logit(mean.clamp(_MEAN_CLAMP, 1 - _MEAN_CLAMP))


class ContinuousBernoulli(Likelihood):
    r"""The continuous Bernoulli, a normalised density on [0, 1] (Loaiza-Ganem & Cunningham 2019).

    .. math::
        p(x_j \mid \lambda_j) = C(\lambda_j)\, \lambda_j^{x_j} (1 - \lambda_j)^{1 - x_j}, \quad
        C(\lambda) = \frac{2 \operatorname{artanh}(1 - 2\lambda)}{1 - 2\lambda}, \quad \lambda_j = \sigma(\eta_j)

    Its mean is not lambda: E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)).

    References:
        Loaiza-Ganem & Cunningham, "The continuous Bernoulli: fixing a pervasive error in variational
        autoencoders", NeurIPS 2019.
    """

    name = "continuous-bernoulli"
    support = "unit"

    def forward(self, out: Tensor) -> Distribution:
        return Independent(_TorchContinuousBernoulli(logits=out), 1)

    def inverse_mean(self, mean: Tensor) -> Tensor:
        """Logits eta with E[x] = mean, by bisection in float64 (E[x] increases with eta).

        E[x] ~ 1 - 1/eta for large eta, so very skewed means need huge logits: eta is kept in [-30, 30], where
        E[x] spans about [0.033, 0.967]; a mean outside that range gets the nearest end.
        """
        target = mean.detach().to("cpu", torch.float64)  # a one-off: on the CPU, where float64 always exists
        lo, hi = torch.full_like(target, -30.0), torch.full_like(target, 30.0)
        for _ in range(64):  # the bracket halves each time: 60 / 2^64 is below float64 resolution at |eta| ~ 1
            mid = 0.5 * (lo + hi)
            below = _TorchContinuousBernoulli(logits=mid, validate_args=False).mean < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(mean.device, mean.dtype)


class _LocationScale(Likelihood):
    """Shared by Gaussian and Laplace: location mu = the decoder's first D outputs, scale fixed, learned or
    from the decoder."""

    support = "real"
    _family: type[Normal] | type[_TorchLaplace]

    def __init__(
        self, scale: float | str = 1.0, *, data_dim: int | None = None, min_scale: float | None = None
    ) -> None:
        super().__init__()
        if isinstance(scale, str):
            if scale not in ("learned", "decoder"):
                raise ValueError(f"scale must be a number > 0, 'learned' or 'decoder', got {scale!r}")
        elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise ValueError(f"scale must be a number > 0, 'learned' or 'decoder', got {scale!r}")
        if min_scale is not None and (isinstance(scale, (int, float)) or not 0 <= min_scale < math.inf):
            raise ValueError(f"min_scale applies to 'learned' or 'decoder' scales, as a number >= 0; got {min_scale!r}")
        self.scale: float | str = scale if isinstance(scale, str) else float(scale)
        self.min_scale = _DEFAULT_MIN_SCALE if min_scale is None else float(min_scale)
        self.raw_scale: nn.Parameter | None = None
        if scale == "learned":
            if data_dim is None or isinstance(data_dim, bool) or not isinstance(data_dim, int) or data_dim < 1:
                raise ValueError(f"a learned scale needs data_dim, an integer >= 1, got {data_dim!r}")
            # softplus(raw) + min_scale = 1 at the start
            init = _inverse_softplus(max(1.0 - self.min_scale, 1e-6))
            self.raw_scale = nn.Parameter(torch.full((data_dim,), init))

    def output_size(self, data_dim: int) -> int:
        """2D with a scale from the decoder (D locations, then D raw scales), else D."""
        return 2 * data_dim if self.scale == "decoder" else data_dim

    def _loc_scale(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """mu (..., D) and s broadcastable to it."""
        if self.scale == "decoder":
            if out.shape[-1] % 2:
                raise ValueError(f"a decoder scale needs 2D outputs (D locations, D raw scales), got {out.shape[-1]}")
            loc, raw = out.chunk(2, dim=-1)
            return loc, F.softplus(raw) + self.min_scale
        if self.raw_scale is not None:
            if out.shape[-1] != self.raw_scale.shape[0]:
                raise ValueError(
                    f"this likelihood learns {self.raw_scale.shape[0]} scales; the decoder gave {out.shape[-1]} outputs"
                )
            return out, F.softplus(self.raw_scale) + self.min_scale  # (D,)
        assert isinstance(self.scale, float)
        return out, out.new_full((), self.scale).expand_as(out)

    @property
    def learned_scale(self) -> Tensor | None:
        """s = softplus(raw) + min_scale for ``scale="learned"``: (D,); else None."""
        return None if self.raw_scale is None else F.softplus(self.raw_scale) + self.min_scale

    def forward(self, out: Tensor) -> Distribution:
        loc, scale = self._loc_scale(out)
        return Independent(self._family(loc, scale), 1)

    def mean(self, out: Tensor) -> Tensor:
        """mu: (..., D)."""
        return self._loc_scale(out)[0]

    def inverse_mean(self, mean: Tensor) -> Tensor:
        """mu = mean."""
        return mean.clone()

    def spec(self) -> str:
        if isinstance(self.scale, float):
            return f"{self.name}:{self.scale!r}"
        suffix = "" if self.min_scale == _DEFAULT_MIN_SCALE else f":{self.min_scale!r}"
        return f"{self.name}:{self.scale}{suffix}"


class Gaussian(_LocationScale):
    r"""x_j ~ N(mu_j, s_j^2): log p = -sum_j [(x_j - mu_j)^2 / (2 s_j^2) + log s_j + log(2 pi) / 2].

    Args:
        scale: s: a fixed number > 0, ``"learned"`` (one s_j per coordinate, an ``nn.Parameter`` starting at 1)
            or ``"decoder"`` (per point from the decoder, which then outputs 2D values).
        data_dim: D; needed (only) for ``scale="learned"``, which creates its D parameters at once so that an
            optimiser built from ``parameters()`` sees them.
        min_scale: floor added to learned or decoder scales, s = softplus(raw) + min_scale (default 1e-3).
    """

    name = "gaussian"
    _family = Normal


class Laplace(_LocationScale):
    r"""x_j ~ Laplace(mu_j, s_j): log p = -sum_j [|x_j - mu_j| / s_j + log(2 s_j)].

    Args: as for :class:`Gaussian`.
    """

    name = "laplace"
    _family = _TorchLaplace


def make_likelihood(spec: str, data_dim: int | None = None) -> Likelihood:
    """A likelihood from its spec ``NAME[:SCALE[:MIN_SCALE]]``.

    NAME is one of :data:`LIKELIHOODS`; SCALE (Gaussian and Laplace only) is a number, ``learned`` or
    ``decoder`` (default 1.0); MIN_SCALE is the floor of a learned or decoder scale. Examples: ``"bernoulli"``,
    ``"gaussian:0.1"``, ``"gaussian:learned"``, ``"laplace:decoder:1e-4"``. Counts
    (:mod:`elbokit.models.counts`): ``"poisson"``, ``"nb[:gene|cell|THETA]"``, ``"zinb[:gene|cell|THETA]"``.

    Args:
        spec: the spec string.
        data_dim: D; needed for a learned scale.
    """
    valid = ("bernoulli, continuous-bernoulli, gaussian[:SCALE|:learned|:decoder], laplace[:SCALE|:learned|:decoder], "
             "poisson, nb[:gene|:cell|:THETA], zinb[:gene|:cell|:THETA]")
    if not isinstance(spec, str):
        raise ValueError(f"a likelihood spec must be a string, got {type(spec).__name__}")
    name, *options = spec.strip().lower().split(":")
    if name in ("poisson", "nb", "zinb"):
        from elbokit.models.counts import make_count_likelihood  # counts imports this module

        return make_count_likelihood(name, options, data_dim)
    if name not in LIKELIHOODS or len(options) > (2 if name in _SCALED else 0):
        raise ValueError(f"unknown likelihood {spec!r}; valid: {valid}")
    if name == "bernoulli":
        return Bernoulli()
    if name == "continuous-bernoulli":
        return ContinuousBernoulli()
    scale: float | str = options[0] if options else 1.0
    if scale not in ("learned", "decoder"):
        try:
            scale = float(scale)
        except ValueError:
            raise ValueError(f"unknown likelihood {spec!r}: SCALE must be a number, learned or decoder") from None
    min_scale: float | None = None
    if len(options) == 2:
        try:
            min_scale = float(options[1])
        except ValueError:
            raise ValueError(f"unknown likelihood {spec!r}: MIN_SCALE must be a number") from None
    family = Gaussian if name == "gaussian" else Laplace
    return family(scale, data_dim=data_dim, min_scale=min_scale)
