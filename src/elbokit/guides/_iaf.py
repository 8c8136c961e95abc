r"""The distribution of a flow guide, and its inverse autoregressive transforms (on ``zuko``).

A flow guide draws u from a Gaussian base and pushes it through K affine inverse-autoregressive steps
(Kingma et al. 2016), each conditioned on a context vector c:

.. math::
    z = T(u) = t_K \circ \dots \circ t_1(u), \qquad
    t_k(u)_i = u_i \exp(a_{k,i}(u_{<i}, c)) + b_{k,i}(u_{<i}, c),

    \log q(z) = \log q_0(u) - \sum_k \log\left|\det \frac{\partial t_k}{\partial u}\right|
              = \log q_0(u) - \sum_k \sum_i a_{k,i}.

Each step is ``zuko``'s ``MaskedAutoregressiveTransform`` (a MADE network for (a, b), Germain et al. 2015; the
scale bounded to (1e-3, 1e3) by zuko's ``MonotonicAffineTransform``) used in the sampling direction: in zuko's
terms the flow's data-to-base transform is ``LazyInverse`` of the MAF transforms, i.e. an IAF. Consecutive steps
reverse the order of the coordinates.

What is cheap (one network pass per step, not sequential in d):

- ``rsample``, ``rsample_and_log_prob``, and ``log_prob`` of the very tensor the last ``rsample`` returned
  (``FlowDistribution`` keeps log q of its last reparameterised draw and matches it by identity; a copy, a view
  or ``z.detach()`` is another tensor);
- ``sample``.

What is not: ``log_prob`` of any other z inverts T, d sequential passes per step (still exact and
differentiable in z and in the parameters). zuko's own ``NormalizingFlow`` would make ``log_prob`` of its own
draw sequential too: its autoregressive transforms are built with torch's transform cache off.

References:
    Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling, "Improved variational inference with inverse
    autoregressive flow", NeurIPS 2016.
    Germain, Gregor, Murray & Larochelle, "MADE: masked autoencoder for distribution estimation", ICML 2015.
    Rozet et al., "Zuko: normalizing flows in PyTorch", 2022, https://github.com/probabilists/zuko.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, cast

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

_Shape = torch.Size | list[int] | tuple[int, ...]

MISSING_ZUKO = "flow guides need the optional extra: pip install 'elbokit[flows]'"


class Bijection(Protocol):
    """What a flow's transform offers (as zuko's transforms do): y = t(x), (y, log|det dt/dx|), and t^{-1}."""

    def __call__(self, x: Tensor) -> Tensor: ...

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    @property
    def inv(self) -> Bijection: ...


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed (a ValueError too: bad input for the CLI, exit status 2)."""


def _zuko_transforms() -> tuple[type[nn.Module], Any]:
    """zuko's (MaskedAutoregressiveTransform, ComposedTransform), imported only when a flow is built.

    Importing zuko switches torch.distributions' argument checks off for the whole process (zuko 1.6 sets
    ``Distribution._validate_args = False`` in ``zuko.distributions``); the switch is put back as it was, so
    that a flow guide does not silently disable the checks of every other distribution (NaN data among them).
    """
    validate = Distribution._validate_args
    try:
        from zuko.flows.autoregressive import MaskedAutoregressiveTransform
        from zuko.transforms import ComposedTransform
    except ImportError:
        raise MissingExtraError(MISSING_ZUKO) from None
    finally:
        Distribution._validate_args = validate
    return MaskedAutoregressiveTransform, ComposedTransform


class FlowDistribution(Distribution):
    r"""q(z) of z = T(u), u ~ ``base``: batch and event shapes are the base's, here (B,) and (d,).

    Args:
        base: the base q_0, batch (B,), event (d,), with ``rsample``.
        transform: T in the sampling direction (u -> z), with zuko's ``call_and_ladj``: (value, log|det dT/du|).
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    has_rsample = True

    def __init__(self, base: Distribution, transform: Bijection, *, validate_args: bool | None = None) -> None:
        self.base = base
        self.transform = transform
        self._last: tuple[Tensor, Tensor, bool] | None = None  # (z, log q(z), grad mode) of the last rsample
        super().__init__(base.batch_shape, base.event_shape, validate_args=validate_args)

    @property
    def support(self) -> Any:
        return constraints.independent(constraints.real, 1)

    def rsample_and_log_prob(self, sample_shape: _Shape = torch.Size()) -> tuple[Tensor, Tensor]:  # noqa: B008
        r"""z = T(u), u ~ q_0 reparameterised, and log q(z) = log q_0(u) - log|det dT/du|, in one pass.

        Returns:
            z (*sample_shape, B, d) and log q(z) (*sample_shape, B).
        """
        u = self.base.rsample(sample_shape)  # (*S, B, d)
        z, log_det = self.transform.call_and_ladj(u)  # (*S, B, d), (*S, B)
        log_q = self.base.log_prob(u) - log_det
        self._last = (z, log_q, torch.is_grad_enabled())
        return z, log_q

    def rsample(self, sample_shape: _Shape = torch.Size()) -> Tensor:  # noqa: B008
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: _Shape = torch.Size()) -> Tensor:  # noqa: B008
        # Remembered for log_prob without autograd only (evaluation: log p(x) by importance sampling): with
        # autograd on, log_prob of a draw must carry d/dphi log q at fixed z (the score), which the log q of
        # the draw's own path, a function of u, does not, so T is inverted then.
        with torch.no_grad():
            u = self.base.sample(sample_shape)  # (*S, B, d)
            z, log_det = self.transform.call_and_ladj(u)
            self._last = (z, self.base.log_prob(u) - log_det, False)
            return z

    def log_prob(self, value: Tensor) -> Tensor:
        r"""log q(z) = log q_0(T^{-1}(z)) + log|det dT^{-1}/dz|: (*S, B).

        The value remembered from the last ``rsample`` when ``value`` is that very tensor (in the same grad
        mode); otherwise T is inverted (d sequential passes per step).
        """
        if self._validate_args:
            self._validate_sample(value)
        last = self._last
        if last is not None and value is last[0] and last[2] == torch.is_grad_enabled():
            return last[1]
        u, log_det_inverse = self.transform.inv.call_and_ladj(value)
        return self.base.log_prob(u) + log_det_inverse

    @property
    def location(self) -> Tensor:
        """T(E_{q_0} u), the base's mean pushed through the flow: a point summary of q, (B, d).

        Not E_q z (a flow has no closed-form mean), but equal to it while T is affine in u, as at
        initialisation, where T is the identity.
        """
        return self.transform(self.base.mean)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base: {self.base}, batch_shape: {tuple(self.batch_shape)})"


class InverseAutoregressiveFlow(nn.Module):
    """K affine IAF steps on d coordinates conditioned on a context of width c; the identity at initialisation.

    Called with a context (..., c) it returns T, the steps composed in the sampling direction (u -> z).

    Args:
        features: d.
        context: c, >= 1.
        transforms: K, >= 1.
        hidden_features: hidden widths of each step's MADE network (default two layers of max(64, 2d)).
    """

    def __init__(
        self, features: int, context: int, *, transforms: int, hidden_features: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        for name, value in (("features", features), ("context", context), ("transforms", transforms)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        masked_autoregressive, _ = _zuko_transforms()
        hidden = tuple(hidden_features) if hidden_features is not None else (max(64, 2 * features),) * 2
        if not hidden or any(h < 1 for h in hidden):
            raise ValueError(f"hidden_features must be widths >= 1, got {hidden_features}")
        order = torch.arange(features)
        self.steps = nn.ModuleList(
            masked_autoregressive(
                features, context, order=order if k % 2 == 0 else order.flip(0), hidden_features=hidden
            )
            for k in range(transforms)
        )
        for step in self.steps:
            # The last layer outputs (b, a): zero it and every step starts as t(u) = u, the flow as its base.
            last = cast(nn.Sequential, step.get_submodule("hyper"))[-1]  # zuko's (masked) linear layer
            with torch.no_grad():
                for parameter in last.parameters():  # weight and bias
                    parameter.zero_()

    def forward(self, context: Tensor) -> Bijection:
        """T = t_K ∘ ... ∘ t_1 given the context (..., c), broadcast against u (*S, ..., d)."""
        _, composed = _zuko_transforms()
        return cast(Bijection, composed(*(step(context) for step in self.steps)))
