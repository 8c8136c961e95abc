r"""``fit_bnn()``: a Bayesian neural network trained by the ELBO over its weights, with ``fit``'s guarantees.

Each step maximises the minibatch estimate of
:math:`\mathcal L = \sum_i \mathbb E_q[\log p(y_i \mid x_i, w)] - \beta_t \, \mathrm{KL}(q(w) \,\|\, p(w))`, its data
term scaled by N / B (:meth:`elbokit.models.bnn.BNN.bound`), per data point (the loss is :math:`-\mathcal L / N`,
so the learning rate does not depend on N). After each epoch the validation log predictive density
(log of the mean of p(y | x, w) over :data:`VALIDATION_SAMPLES` draws of w) and RMSE (regression) or error rate
(classification) are computed, a line is appended to ``metrics.jsonl`` and the checkpoint is replaced atomically,
after ``best.safetensors`` when the validation log-likelihood is the best so far.

Every draw is keyed: an epoch's data order by (seed, epoch), a step's weight noise by (seed, step), the
validation draws by (seed, epoch). So a run resumed from its checkpoint takes exactly the steps an uninterrupted
run takes and ends with bit-identical parameters (same machine and thread count).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch.distributions import Categorical

from elbokit.config import RunConfig
from elbokit.data.tables import Table
from elbokit.distributed import step_seed, world
from elbokit.distributions._validate import unvalidated
from elbokit.errors import TrainingDiverged
from elbokit.models.bnn import BNN
from elbokit.train.checkpoint import (
    BEST,
    CHECKPOINT,
    check_state,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    save_checkpoint,
)
from elbokit.train.epochs import _stop_requests, epoch_generator, resolve_device
from elbokit.train.loop import FitResult
from elbokit.train.records import METRICS, STEPS, _read_metrics, append_metrics, check_resumable
from elbokit.train.schedules import check_reaches_target, lr_factor, parse_schedule
from elbokit.train.step import make_optimizer

#: Weight draws behind each epoch's validation figures (``elbokit evaluate`` takes more).
VALIDATION_SAMPLES = 10


def validation_seed(seed: int, epoch: int) -> int:
    """The seed of the validation draws after ``epoch``: a function of (seed, epoch) alone."""
    return (seed * 1_000_003 + epoch) * 4 + 3


@torch.no_grad()
def predictive_figures(model: BNN, x: torch.Tensor, y: torch.Tensor, *, samples: int, generator: torch.Generator,
                       batch_size: int = 1000) -> dict[str, float]:  # fmt: skip
    """Mean log predictive density per point, and RMSE (regression, in y's units) or error rate (classification),
    of the predictive distribution by ``samples`` weight draws, in minibatches."""
    total_ll, total_sq, total_wrong = 0.0, 0.0, 0.0
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        outputs = model.outputs(xb, samples=samples, generator=generator)
        p = model.likelihood(outputs)
        log_p = p.log_prob(yb)  # (S, B)
        total_ll += float((torch.logsumexp(log_p, 0) - math.log(samples)).sum())
        if model.task == "regression":
            total_sq += float((p.mean.mean(0) - yb).square().sum())
        else:
            total_wrong += float((cast(Categorical, p).probs.mean(0).argmax(-1) != yb).sum())
    n = x.shape[0]
    out = {"log_likelihood": total_ll / n}
    if model.task == "regression":
        out["rmse"] = math.sqrt(total_sq / n)
    else:
        out["error"] = total_wrong / n
    return out


def fit_bnn(model: BNN, table: Table, config: RunConfig, *, out: Path | None = None, resume: bool = False,
            on_epoch: Callable[[dict[str, Any]], None] | None = None,
            on_checkpoint: Callable[[], None] | None = None) -> FitResult:  # fmt: skip
    """Train ``model`` by Adam on the ELBO over its weights (``config``: epochs, batch_size, lr, lr_schedule,
    k weight draws per step, beta and anneal, clip, patience, seed, device).

    Args:
        model: a :class:`elbokit.models.bnn.BNN` (its standardization already set from the training split).
        table: the data (train and validation splits; the first ``config.limit`` training points).
        config: the run's settings (``model="bnn"``).
        out: run directory (None: nothing written) for ``metrics.jsonl``, ``checkpoint.safetensors`` (+
            ``state.json``) and ``best.safetensors`` (the epoch with the best validation log-likelihood).
        resume: continue from ``out``'s checkpoint (from the start when there is none yet).
        on_epoch: called with each epoch's metrics; on_checkpoint: after each checkpoint is written.

    Returns:
        FitResult; ``best_validation`` is the best validation log-likelihood per point. Raises TrainingDiverged on
        a non-finite loss (the last checkpoint is kept).
    """
    config.validate()
    if config.estimator != model.estimator:
        raise ValueError(f"the config's estimator {config.estimator!r} is not the network's {model.estimator!r}")
    if world().distributed:
        raise ValueError("a bnn trains in one process: its weights are one latent shared by every point")
    device = resolve_device(config.device)
    model.to(device)
    x_train, y_train = table.x_train[: config.limit].to(device), table.y_train[: config.limit].to(device)
    x_valid, y_valid = table.x_validation.to(device), table.y_validation.to(device)
    for name, x, y in (("train", x_train, y_train), ("validation", x_valid, y_valid)):  # once: the steps skip it
        try:
            model._check_y(y, model._check_x(x).shape[0])
        except ValueError as err:
            raise ValueError(f"{table.name} ({name} split): {err}") from None
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    schedule = parse_schedule(config.anneal, steps_per_epoch=steps_per_epoch)
    warning = check_reaches_target(schedule, steps_per_epoch * config.epochs, config.beta)
    if warning:
        import warnings

        warnings.warn(warning, stacklevel=2)
    optimizer = make_optimizer(list(model.parameters()), config.lr)  # fused Adam, as the VAE trainer's
    checkpoint = None
    if resume:
        if out is None:
            raise ValueError("resume needs a run directory")
        if (out / CHECKPOINT).exists():
            checkpoint = load_checkpoint(out)
            check_state(checkpoint.state, str(out / CHECKPOINT), complete=True)
            check_resumable(checkpoint.state, config)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)

    epoch, position, step = 0, 0, 0
    sums = {"bound": 0.0, "reconstruction": 0.0, "kl": 0.0, "seconds": 0.0}
    history: list[dict[str, Any]] = []
    best: float | None = None
    since_best = 0
    if checkpoint is not None:
        assert out is not None
        load_model_state(model, checkpoint, source=f"{out / CHECKPOINT}")
        load_optimizer_state(optimizer, checkpoint)
        s = checkpoint.state
        epoch, position, step = int(s["epoch"]), int(s["position"]), int(s["step"])
        sums = dict(s["sums"])
        best, since_best = s.get("best"), int(s.get("since_best", 0))
        history = _read_metrics(out, keep=epoch)
    elif resume and out is not None:
        for name in (METRICS, STEPS, BEST):  # killed before its first checkpoint: start again
            (out / name).unlink(missing_ok=True)
    saved = [checkpoint is not None]

    def save(where: str) -> None:
        if out is None:
            return
        state = {"epoch": epoch, "position": position, "step": step, "sums": sums, "best": best,
                 "since_best": since_best, "config": config.to_dict(), "saved": where}  # fmt: skip
        if where == "epoch" and since_best == 0:  # the best file first (see elbokit.train.loop)
            save_checkpoint(out, model=model, optimizer=optimizer, state={**state, "saved": "best"}, name=BEST)
        save_checkpoint(out, model=model, optimizer=optimizer, state=state)
        saved[0] = True
        if on_checkpoint is not None:
            on_checkpoint()

    def kept() -> str:
        if out is None:
            return "nothing was saved"
        return f"the last good checkpoint is kept in {out}" if saved[0] else f"no checkpoint was written to {out}"

    generator = torch.Generator(device=device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # this epoch's sums of per-point bound, recon., KL
    totals += torch.tensor([sums["bound"], sums["reconstruction"], sums["kl"]], dtype=torch.float64, device=device)
    stopped = "completed"
    model.train()
    with _stop_requests() as stop_requested, unvalidated():
        while epoch < config.epochs:
            lr = config.lr * lr_factor(config.lr_schedule, epoch, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            order = torch.randperm(n, generator=epoch_generator(config.seed, epoch, 0)).to(device)
            started = time.perf_counter()
            while position < steps_per_epoch:
                if stop_requested():
                    sums.update(_read(totals))
                    sums["seconds"] += time.perf_counter() - started
                    save("interrupted")
                    return FitResult(epoch, step, history, best, "interrupted")
                index = order[position * config.batch_size : (position + 1) * config.batch_size]
                generator.manual_seed(step_seed(config.seed, step))
                bound = model.bound(x_train[index], y_train[index], num_data=n, samples=config.k, generator=generator)
                beta = config.beta * schedule.factor(step)
                loss = -(bound.reconstruction_total - beta * bound.kl) / n
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
                # the bound per point, its data term per point and the KL per point, weighted by the batch's share
                share = index.shape[0]
                terms = torch.stack([bound.per_point, bound.reconstruction_total / n, bound.kl_per_point])
                totals += share * terms.detach().double()
                if not bool(torch.isfinite(loss)):
                    raise TrainingDiverged(f"non-finite loss at step {step} (epoch {epoch + 1}); {kept()}")
                optimizer.step()
                position += 1
                step += 1
            sums.update(_read(totals))
            sums["seconds"] += time.perf_counter() - started
            model.eval()
            generator.manual_seed(validation_seed(config.seed, epoch))
            valid = predictive_figures(model, x_valid, y_valid, samples=VALIDATION_SAMPLES, generator=generator)
            model.train()
            if not math.isfinite(valid["log_likelihood"]):
                raise TrainingDiverged(f"non-finite validation log-likelihood after epoch {epoch + 1}; {kept()}")
            record: dict[str, Any] = {
                "epoch": epoch + 1, "step": step, "beta": config.beta * schedule.factor(step - 1), "lr": lr,
                "train_bound": sums["bound"] / n, "train_reconstruction": sums["reconstruction"] / n,
                "train_kl": sums["kl"] / n, **{f"validation_{k}": v for k, v in valid.items()},
                "seconds": sums["seconds"], "examples_per_second": n / max(sums["seconds"], 1e-9),
                "batch_size": config.batch_size, "processes": 1,
            }  # fmt: skip
            history.append(record)
            if best is None or valid["log_likelihood"] > best:
                best, since_best = valid["log_likelihood"], 0
            else:
                since_best += 1
            epoch, position = epoch + 1, 0
            sums = {"bound": 0.0, "reconstruction": 0.0, "kl": 0.0, "seconds": 0.0}
            totals.zero_()
            if out is not None:
                append_metrics(out / METRICS, record)
            save("epoch")
            if on_epoch is not None:
                on_epoch(record)
            if config.patience is not None and since_best >= config.patience:
                stopped = "early-stopping"
                break
    model.eval()
    return FitResult(epoch, step, history, best, stopped)


def _read(totals: torch.Tensor) -> dict[str, float]:
    bound, reconstruction, kl = (float(v) for v in totals.tolist())
    return {"bound": bound, "reconstruction": reconstruction, "kl": kl}
