"""Training into a run directory, with every guarantee of ``elbokit fit``: :func:`train_run`."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from elbokit.config import RunConfig
from elbokit.data import Dataset
from elbokit.distributed import world
from elbokit.runs.build import load_data, new_model, resolve_likelihood
from elbokit.runs.files import CONFIG, absolute_data, check_data_file, holds_run, writing_run
from elbokit.runs.run import Run, write_pictures
from elbokit.train.checkpoint import CHECKPOINT
from elbokit.train.epochs import resolve_device
from elbokit.train.loop import FitResult, fit
from elbokit.train.records import check_resume
from elbokit.train.schedules import parse_schedule

#: What a resumed run may change (the others must equal the run's own).
RESUMABLE = ("epochs", "quiet", "device", "log_every", "tensorboard")


class Trained(NamedTuple):
    """What :func:`train_run` did: the run (opened on its last checkpoint's parameters) and fit's result."""

    run: Run  # a BNNRun for a bnn run
    result: FitResult
    pictures: list[Path]  # samples.png and reconstructions.png, for image data


def resumed_config(out: Path, changes: dict[str, Any] | None = None) -> RunConfig:
    """The configuration of the run in ``out`` with ``changes`` to the settings a resumed run may change;
    ValueError naming a setting that differs from the run's otherwise."""
    saved = RunConfig.load(Path(out) / CONFIG)
    changes = dict(changes or {})
    for name, value in changes.items():
        if name not in RESUMABLE and getattr(saved, name) != value:
            raise ValueError(f"--{name.replace('_', '-')} {value} differs from the run's {getattr(saved, name)!r}; "
                             "a resumed run keeps its configuration")  # fmt: skip
    values = saved.to_dict() | {name: changes[name] for name in RESUMABLE if name in changes}
    return RunConfig.from_dict(values, source=f"{Path(out) / CONFIG}")


def train_run(out: str | Path, config: RunConfig | None = None, *, resume: bool = False, overwrite: bool = False,
              on_start: Callable[[RunConfig, Dataset], None] | None = None,
              on_epoch: Callable[[dict[str, Any]], None] | None = None,
              note: Callable[[str], None] = lambda _: None) -> Trained:  # fmt: skip
    """Train a VAE into the run directory ``out`` as ``elbokit fit`` does.

    Everything is checked before anything in ``out`` is written (the config, the data, a resumed checkpoint);
    the folder is locked for the duration; ``overwrite`` sets an old run aside until the new one's first
    checkpoint; ``resume`` continues from the checkpoint (from the start if the run was stopped before its
    first). A data file is recorded by its absolute path and SHA-256, and ``likelihood="auto"`` is resolved
    against the data and recorded.

    Args:
        out: the run directory.
        config: the run's settings (a new run); for ``resume``, None or the run's own with new RESUMABLE values.
        resume, overwrite: continue the run in ``out``, or replace it (they exclude each other).
        on_start: called with the final config (paths absolute, the likelihood resolved) and the data, once
            everything is checked and just before training starts.
        on_epoch: called with each epoch's metrics.
        note: called with one-line notes for the user (an old run set aside, a resume from the start).

    Returns:
        :class:`Trained`: the :class:`Run` and :class:`elbokit.FitResult`.
    """
    out = Path(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if resume and not holds_run(out):
        raise ValueError(f"--resume: {out} holds no run to resume")
    if holds_run(out) and not (resume or overwrite):
        raise ValueError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if resume:
        given = {} if config is None else {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        config = resumed_config(out, given)
    elif config is None:
        raise ValueError("a new run needs a config")
    else:
        config = absolute_data(config)
    resolve_device(config.device)
    if world().distributed and parse_schedule(config.anneal).kind == "freebits":
        raise ValueError("free bits takes the KL per dimension over the whole minibatch: train it in one process")
    if resume:
        check_data_file(out, config)
    if config.model == "bnn":
        if world().distributed:
            raise ValueError("a bnn trains in one process: its weights are one latent shared by every point")
        from elbokit.runs.bnn import train_bnn_run

        bnn_run, bnn_result = train_bnn_run(out, config, resume=resume, overwrite=overwrite, on_start=on_start,
                                            on_epoch=on_epoch, note=note)  # fmt: skip
        return Trained(bnn_run, bnn_result, [])  # type: ignore[arg-type]
    data = load_data(config)
    config = resolve_likelihood(config, data)
    model = new_model(config, data)
    if resume:
        check_resume(out, model, model.encoder, config)
    if not world().main:  # another rank of a process group: it trains beside rank 0, which writes the run
        result = fit(model, model.encoder, data, config, out=out, resume=resume)
        return Trained(Run(out, config, data, model.eval(), {}), result, [])
    with writing_run(out, config, data, resume=resume, overwrite=overwrite) as writer:
        if writer.aside is not None:
            note(f"the run {'replaced' if overwrite else 'an --overwrite replaced'} is kept in {writer.aside} until "
                 "this run writes its first checkpoint")  # fmt: skip
        if resume and not (out / CHECKPOINT).exists():
            note(f"{out} has no checkpoint yet (stopped before its first): starting from the beginning")
        if on_start is not None:
            on_start(config, data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit(model, model.encoder, data, config, out=out, resume=resume, on_epoch=on_epoch,
                         on_checkpoint=writer.committed)  # fmt: skip
        for w in caught:
            note(f"warning: {w.message}")
        run = Run(out, config, data, model.eval(), {})
        pictures = write_pictures(run, seed=config.seed) if result.stopped != "interrupted" else []
    return Trained(run, result, pictures)
