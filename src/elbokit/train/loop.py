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

import json
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import Tensor, nn
from tqdm import tqdm

from elbokit._io import atomic_write
from elbokit.config import RunConfig
from elbokit.data import Dataset
from elbokit.errors import TrainingDiverged
from elbokit.estimators._weights import check_data
from elbokit.models.base import FixedGuide, Guide, LatentModel
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
from elbokit.train.objective import evaluate_bound
from elbokit.train.schedules import check_reaches_target, lr_factor, parse_schedule
from elbokit.train.step import NonFiniteStep, TrainStep, is_local, make_optimizer, unvalidated

METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"  # with config.log_every: one line per N steps
TENSORBOARD = "tensorboard"  # with config.tensorboard: the folder of TensorBoard event files
TENSORBOARD_MISSING = "tensorboard needs the tensorboardX package: pip install 'elbokit[tensorboard]'"
#: TensorBoard tags of an epoch's figures, and their keys in its metrics record.
_EPOCH_SCALARS = (
    ("train/bound", "train_bound"), ("train/reconstruction", "train_reconstruction"), ("train/kl", "train_kl"),
    ("validation/bound", "validation_bound"), ("validation/elbo", "validation_elbo"),
    ("validation/reconstruction", "validation_reconstruction"), ("validation/kl", "validation_kl"),
    ("epoch/beta", "beta"), ("epoch/lr", "lr"),
)  # fmt: skip


@dataclass
class FitResult:
    """What ``fit`` did: epochs and steps completed, per-epoch metrics, and why it stopped."""

    epochs: int
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best_validation: float | None = None
    stopped: str = "completed"  # "completed", "early-stopping" or "interrupted"


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when present, else the CPU) or a torch device name; ValueError for one not usable here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu or cuda[:i], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A generator for one epoch's data order (stream 0) or binarization (stream 1): a function of
    (seed, epoch) alone, so a resumed run draws what an uninterrupted one does."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 4 + stream)


def _epoch_data(train: Tensor, *, seed: int, epoch: int, dynamic: bool) -> tuple[Tensor, Tensor]:
    order = torch.randperm(train.shape[0], generator=epoch_generator(seed, epoch, 0)).to(train.device)
    if not dynamic:
        return train, order
    # Dynamic binarization (a fresh x ~ Bernoulli(intensity) each epoch), drawn on the CPU for device-free
    # reproducibility.
    draw = torch.bernoulli(train.cpu(), generator=epoch_generator(seed, epoch, 1))
    return draw.to(train.device), order


@contextmanager
def _stop_requests() -> Iterator[Callable[[], bool]]:
    """SIGINT / SIGTERM set a flag checked between steps (the main thread only; elsewhere, no handlers)."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        requested.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield requested.is_set
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
    summary_writer = _summary_writer_class() if config.tensorboard and out is not None else None
    device = resolve_device(config.device)
    model.to(device)
    if isinstance(guide, nn.Module):
        guide.to(device)
    params = list(dict.fromkeys([*model.parameters(), *(guide.parameters() if isinstance(guide, nn.Module) else [])]))
    optimizer = make_optimizer(params, config.lr)
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
    if out is not None:
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
        history = _read_metrics(out, keep=epoch)
        _read_steps(out, keep=step)
    elif resume and out is not None:
        for name in (METRICS, STEPS, BEST):  # killed before its first checkpoint: start again
            (out / name).unlink(missing_ok=True)

    def save(where: str) -> None:
        if out is None:
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
    progress = not config.quiet and sys.stderr.isatty()
    stopped = "completed"
    logging = _logs(out, config, summary_writer, resumed_at=step if checkpoint is not None else None)
    with _stop_requests() as stop_requested, unvalidated(), logging as logs:
        while epoch < config.epochs:
            lr = config.lr * lr_factor(config.lr_schedule, epoch, config.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x_epoch, order = _epoch_data(train, seed=config.seed, epoch=epoch, dynamic=dynamic)
            bar = tqdm(total=steps_per_epoch, initial=position, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not progress, leave=False, unit="step")  # fmt: skip
            started = time.perf_counter()
            while position < steps_per_epoch:
                if stop_requested():
                    read_sums()
                    sums["seconds"] += time.perf_counter() - started
                    save("interrupted")
                    bar.close()
                    return FitResult(epoch, step, history, best, "interrupted")
                index = order[position * config.batch_size : (position + 1) * config.batch_size]
                logged = log_every is not None and (step + 1) % log_every == 0
                before = train_step._sums[0].clone() if logged else None  # on the device: no read yet
                if local:
                    train_step(x_epoch[index], index=index)
                else:
                    train_step(x_epoch[index])
                position += 1
                step += 1
                if before is not None:
                    bound = float(train_step._sums[0] - before) / index.shape[0]  # the one read
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
                whole = FixedGuide(cast(Any, guide).distribution())
                valid = evaluate_bound(latent, whole, x_epoch, objective=config.objective, k=config.k,
                                       batch_size=x_epoch.shape[0])  # fmt: skip
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
            }  # fmt: skip
            history.append(record)
            if best is None or valid["bound"] > best:
                best, since_best = valid["bound"], 0
            else:
                since_best += 1
            epoch, position = epoch + 1, 0
            sums = {"bound": 0.0, "reconstruction": 0.0, "kl": 0.0, "seconds": 0.0}
            train_step.reset()
            if out is not None:
                append_metrics(out / METRICS, record)
            logs.epoch(record)
            save("epoch")
            if on_epoch is not None:
                on_epoch(record)
            if config.patience is not None and since_best >= config.patience:
                stopped = "early-stopping"
                break
    return FitResult(epoch, step, history, best, stopped)


def _summary_writer_class() -> Any:
    """``tensorboardX.SummaryWriter``, imported only when asked for; ValueError naming the extra when missing."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ValueError(TENSORBOARD_MISSING) from None
    return SummaryWriter


class _Logs:
    """The optional per-step and TensorBoard logs of one ``fit`` call (either may be None)."""

    def __init__(self, steps: IO[str] | None, board: Any) -> None:
        self.steps, self.board = steps, board

    def step(self, record: dict[str, Any]) -> None:
        """One logged step's line in ``steps.jsonl`` (whole or, killed mid-write, torn and dropped on resume)."""
        if self.steps is not None:
            self.steps.write(json.dumps(record) + "\n")
            self.steps.flush()
        if self.board is not None:
            for key in ("bound", "beta", "lr"):
                self.board.add_scalar(f"step/{key}", record[key], record["step"])

    def epoch(self, record: dict[str, Any]) -> None:
        if self.board is not None:
            for tag, key in _EPOCH_SCALARS:
                self.board.add_scalar(tag, record[key], record["step"])
            self.board.flush()


@contextmanager
def _logs(out: Path | None, config: RunConfig, summary_writer: Any, *, resumed_at: int | None) -> Iterator[_Logs]:
    """Open ``steps.jsonl`` (with ``config.log_every``) and a TensorBoard writer (``summary_writer``, the class)
    in ``out``, for the duration of the block; ``resumed_at``: the step of the checkpoint resumed from."""
    steps = (out / STEPS).open("a", encoding="utf-8") if out is not None and config.log_every is not None else None
    board = None
    if summary_writer is not None and out is not None:
        # Each writer adds a new events file. A resumed run logs again the steps after its checkpoint, already in
        # an earlier file (duplicates, with equal values); purge_step tells TensorBoard to hide the earlier files'
        # events from that step on (and a fresh run's: everything earlier files hold). The files are named by the
        # second they were opened in and read in sorted order; the suffix keeps two opened in one second apart (the
        # writer truncates a file of its name) and in the order they were written.
        purge = 0 if resumed_at is None else resumed_at + 1
        board = summary_writer(str(out / TENSORBOARD), purge_step=purge, filename_suffix=f".step{purge:012d}")
    try:
        yield _Logs(steps, board)
    finally:
        if board is not None:
            board.close()
        if steps is not None:
            steps.close()


def _set_training(model: nn.Module, guide: Guide, mode: bool) -> None:
    model.train(mode)
    if isinstance(guide, nn.Module):
        guide.train(mode)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """Append one epoch's line to ``metrics.jsonl`` (a crash mid-append leaves a torn last line, which
    :func:`_read_metrics` drops on resume: the checkpoint, written after it, is then of the epoch before)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def check_resume(out: Path, model: nn.Module, guide: Guide, config: RunConfig) -> None:
    """Everything ``fit(..., resume=True)`` reads, checked without writing anything: the checkpoint (metadata,
    parameters, optimizer state, random-number state), the epoch count and ``metrics.jsonl``. A folder without a
    checkpoint (a run killed before its first) passes: it starts again."""
    if not (out / CHECKPOINT).exists():
        return
    checkpoint = load_checkpoint(out)
    check_state(checkpoint.state, str(out / CHECKPOINT), complete=True)
    check_resumable(checkpoint.state, config)
    load_model_state(model, checkpoint, source=f"{out / CHECKPOINT}")
    if isinstance(guide, nn.Module) and not _is_part_of(guide, model):
        load_model_state(guide, checkpoint, source=f"{out / CHECKPOINT}", prefix="guide.")
    params = list(dict.fromkeys([*model.parameters(), *(guide.parameters() if isinstance(guide, nn.Module) else [])]))
    load_optimizer_state(make_optimizer(params, config.lr), checkpoint)
    _read_metrics(out, keep=int(checkpoint.state["epoch"]), rewrite=False)
    _read_steps(out, keep=int(checkpoint.state["step"]), rewrite=False)


def check_resumable(state: dict[str, Any], config: RunConfig) -> None:
    """Refuse to resume a checkpoint with an epoch count that would not end where one uninterrupted run does."""
    done, before = int(state["epoch"]), state.get("config", {}).get("epochs")
    if config.epochs < done:
        raise ValueError(f"the checkpoint is at epoch {done}; epochs {config.epochs} would end before it "
                         "(give at least as many epochs)")  # fmt: skip
    if config.lr_schedule == "burda" and before is not None and config.epochs != before:
        raise ValueError(f"the burda lr schedule is scaled to the run's {before} epochs, so resuming with "
                         f"{config.epochs} would not end where one {config.epochs}-epoch run does; train a new run "
                         "instead")  # fmt: skip


def _read_metrics(out: Path, *, keep: int, rewrite: bool = True) -> list[dict[str, Any]]:
    """The metrics of the first ``keep`` epochs; later lines (from after the checkpoint) and a torn last line
    (a crash mid-append) are dropped, and the file is rewritten to match."""
    path = out / METRICS
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if len(records) == keep:
            break
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: not an epoch's metrics (corrupt file?)")
        records.append(record)
    if len(records) < keep:
        raise ValueError(f"{path} holds {len(records)} epochs' metrics but the checkpoint is at epoch {keep}")
    if rewrite:
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def _read_steps(out: Path, *, keep: int, rewrite: bool = True) -> None:
    """Drop the lines of ``steps.jsonl`` after step ``keep`` (logged after the checkpoint) and a torn last line (a
    crash mid-write), rewriting the file to match; ValueError for a line that is not a step's record."""
    path = out / STEPS
    if not path.exists():
        return
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    kept: list[str] = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            record = None
        if record is None and number == len(lines):
            break  # torn
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path}, line {number}: not a step's record (corrupt file?)")
        if record["step"] > keep:
            break
        kept.append(line)
    if rewrite and len(kept) < len(lines):
        atomic_write(path, "".join(kept).encode())


def _is_part_of(guide: nn.Module, model: nn.Module) -> bool:
    """Whether ``guide`` is ``model`` or one of its submodules (then its parameters are saved with the model's)."""
    return any(module is guide for module in model.modules())
