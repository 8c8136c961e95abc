"""Pieces the training benchmarks share, with no peer library imported: an epoch's data as ``elbokit.fit`` draws
it, and per-point test numbers of a trained VAE computed as ``elbokit.runs.evaluate`` computes their means."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import elbokit as ek
from elbokit.config import RunConfig
from elbokit.models import VAE
from elbokit.train.epochs import epoch_generator
from elbokit.train.schedules import parse_schedule
from elbokit.train.step import TrainStep, make_optimizer, unvalidated


@dataclass(frozen=True)
class PointEstimates:
    """Per-test-point numbers of one trained model, nats: each (n,)."""

    elbo: Tensor
    log_px: Tensor
    log_px_stderr: Tensor  # Monte-Carlo standard error of each point's log p(x) estimate


def epoch_data(train: Tensor, *, seed: int, epoch: int) -> tuple[Tensor, Tensor]:
    """One epoch's dynamically binarized training set and data order: what ``fit`` draws for (seed, epoch)."""
    order = torch.randperm(train.shape[0], generator=epoch_generator(seed, epoch, 0))
    return torch.bernoulli(train, generator=epoch_generator(seed, epoch, 1)), order


@torch.inference_mode()
def evaluate_points(model: VAE, x_all: Tensor, *, k: int, seed: int, batch_size: int = 100) -> PointEstimates:
    """ELBO (analytic KL) and log p(x) (k importance samples) of each point: ``elbokit.runs.evaluate``'s sums,
    kept per point for a paired comparison."""
    elbos, values, errors = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, x_all.shape[0], batch_size):
            x = x_all[start : start + batch_size]
            elbos.append(ek.elbo(model, model.encoder, x).value)
            estimate = ek.log_marginal(model, model.encoder, x, k=k)
            values.append(estimate.value)
            errors.append(estimate.stderr)
    return PointEstimates(torch.cat(elbos), torch.cat(values), torch.cat(errors))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def step_batches(data: Tensor, batch: int, count: int, generator: torch.Generator) -> list[Tensor]:
    """``count`` minibatches of ``batch`` training points drawn with replacement, freshly binarized."""
    index = torch.randint(0, data.shape[0], (count, batch), generator=generator)
    return [torch.bernoulli(data[i], generator=generator) for i in index]


def timed_rounds(
    methods: dict[str, Callable[[Tensor], None]], data: Tensor, batch: int, *, steps: int, repeats: int, seed: int
) -> dict[str, list[float]]:
    """Milliseconds per step of each method in each of ``repeats`` rounds: an untimed warm-up round first, then
    each round runs the methods in a fresh random order, ``steps`` timed steps after one warm-up step each, on
    the same fresh minibatches."""
    gen = torch.Generator().manual_seed(seed)
    times: dict[str, list[float]] = {name: [] for name in methods}
    order = list(methods)
    shuffle = random.Random(seed)
    for round_ in range(repeats + 1):  # round 0 is an untimed warm-up of every method
        shuffle.shuffle(order)
        batches = step_batches(data, batch, steps + 1, gen)
        for name in order:
            run = methods[name]
            run(batches[0])  # warm-up: caches, allocator, optimiser state
            started = time.perf_counter()
            for x in batches[1:]:
                run(x)
            if round_ > 0:
                times[name].append((time.perf_counter() - started) / steps * 1e3)
    return times


def elbokit_step(vae: VAE, batch: int, *, beta: float = 1.0) -> Callable[[Tensor], None]:
    """One step of elbokit's trainer (TrainStep, Adam at lr 1e-3, argument checks off), as ``elbokit.fit`` takes it."""
    config = RunConfig(batch_size=batch, lr=1e-3, beta=beta)
    params = list(vae.parameters())
    step = TrainStep(vae, vae.encoder, config, parse_schedule("constant", steps_per_epoch=1), params=params,
                     optimizer=make_optimizer(params, config.lr))  # fmt: skip

    def run(x: Tensor) -> None:
        with unvalidated():
            step(x)

    return run
