"""One optimisation step of :func:`elbokit.fit`, with nothing read back to the host.

The step computes the bound and its loss, backpropagates, clips and takes an Adam step. What an epoch reports
(the sums of the bound, reconstruction and KL over the points seen) and the non-finite guard stay on the device as
tensors, so on a GPU the steps of an epoch queue without waiting for each other; :meth:`TrainStep.read` reads
them once, at the end of an epoch or before a checkpoint is written, and raises on the first non-finite step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from elbokit.config import RunConfig
from elbokit.distributed import StepNoise, all_reduce, keyed, step_seed, supports_keyed, world
from elbokit.distributions import unvalidated
from elbokit.models.base import Guide, LatentModel
from elbokit.train.objective import is_local, training_bound
from elbokit.train.schedules import Schedule

__all__ = ["NonFiniteStep", "TrainStep", "is_local", "local_parameters", "make_optimizer", "unvalidated"]

#: Codes of what went non-finite first, on the device: 0 nothing, then the terms in the order they are checked.
_TERMS = ("", "reconstruction term E_q log p(x|z)", "KL term", "bound", "gradient")
_NEVER = 1 << 62


class NonFiniteStep(RuntimeError):
    """The first step whose loss or gradient was not finite, and which term it was."""

    def __init__(self, step: int, term: str) -> None:
        super().__init__(f"non-finite {term} at step {step}")
        self.step, self.term = step, term


def make_optimizer(params: Sequence[Tensor], lr: float, *, local: Sequence[Tensor] = (),
                   local_lr: float | None = None) -> torch.optim.Adam:  # fmt: skip
    """Adam over ``params`` (Kingma & Ba 2015) as one fused kernel over all parameters where torch has one for
    their device and dtype (CPU and CUDA, float32 and float64), else in its multi-tensor (``foreach``) form.

    The update is Adam's either way. The fused form reads and writes each parameter's state once per step
    instead of once per elementwise operation: on a 784-400-20 VAE on 2 CPU cores it takes 0.22 ms per step
    where the default per-tensor loop takes 1.7-2.0 ms and ``foreach`` 0.93 ms (``benchmarks/train_step.py``).

    ``local``: those of ``params`` that hold a local guide's per-point q; they form a second parameter group at
    ``local_lr``.
    """
    local_ids = {id(p) for p in local}
    groups: list[dict[str, Any]] = [{"params": [p for p in params if id(p) not in local_ids], "lr": lr}]
    if local_ids:
        groups.append({"params": [p for p in params if id(p) in local_ids], "lr": lr if local_lr is None else local_lr})
    try:
        return torch.optim.Adam(groups, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(groups, lr=lr, foreach=True)


def local_parameters(guide: object) -> list[Tensor]:
    """The parameters of a local guide (:func:`is_local`) that hold its per-point q; none for another guide."""
    if not is_local(guide) or not isinstance(guide, torch.nn.Module):
        return []
    return list(guide.parameters())


class TrainStep:
    """``step(x)``: one optimisation step of ``config``'s objective on the batch ``x``.

    Args:
        model: the LatentModel whose parameters (with the guide's) ``optimizer`` updates.
        guide: x -> q(z|x).
        config: objective, k, β, gradient estimator and clipping.
        schedule: the β schedule, read at the step count.
        params: the parameters clipped together.
        optimizer: the optimiser over ``params``.
        step: the step count to start from (a resumed run's).
    """

    def __init__(self, model: LatentModel, guide: Guide, config: RunConfig, schedule: Schedule, *,
                 params: Sequence[Tensor], optimizer: torch.optim.Optimizer, step: int = 0) -> None:  # fmt: skip
        self.model, self.guide, self.config, self.schedule = model, guide, config, schedule
        self.params, self.optimizer = list(params), optimizer
        self.step = step
        device = self.params[0].device if self.params else torch.device("cpu")
        self.device = device
        self._generator = torch.Generator(device=device)  # re-seeded each step from (seed, step)
        # The step as a module, so that in a process group DistributedDataParallel sees the forward pass and
        # averages the gradients over the ranks (each rank's loss scaled by its share of the global batch).
        self.objective: torch.nn.Module = _Objective(model, guide, config, schedule, self.params)
        if world().distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            # The buffers (p(z)'s parameters, a count likelihood's library) are equal on every rank: no syncing
            self.objective = DistributedDataParallel(self.objective, device_ids=ids, forward_sync_buffers=False)
        self._sums = torch.zeros(3, dtype=torch.float64, device=device)  # bound, reconstruction, KL
        # The guard: the smallest 8 * step + code over the non-finite terms so far (_NEVER while all is finite),
        # so the first bad step, and its first bad term in _TERMS order, come out of one minimum per step.
        self._codes = torch.arange(1, len(_TERMS), dtype=torch.int64, device=device)
        self._first_bad = torch.full((), _NEVER, dtype=torch.int64, device=device)
        self._no_norm = torch.zeros((), device=device)

    def __call__(self, x: Tensor, index: Tensor | None = None, *, rows: Tensor | None = None,
                 size: int | None = None) -> None:  # fmt: skip
        """One step on the minibatch ``x``; ``index``: its points' positions in the training set, for a local
        guide (one q per training point, :func:`is_local`), whose q of those points is then used.

        In a process group x is this rank's part of a global minibatch of ``size`` points, the part's positions
        in it ``rows``: the step's noise is drawn for the global minibatch (:class:`elbokit.distributed.
        StepNoise`) so that each point gets the same draw on any number of ranks."""
        size = x.shape[0] if size is None else size
        self._generator.manual_seed(step_seed(self.config.seed, self.step))
        noise = StepNoise(self._generator, rows, size)
        scale = x.shape[0] * world().size / size  # DDP averages the ranks' gradients: the global batch mean
        # One process: the step's function itself (no module-call hooks on the hot path); DDP needs its forward.
        objective = self.objective if world().distributed else self.objective.forward
        loss, terms = objective(x, index, noise, self.step, scale)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.clip)
        else:
            norm = self._no_norm
        with torch.no_grad():
            terms = [*terms, loss, norm]
            parts = torch.stack([t.to(loss.dtype) for t in terms])
            self._sums += parts[:3]
            keys = torch.where(torch.isfinite(parts[1:]), _NEVER, self._codes + 8 * self.step)
            torch.minimum(self._first_bad, keys.min(), out=self._first_bad)
        self.optimizer.step()
        self.step += 1

    def read(self) -> tuple[float, float, float]:
        """The sums of the bound, reconstruction and KL so far (one read from the device; in a process group,
        over all ranks' points); NonFiniteStep if a step's loss or gradient was not finite on some rank."""
        first_bad_t, sums_t = self._first_bad.clone(), self._sums.clone()
        all_reduce(first_bad_t, "min")
        all_reduce(sums_t, "sum")
        first_bad, sums = int(first_bad_t), sums_t.tolist()
        if first_bad != _NEVER:
            raise NonFiniteStep(first_bad // 8, _TERMS[first_bad % 8])
        return sums[0], sums[1], sums[2]

    def reset(self, sums: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        """Start the sums from ``sums`` (zero at an epoch's start; a resumed run's saved sums mid-epoch, so that
        they add up in the same order as in an uninterrupted run; rank 0 holds them, the others start at 0)."""
        start = sums if world().main else (0.0, 0.0, 0.0)
        self._sums.copy_(torch.tensor(start, dtype=torch.float64))

    def logged_bound(self, before: Tensor, points: int) -> float:
        """The mean bound of the global minibatch of the step just taken, from the sums ``before`` it."""
        delta = all_reduce((self._sums[0] - before).reshape(1), "sum")
        return float(delta) / points


class _Objective(torch.nn.Module):
    """One step's loss and the sums of its bound's terms, as a module (what DistributedDataParallel wraps)."""

    def __init__(self, model: LatentModel, guide: Guide, config: RunConfig, schedule: Schedule,
                 params: Sequence[Tensor]) -> None:  # fmt: skip
        super().__init__()
        self.model_ = model if isinstance(model, torch.nn.Module) else None
        self.guide_ = guide if isinstance(guide, torch.nn.Module) else None
        self.__dict__["_model"], self.__dict__["_guide"] = model, guide
        self.__dict__["_params"] = list(params)
        self.config, self.schedule = config, schedule

    def forward(self, x: Tensor, index: Tensor | None, noise: StepNoise, step: int,
                scale: float) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
        if x.shape[0] == 0:  # a rank without points in a short last batch: a zero loss, so the ranks still meet
            zero = sum((p.sum() * 0.0 for p in self.__dict__["_params"]), torch.zeros((), device=x.device))
            return zero, (zero.detach(),) * 3
        guide = self.__dict__["_guide"]
        guide = _Keyed(guide if index is None else _Selected(guide, index), noise)
        bound, loss, _beta = training_bound(self.__dict__["_model"], guide, x, self.config, self.schedule, step)
        terms = (bound.value.sum(), bound.reconstruction.sum(), bound.kl.sum())
        return (loss if scale == 1.0 else loss * scale), terms


class _Keyed:
    """A guide whose q draws from the step's noise (:func:`elbokit.distributed.keyed`); in a process group, a q
    it cannot key is refused (its draws would depend on the rank)."""

    def __init__(self, guide: Any, noise: StepNoise) -> None:
        self.guide, self.noise = guide, noise

    def __call__(self, x: Tensor) -> Distribution:
        q: Distribution = self.guide(x)
        if world().distributed and not supports_keyed(q):
            raise ValueError(f"training on several processes draws z from noise keyed by the global minibatch, "
                             f"which a {type(q).__name__} q cannot take yet: train it in one process")  # fmt: skip
        return keyed(q, self.noise)


class _Selected:
    """A local guide restricted to the minibatch's points: x -> q of the points ``index``."""

    def __init__(self, guide: Any, index: Tensor) -> None:
        self.guide, self.index = guide, index

    def __call__(self, x: Tensor) -> Distribution:
        q: Distribution = self.guide.select(self.index)
        return q
