r"""Several processes on ``torch.distributed``: the process group of a command, and the noise that
makes a run's answer independent of how many processes computed it.

A command runs distributed when the environment names a process group (``WORLD_SIZE`` > 1 with ``RANK`` and
``MASTER_ADDR``/``MASTER_PORT``, as ``torchrun`` sets them), or when ``--nproc N`` has
:func:`elbokit.cli.launch.launch` start N local processes with that environment. Each process joins the group
(gloo on the CPU, NCCL where each rank has its own GPU), computes its part, and rank 0 alone writes files and
prints.

World-size invariance: every random draw of training is keyed by the global minibatch, not by the process. At
each step all ranks seed one generator from (seed, step) and draw the noise of the *whole* global minibatch, and
each rank keeps the rows of its own points (:class:`StepNoise`), so a point gets the same ε whichever rank
holds it. The gradient is the global batch mean on every world size (each rank's loss is scaled by its share
before DistributedDataParallel averages), so world sizes 1, 2 and 4 take the same steps up to the order of float
additions. Evaluation shards whole batches, each seeded by its position, and sums them in batch order on rank 0:
the same numbers as one process, bit for bit.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

#: Seconds a collective may wait for a peer before the group gives up (a rank that died or hangs).
DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class World:
    """This process's place in the group: rank, world size, local rank (its GPU on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, count: int) -> range:
        """The contiguous, unpadded part of ``range(count)`` this rank takes (the first ``count % size`` ranks one
        more)."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))


_WORLD = World()


def world() -> World:
    """The group this process belongs to (rank 0 of 1 outside one)."""
    return _WORLD


def env_world() -> World | None:
    """The group the environment names (torchrun's or ``--nproc``'s variables), or None."""
    size = os.environ.get("WORLD_SIZE")
    if size is None or int(size) <= 1:
        return None
    return World(int(os.environ.get("RANK", "0")), int(size), int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env(device: str = "auto") -> World:
    """Join the process group the environment names (a no-op outside one): NCCL when CUDA is here and ``device``
    allows it (each rank on ``cuda:LOCAL_RANK``), else gloo; the collectives time out after
    ``$ELBOKIT_DIST_TIMEOUT`` seconds (default 120)."""
    global _WORLD
    found = env_world()
    if found is None:
        return _WORLD
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(found.local_rank)
        timeout = datetime.timedelta(seconds=float(os.environ.get("ELBOKIT_DIST_TIMEOUT", DEFAULT_TIMEOUT)))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    _WORLD = found
    return _WORLD


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    global _WORLD
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        store = _default_store()
        # DistributedDataParallel's reducer sits in reference cycles: collected now, while the interpreter is
        # whole, its pending gloo work is released before the group goes; left to interpreter shutdown, gloo's
        # threads can free tensors after Python is gone and abort the process (SIGABRT) after a good run.
        gc.collect()
        dist.destroy_process_group()
        if store is not None and _WORLD.distributed:
            _leave_in_order(store, _WORLD)
    _WORLD = World()


#: Seconds rank 0 waits at the end for the other ranks to have left the group.
LEAVE_TIMEOUT = 10.0


def _default_store() -> Any:
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # an older or newer torch without it: leave in any order
        return None


def _leave_in_order(store: Any, w: World) -> None:
    """Rank 0 leaves last: it hosts the group's store (``--nproc``), which the other ranks' connections need
    until they have closed their own part of the group; a rank whose peer vanished while it was closing could
    abort. Each other rank counts itself out on the store; rank 0 waits for the count (at most
    :data:`LEAVE_TIMEOUT` seconds, for a rank that died)."""
    import time

    try:
        if not w.main:
            store.add("elbokit/left", 1)
            return
        deadline = time.monotonic() + LEAVE_TIMEOUT
        while store.add("elbokit/left", 0) < w.size - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    except Exception:  # the store already gone (its host died): nothing left to wait for
        pass


@contextmanager
def alone() -> Iterator[None]:
    """This process works by itself for the block (its own share of a sharded job: one run of a sweep): world()
    is a single process there, and nothing inside waits for the other ranks."""
    global _WORLD
    outer, _WORLD = _WORLD, World()
    try:
        yield
    finally:
        _WORLD = outer


def rank_device(name: str) -> str:
    """A rank's device: ``auto`` or ``cuda`` become ``cuda:LOCAL_RANK`` in a group where CUDA is present."""
    w = world()
    if w.distributed and name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{w.local_rank}"
    return name


# ---- collectives --------------------------------------------------------------------------------------------
def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """``t`` reduced over the group in place (sum, min or max); ``t`` itself outside a group."""
    if world().distributed:
        import torch.distributed as dist

        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        dist.all_reduce(t, op=ops[op])
    return t


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (on every rank); ``[value]`` outside a group."""
    if not world().distributed:
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * world().size
    dist.all_gather_object(out, value)
    return out


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """Whether ``flag`` holds on some rank (every rank gets the same answer)."""
    if not world().distributed:
        return flag
    t = torch.tensor([int(flag)], device=device)
    return bool(all_reduce(t, "max").item())


def barrier() -> None:
    if world().distributed:
        import torch.distributed as dist

        dist.barrier()


# ---- noise keyed by the global minibatch ----------------------------------------------------------------------
def step_seed(seed: int, step: int) -> int:
    """The seed of one training step's draws: a function of (seed, step) alone."""
    return (seed * 1_000_003 + step) * 4 + 2


class StepNoise:
    """One step's standard-normal noise over the global minibatch of ``size`` points, of which this rank holds
    ``rows``: each draw of shape (*S, B_local, *event) is cut from one of shape (*S, size, *event), drawn from
    ``generator`` in the same order on every rank."""

    def __init__(self, generator: torch.Generator, rows: Tensor | None, size: int) -> None:
        self.generator, self.rows, self.size = generator, rows, size  # rows None: this rank holds all of them

    def standard_normal(self, sample_shape: torch.Size, batch_event: torch.Size, like: Tensor) -> Tensor:
        shape = (*sample_shape, self.size, *batch_event[1:])
        eps = torch.randn(shape, generator=self.generator, dtype=like.dtype, device=like.device)
        if self.rows is None or self.rows.numel() == self.size:
            return eps
        return eps.index_select(len(sample_shape), self.rows)


def keyed(q: Distribution, noise: StepNoise) -> Distribution:
    """``q`` with its draws (``rsample``, ``sample``) taken from ``noise``; its type, parameters and density
    unchanged. Gaussian families (diagonal, full covariance) and flows over a diagonal Gaussian base; any other q
    is returned as it is (its draws then follow torch's global generator)."""
    from elbokit.guides import FlowDistribution

    inner = q.base if isinstance(q, FlowDistribution) else q
    if isinstance(inner, Independent) and isinstance(inner.base_dist, Normal):
        inner = inner.base_dist
    if isinstance(inner, Normal):
        normal = inner

        def rsample_normal(sample_shape: Sequence[int] = ()) -> Tensor:
            shape = torch.Size(sample_shape)
            eps = noise.standard_normal(shape, normal.loc.shape, normal.loc)
            return normal.loc + normal.scale * eps

        _override(normal, rsample_normal)
    elif isinstance(inner, MultivariateNormal):
        mvn = inner

        def rsample_mvn(sample_shape: Sequence[int] = ()) -> Tensor:
            shape = torch.Size(sample_shape)
            eps = noise.standard_normal(shape, mvn.loc.shape, mvn.loc)
            return mvn.loc + (mvn.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

        _override(mvn, rsample_mvn)
    return q


def supports_keyed(q: Distribution) -> bool:
    """Whether :func:`keyed` can take ``q``'s draws from the step's noise."""
    from elbokit.guides import FlowDistribution

    inner = q.base if isinstance(q, FlowDistribution) else q
    if isinstance(inner, Independent) and isinstance(inner.base_dist, Normal):
        return True
    return isinstance(inner, (Normal, MultivariateNormal))


def _override(d: Distribution, rsample: Callable[..., Tensor]) -> None:
    d.rsample = rsample  # type: ignore[method-assign]

    def sample(sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return rsample(sample_shape)

    d.sample = sample  # type: ignore[method-assign]
