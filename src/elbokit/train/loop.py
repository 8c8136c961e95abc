r"""``fit()``: a plain training loop over ``torch.optim.Adam`` on any of the engine's bounds.

Each step maximises the chosen bound on a minibatch (it minimises ``Bound.loss``): the β_t-weighted ELBO with
an analytic KL where one is registered, or IWAE_k. After each epoch the validation bound is computed, a line
is appended to ``metrics.jsonl`` and the checkpoint is replaced atomically, after ``best.safetensors`` when the
validation bound is the best so far. With ``log_every`` set, every N-th step also appends its minibatch bound,
β_t and learning rate to ``steps.jsonl`` (one read from the device per logged step; the other steps read
nothing); with ``tensorboard``, the epochs' and logged steps' figures also go to TensorBoard event files.

Everything random (parameter initialisation, data order, dynamic binarization, Monte-Carlo draws) follows from
the seed, and the data order and binarization of an epoch depend only on (seed, epoch), so a run resumed from its
checkpoint takes exactly the steps an uninterrupted run takes and ends with bit-identical parameters (same
machine and thread count), the same ``best.safetensors`` and the same lines in ``metrics.jsonl`` and
``steps.jsonl``.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from tqdm import tqdm

from elbokit.config import RunConfig
from elbokit.data import Dataset
from elbokit.distributed import any_rank, rank_device, world
from elbokit.errors import TrainingDiverged
from elbokit.estimators._weights import check_data
from elbokit.models.base import Guide, LatentModel
from elbokit.train.checkpoint import (
    BEST,
    CHECKPOINT,
    check_state,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    restore_rng,
    save_checkpoint,
)
from elbokit.train.epochs import _epoch_data, _stop_requests, resolve_device
from elbokit.train.objective import evaluate_bound
from elbokit.train.records import (
    METRICS,
    STEPS,
    _is_part_of,
    _logs,
    _read_metrics,
    _read_steps,
    _summary_writer_class,
    append_metrics,
    check_resumable,
)
from elbokit.train.records import TENSORBOARD_MISSING as TENSORBOARD_MISSING  # re-exported
from elbokit.train.schedules import check_reaches_target, lr_factor, parse_schedule
from elbokit.train.step import NonFiniteStep, TrainStep, is_local, local_parameters, make_optimizer, unvalidated

#: In a process group the ranks agree on a stop request (one all-reduce) every this many steps, at the same step.
STOP_EVERY = 10


@dataclass
class FitResult:
    """What ``fit`` did: epochs and steps completed, per-epoch metrics, and why it stopped."""

    epochs: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_validation: float | None = None
    stopped: str = "completed"  # "completed", "early-stopping" or "interrupted"


def fit(
    model: nn.Module,
    guide: Guide,
    data: Dataset,
    config: RunConfig,
    *,
    out: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_checkpoint: Callable[[], None] | None = None,
) -> FitResult:
    """Train ``model`` (and the guide's parameters) by Adam on ``config``'s objective.

    Args:
        model: a LatentModel ``nn.Module`` (e.g. ``VAE``); its parameters, and the guide's, are trained.
        guide: x -> q(z|x) (e.g. ``vae.encoder``).
        data: train / validation splits; ``data.binarize == "dynamic"`` draws x ~ Bernoulli(train) per epoch.
        config: objective, schedule, optimisation settings and seed.
        out: run directory (None: nothing written) for ``metrics.jsonl`` (a line per epoch), the checkpoint
            ``checkpoint.safetensors`` (+ ``state.json``) of the last epoch, ``best.safetensors`` of the epoch
            with the best validation bound (written before that epoch's checkpoint), with ``config.log_every``
            ``steps.jsonl`` (``{"step", "epoch", "beta", "lr", "bound"}`` every N steps: β_t and the minibatch's
            mean bound of that step), and with ``config.tensorboard`` event files in ``tensorboard/``.
        resume: continue from ``out``'s checkpoint; a run killed before its first checkpoint starts again from
            the beginning (the model must then be freshly initialised, as for a new run). ``metrics.jsonl`` and
            ``steps.jsonl`` lose what comes after the checkpoint, so that they end as an uninterrupted run's.
        on_epoch: called with each epoch's metrics.
        on_checkpoint: called after each checkpoint is written (not after ``best.safetensors``).

    Returns:
        FitResult. Raises TrainingDiverged on a non-finite bound or gradient (the last checkpoint is kept), and
        ValueError, before anything is written, for ``config.tensorboard`` without the tensorboardX package.
    """
    latent = cast(LatentModel, model)
    config.validate()  # a config changed after construction is checked again
    w = world()
    summary_writer = _summary_writer_class() if config.tensorboard and out is not None and w.main else None
    device = resolve_device(rank_device(config.device))
    if w.distributed and parse_schedule(config.anneal).kind == "freebits":
        raise ValueError("free bits takes the KL per dimension over the whole minibatch: train it in one process")
    model.to(device)
    if isinstance(guide, nn.Module):
        guide.to(device)
    params = list(dict.fromkeys([*model.parameters(), *(guide.parameters() if isinstance(guide, nn.Module) else [])]))
    optimizer = make_optimizer(params, config.lr, local=local_parameters(guide), local_lr=config.local_lr)
    train = data.train[: config.limit].to(device)
    validation = data.validation.to(device)
    local = is_local(guide)
    if local and cast(Any, guide).num_points != train.shape[0]:
        raise ValueError(f"the local guide holds {cast(Any, guide).num_points} points, the training set "
                         f"{train.shape[0]}: one q per training point")  # fmt: skip
    # A guide outside the model (a local guide, or a user's own module) is saved and resumed beside it.
    own_guide = guide if isinstance(guide, nn.Module) and not _is_part_of(guide, model) else None
    for name, x in (("train", train), ("validation", validation)):  # once per run; the steps skip the value checks
        try:
            check_data(latent, guide, x)
        except ValueError as err:
            raise ValueError(f"{data.name} ({name} split): {err}") from None
    n = train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    schedule = parse_schedule(config.anneal, steps_per_epoch=steps_per_epoch)
    checkpoint = None
    if resume:
        if out is None:
            raise ValueError("resume needs a run directory")
        if (out / CHECKPOINT).exists():
            checkpoint = load_checkpoint(out)
            check_state(checkpoint.state, str(out / CHECKPOINT), complete=True)
            check_resumable(checkpoint.state, config)
    warning = check_reaches_target(schedule, steps_per_epoch * config.epochs, config.beta)
    if warning:
        warnings.warn(warning, stacklevel=2)
    dynamic = data.binarize == "dynamic"
    if out is not None and w.main:
        out.mkdir(parents=True, exist_ok=True)
    _set_training(model, guide, True)

    epoch, position, step = 0, 0, 0
    sums = {"bound": 0.0, "reconstruction": 0.0, "kl": 0.0, "seconds": 0.0}
    history: list[dict[str, Any]] = []
    best: float | None = None
    since_best = 0
    if checkpoint is not None:
        assert out is not None
        load_model_state(model, checkpoint, source=f"{out}/checkpoint.safetensors")
        if own_guide is not None:
            load_model_state(own_guide, checkpoint, source=f"{out}/checkpoint.safetensors", prefix="guide.")
        load_optimizer_state(optimizer, checkpoint)
        restore_rng(checkpoint)
        s = checkpoint.state
        epoch, position, step = int(s["epoch"]), int(s["position"]), int(s["step"])
        sums = dict(s["sums"])
        best, since_best = s.get("best"), int(s.get("since_best", 0))
        history = _read_metrics(out, keep=epoch, rewrite=w.main)
        _read_steps(out, keep=step, rewrite=w.main)
    elif resume and out is not None and w.main:
        for name in (METRICS, STEPS, BEST):  # killed before its first checkpoint: start again
            (out / name).unlink(missing_ok=True)

    def save(where: str) -> None:
        if out is None or not w.main:  # rank 0 alone writes
            saved[0] = True
            return
        state = {
            "epoch": epoch, "position": position, "step": step, "sums": sums, "best": best,
            "since_best": since_best, "config": config.to_dict(), "saved": where,
        }  # fmt: skip
        if where == "epoch" and since_best == 0:
            # The best file first: killed between the two writes, the run resumes from the epoch before, takes
            # the same steps and writes the same best file again. (The other order would leave a checkpoint that
            # claims this epoch as its best beside a best file of an earlier one.)
            save_checkpoint(out, model=model, optimizer=optimizer, state={**state, "saved": "best"}, name=BEST,
                            guide=own_guide)  # fmt: skip
        save_checkpoint(out, model=model, optimizer=optimizer, state=state, guide=own_guide)
        saved[0] = True
        if on_checkpoint is not None:
            on_checkpoint()

    saved = [checkpoint is not None]

    def kept() -> str:
        if out is None:
            return "nothing was saved"
        return f"the last good checkpoint is kept in {out}" if saved[0] else f"no checkpoint was written to {out}"

    train_step = TrainStep(latent, guide, config, schedule, params=params, optimizer=optimizer, step=step)
    train_step.reset((sums["bound"], sums["reconstruction"], sums["kl"]))

    def read_sums() -> None:
        try:
            sums["bound"], sums["reconstruction"], sums["kl"] = train_step.read()
        except NonFiniteStep as err:
            raise TrainingDiverged(f"{err} (epoch {err.step // steps_per_epoch + 1}); {kept()}") from None

    # Per-step logs need somewhere to go; without them the steps read nothing back from the device.
    log_every = config.log_every if out is not None else None
    progress = not config.quiet and sys.stderr.isatty() and not w.distributed
    stopped = "completed"
    logging = _logs(out if w.main else None, config, summary_writer,
                    resumed_at=step if checkpoint is not None else None)  # fmt: skip
    with _stop_requests() as stop_requested, unvalidated(), logging as logs:
        while epoch < config.epochs:
            factor = lr_factor(config.lr_schedule, epoch, config.epochs)
            lr = config.lr * factor
            for group, base in zip(optimizer.param_groups, (config.lr, config.local_lr), strict=False):
                group["lr"] = base * factor
            x_epoch, order = _epoch_data(train, seed=config.seed, epoch=epoch, dynamic=dynamic)
            bar = tqdm(total=steps_per_epoch, initial=position, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not progress, leave=False, unit="step")  # fmt: skip
            started = time.perf_counter()
            while position < steps_per_epoch:
                if (not w.distributed or step % STOP_EVERY == 0) and any_rank(stop_requested(), device):
                    read_sums()
                    sums["seconds"] += time.perf_counter() - started
                    save("interrupted")
                    bar.close()
                    return FitResult(epoch, step, history, best, "interrupted")
                index = order[position * config.batch_size : (position + 1) * config.batch_size]
                shard = w.shard(index.shape[0])  # this rank's contiguous part of the global minibatch
                rows = torch.arange(shard.start, shard.stop, device=index.device) if w.distributed else None
                mine = index[shard.start : shard.stop]
                logged = log_every is not None and (step + 1) % log_every == 0
                before = train_step._sums[0].clone() if logged else None  # on the device: no read yet
                train_step(x_epoch[mine], index=mine if local else None, rows=rows, size=index.shape[0])
                position += 1
                step += 1
                if before is not None:
                    bound = train_step.logged_bound(before, index.shape[0])  # the one read
                    if not math.isfinite(bound):
                        read_sums()  # raises, naming the step and the term, when the guard caught it
                        raise TrainingDiverged(f"non-finite bound at step {step - 1} (epoch {epoch + 1}); {kept()}")
                    beta = config.beta * schedule.factor(step - 1)
                    logs.step({"step": step, "epoch": epoch + 1, "beta": beta, "lr": lr, "bound": bound})
                bar.update(1)
                if progress and position % 20 == 0:
                    read_sums()
                    bar.set_postfix(bound=f"{sums['bound'] / min(n, position * config.batch_size):.2f}")
            bar.close()
            read_sums()
            sums["seconds"] += time.perf_counter() - started
            _set_training(model, guide, False)
            if local:  # no q for the validation points: the bound on the training points q was fitted to
                valid = evaluate_bound(latent, guide, x_epoch, objective=config.objective, k=config.k, local=True)
            else:
                valid = evaluate_bound(latent, guide, validation, objective=config.objective, k=config.k)
            _set_training(model, guide, True)
            if not math.isfinite(valid["bound"]):
                raise TrainingDiverged(f"non-finite validation bound after epoch {epoch + 1}; {kept()}")
            record = {
                "epoch": epoch + 1, "step": step, "beta": config.beta * schedule.factor(step - 1), "lr": lr,
                "train_bound": sums["bound"] / n, "train_reconstruction": sums["reconstruction"] / n,
                "train_kl": sums["kl"] / n, "validation_bound": valid["bound"], "validation_elbo": valid["elbo"],
                "validation_reconstruction": valid["reconstruction"], "validation_kl": valid["kl"],
                "seconds": sums["seconds"], "examples_per_second": n / max(sums["seconds"], 1e-9),
                "batch_size": config.batch_size, "processes": w.size,  # the global minibatch, over the ranks
            }  # fmt: skip
            history.append(record)
            if best is None or valid["bound"] > best:
                best, since_best = valid["bound"], 0
            else:
                since_best += 1
            epoch, position = epoch + 1, 0
            sums = {"bound": 0.0, "reconstruction": 0.0, "kl": 0.0, "seconds": 0.0}
            train_step.reset()
            if out is not None and w.main:
                append_metrics(out / METRICS, record)
            logs.epoch(record)
            save("epoch")
            if on_epoch is not None:
                on_epoch(record)
            if config.patience is not None and since_best >= config.patience:
                stopped = "early-stopping"
                break
    return FitResult(epoch, step, history, best, stopped)


def _set_training(model: nn.Module, guide: Guide, mode: bool) -> None:
    model.train(mode)
    if isinstance(guide, nn.Module):
        guide.train(mode)
