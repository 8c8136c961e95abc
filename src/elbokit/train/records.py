"""What a run writes beside its checkpoint, and reading it back on resume: ``metrics.jsonl`` (one line per
epoch), ``steps.jsonl`` (every ``log_every`` steps), TensorBoard event files, and the checks a resume makes before
anything is written (:func:`check_resume`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from torch import nn

from elbokit._io import atomic_write
from elbokit.config import RunConfig
from elbokit.models.base import Guide
from elbokit.train.checkpoint import (
    CHECKPOINT,
    check_state,
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
)
from elbokit.train.step import local_parameters, make_optimizer

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
    optimizer = make_optimizer(params, config.lr, local=local_parameters(guide), local_lr=config.local_lr)
    load_optimizer_state(optimizer, checkpoint)
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
