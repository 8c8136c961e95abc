r"""β (KL weight) schedules for training, and free bits.

The training objective at step t is the β-ELBO

.. math::
    \mathcal{L}_t = \mathbb{E}_q[\log p(x \mid z)] - \beta_t \, \mathrm{KL}(q(z \mid x) \,\|\, p(z)),
    \qquad \beta_t = \beta \cdot a(t),

with β the target weight and a(t) ∈ [0, 1] the annealing factor. Only at a(t) = 1 and β = 1 is this the ELBO,
a lower bound on log p(x): a schedule that never gets there trains a different objective (the warning in
:func:`check_reaches_target`).

A schedule is written ``SPEC``:

- ``constant``: a(t) = 1.
- ``linear:N``: KL annealing, a(t) = min(1, (t + 1) / N) for the 0-based step t (Bowman et al. 2016).
- ``cyclical:N`` or ``cyclical:N:R``: cycles of N steps, a(t) = min(1, (t mod N + 1) / (N R)): rising linearly
  over the first fraction R (default 0.5) of each cycle, then held at 1 (Fu et al. 2019).
- ``freebits:λ``: a(t) = 1, but each latent dimension's batch-averaged KL counts at least λ nats:
  KL → Σ_j max(λ, E_batch KL_j) (Kingma et al. 2016), so dimensions under λ get no push toward the prior.

N may be given in epochs with an ``ep`` suffix (``linear:5ep``); it is converted with the steps per epoch.

Learning-rate schedules (:func:`lr_factor`, the ``lr_schedule`` setting) multiply Adam's rate per epoch:

- ``constant``: 1.
- ``burda``: the schedule of Burda, Grosse & Salakhutdinov (2016, section 5): 8 stages i = 0..7, stage i lasting
  3^i of its 3,280 epochs at 10^(-i/7) times the base rate (1e-3 in the paper). Over a run of E epochs the stages
  keep their proportions: epoch e (0-based) is in the stage whose share of 3,280 holds (e + 1/2) 3280 / E, so a
  tenth of the schedule (328 epochs) still passes through every rate, each stage a tenth as long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from elbokit.config import LR_SCHEDULES

Kind = Literal["constant", "linear", "cyclical", "freebits"]

#: Burda et al. (2016)'s schedule: stage i lasts 3^i epochs, 3,280 in all.
BURDA_STAGES = 8
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))


def burda_stage(epoch: int, epochs: int) -> int:
    """The stage i in 0..7 of Burda et al.'s schedule that the 0-based ``epoch`` of ``epochs`` falls in."""
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in 0..{epochs - 1}, got {epoch}")
    t = (epoch + 0.5) * BURDA_EPOCHS / epochs
    end = 0
    for i in range(BURDA_STAGES):
        end += 3**i
        if t < end:
            return i
    return BURDA_STAGES - 1


def lr_factor(spec: str, epoch: int, epochs: int) -> float:
    """The learning rate's factor in the 0-based ``epoch`` of a run of ``epochs``: 1 for ``constant``,
    10^(-i/7) in stage i of Burda et al.'s schedule for ``burda``."""
    if spec == "constant":
        return 1.0
    if spec == "burda":
        return 10.0 ** (-burda_stage(epoch, epochs) / 7)
    raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {spec!r}")


@dataclass(frozen=True)
class Schedule:
    """An annealing schedule a(t) for the KL weight, parsed from a SPEC string by :func:`parse_schedule`."""

    kind: Kind = "constant"
    #: Warm-up length (linear) or cycle length (cyclical), in steps. 0 for the other kinds.
    steps: int = 0
    #: Cyclical only: fraction of each cycle spent rising.
    ratio: float = 0.5
    #: Free bits only: minimum KL per latent dimension, in nats.
    free_bits: float = 0.0

    def factor(self, step: int) -> float:
        """a(t) in [0, 1] for the 0-based optimisation step t (the weight used by step t's update)."""
        if self.kind == "linear":
            return min(1.0, (step + 1) / self.steps)
        if self.kind == "cyclical":
            return min(1.0, (step % self.steps + 1) / (self.steps * self.ratio))
        return 1.0

    def describe(self) -> str:
        """The SPEC string this schedule came from (steps resolved)."""
        if self.kind == "linear":
            return f"linear:{self.steps}"
        if self.kind == "cyclical":
            return f"cyclical:{self.steps}:{self.ratio:g}"
        if self.kind == "freebits":
            return f"freebits:{self.free_bits:g}"
        return "constant"


def _parse_steps(text: str, steps_per_epoch: int, spec: str) -> int:
    try:
        if text.endswith("ep"):
            value = float(text[:-2]) * steps_per_epoch
        else:
            value = float(text)
    except ValueError:
        expected = "a number of steps (or epochs with 'ep')"
        raise ValueError(f"anneal spec {spec!r}: expected {expected}, got {text!r}") from None
    if not math.isfinite(value) or value < 1 or (value != int(value) and not text.endswith("ep")):
        raise ValueError(f"anneal spec {spec!r}: the length must be a whole number of steps >= 1, got {text!r}")
    return max(1, round(value))


def parse_schedule(spec: str, *, steps_per_epoch: int = 1) -> Schedule:
    """Parse ``constant``, ``linear:N``, ``cyclical:N[:R]`` or ``freebits:λ`` (N in steps, or ``Nep`` epochs)."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    kind, _, rest = spec.strip().partition(":")
    parts = rest.split(":") if rest else []
    expected = "expected constant, linear:N, cyclical:N[:R] or freebits:LAMBDA"
    if kind == "constant" and not parts:
        return Schedule()
    if kind == "linear" and len(parts) == 1:
        return Schedule("linear", steps=_parse_steps(parts[0], steps_per_epoch, spec))
    if kind == "cyclical" and len(parts) in (1, 2):
        ratio = 0.5
        if len(parts) == 2:
            try:
                ratio = float(parts[1])
            except ValueError:
                raise ValueError(f"anneal spec {spec!r}: the ratio must be a number, got {parts[1]!r}") from None
            if not 0 < ratio <= 1:
                raise ValueError(f"anneal spec {spec!r}: the ratio must be in (0, 1], got {ratio}")
        return Schedule("cyclical", steps=_parse_steps(parts[0], steps_per_epoch, spec), ratio=ratio)
    if kind == "freebits" and len(parts) == 1:
        try:
            free_bits = float(parts[0])
        except ValueError:
            raise ValueError(f"anneal spec {spec!r}: free bits must be a number of nats, got {parts[0]!r}") from None
        if not (math.isfinite(free_bits) and free_bits >= 0):
            raise ValueError(f"anneal spec {spec!r}: free bits must be >= 0, got {free_bits}")
        return Schedule("freebits", free_bits=free_bits)
    raise ValueError(f"unknown anneal spec {spec!r}: {expected}")


def check_reaches_target(schedule: Schedule, total_steps: int, beta: float = 1.0) -> str | None:
    """A warning when training ends before the objective is the ELBO (β_t = 1), else None.

    Users of other libraries train with a warm-up longer than their run and report a β < 1 objective as an
    ELBO (scvi-tools issue 1569); this says so before training starts.
    """
    if total_steps < 1:
        return None
    final = beta * schedule.factor(total_steps - 1)
    if final >= 1.0:
        return None
    if schedule.kind == "linear":
        why = f"the linear warm-up lasts {schedule.steps} steps but training has {total_steps}"
    elif schedule.kind == "cyclical":
        why = f"training ({total_steps} steps) ends inside a cycle of {schedule.describe()}"
    else:
        why = f"β is {beta:g} throughout"
    return f"{why}: β ends at {final:.3g} < 1, so the final objective is not the ELBO and not a bound on log p(x)"
