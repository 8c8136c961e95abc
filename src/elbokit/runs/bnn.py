"""A Bayesian neural network's run directory (``elbokit fit --model bnn``): training into it with every guarantee of
a VAE run (:func:`train_bnn_run`), and :class:`BNNRun`, the directory as an object (``Run.open`` returns one for a
bnn run): its model, data, metrics, :meth:`BNNRun.evaluate` and :meth:`BNNRun.report`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elbokit.config import RunConfig
from elbokit.data.tables import Table, load_table
from elbokit.models.bnn import BNN, parse_prior
from elbokit.runs.bnn_evaluation import BNNEvaluation, evaluate_bnn
from elbokit.runs.build import ACTIVATIONS
from elbokit.runs.files import (
    CONFIG,
    EVALUATION,
    check_data_file,
    read_description,
    which_checkpoint,
    write_json,
    writing_run,
)
from elbokit.train.checkpoint import CHECKPOINT, load_checkpoint, load_model_state
from elbokit.train.epochs import resolve_device
from elbokit.train.loop import FitResult

#: Settings a resumed run may change, so that config.json and its checkpoint's copy may differ in them.
_MAY_CHANGE = ("epochs", "quiet", "device", "log_every", "tensorboard")


def load_bnn_table(config: RunConfig) -> Table:
    """The run's data as a supervised table (its target column, or an image dataset's labels)."""
    return load_table(config.data, target=config.target, task=config.task, seed=config.seed, data_dir=config.data_dir)


def build_bnn(config: RunConfig, table: Table) -> BNN:
    """The network a config describes for ``table``: ``hidden`` layers of ``activation``, the prior and the
    estimator; one output (regression) or one per class; float32."""
    out = 1 if table.task == "regression" else int(table.classes or 0)
    model = BNN(table.in_features, config.hidden, out, task=table.task, activation=ACTIVATIONS[config.activation],
                prior=parse_prior(config.prior), estimator=config.estimator)  # fmt: skip
    return model.to(torch.float32)


def new_bnn(config: RunConfig, table: Table) -> BNN:
    """The freshly initialised network of a run: seeded, its inputs (and a regression's target) standardized by
    the training split's mean and standard deviation."""
    torch.manual_seed(config.seed)
    model = build_bnn(config, table)
    x, y = table.x_train[: config.limit], table.y_train[: config.limit]
    model.standardize(x, y if table.task == "regression" else None)
    return model


def train_bnn_run(out: Path, config: RunConfig, *, resume: bool, overwrite: bool,
                  on_start: Callable[[RunConfig, Any], None] | None, on_epoch: Callable[[dict[str, Any]], None] | None,
                  note: Callable[[str], None]) -> tuple[BNNRun, FitResult]:  # fmt: skip
    """:func:`elbokit.runs.train.train_run` for ``config.model == "bnn"`` (``config`` final: checked, paths
    absolute): the table and the resumed checkpoint are checked before ``out`` is written."""
    from elbokit.train.bnn import fit_bnn

    table = load_bnn_table(config)
    model = new_bnn(config, table)
    if resume and (out / CHECKPOINT).exists():
        _check_resume(out, config, table)
    with writing_run(out, config, table, resume=resume, overwrite=overwrite) as writer:  # type: ignore[arg-type]
        if writer.aside is not None:
            note(f"the run {'replaced' if overwrite else 'an --overwrite replaced'} is kept in {writer.aside} until "
                 "this run writes its first checkpoint")  # fmt: skip
        if resume and not (out / CHECKPOINT).exists():
            note(f"{out} has no checkpoint yet (stopped before its first): starting from the beginning")
        if on_start is not None:
            on_start(config, table)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit_bnn(model, table, config, out=out, resume=resume, on_epoch=on_epoch,
                             on_checkpoint=writer.committed)  # fmt: skip
        for w in caught:
            note(f"warning: {w.message}")
    return BNNRun(out, config, table, model.eval(), {}), result


def _check_resume(out: Path, config: RunConfig, table: Table) -> None:
    """Everything a resumed bnn run reads, checked on a throwaway network before anything is written."""
    from elbokit.train.checkpoint import check_state, load_optimizer_state
    from elbokit.train.records import _read_metrics, check_resumable
    from elbokit.train.step import make_optimizer

    saved = load_checkpoint(out)
    check_state(saved.state, str(out / CHECKPOINT), complete=True)
    check_resumable(saved.state, config)
    model = build_bnn(config, table)
    load_model_state(model, saved, source=f"{out / CHECKPOINT}")
    load_optimizer_state(make_optimizer(list(model.parameters()), config.lr), saved)
    _read_metrics(out, keep=int(saved.state["epoch"]), rewrite=False)


@dataclass
class BNNRun:
    """A bnn run directory as an object: its config, table, network (q(w) and the likelihood) and checkpoint
    state. :meth:`evaluate` and :meth:`report` do what ``elbokit evaluate`` and ``elbokit report`` do."""

    path: Path
    config: RunConfig
    table: Table
    model: BNN
    state: dict[str, Any]
    checkpoint: str = "last"

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto", checkpoint: str = "auto") -> BNNRun:
        """Read a bnn run (never unpickling) onto ``device``; ``checkpoint`` "last", "best" (the epoch with the best
        validation log-likelihood) or "auto" (best when the run stops early, else last)."""
        path = Path(path)
        config = RunConfig.load(path / CONFIG)
        target = resolve_device(device)
        checkpoint, name = which_checkpoint(path, config, checkpoint)
        saved = load_checkpoint(path, name=name)
        check_data_file(path, config)
        table = load_bnn_table(config)
        trained = read_description(path).get("in_features")
        if trained is not None and trained != table.in_features:
            raise ValueError(f"{config.data} now has {table.in_features} features; the run was trained on {trained}")
        model = build_bnn(config, table)
        load_model_state(model, saved, source=f"{path / name}")
        recorded = saved.state.get("config", {})
        differs = [k for k, v in config.to_dict().items()
                   if k not in _MAY_CHANGE and k in recorded and recorded[k] != v]  # fmt: skip
        if differs:
            raise ValueError(f"{path / CONFIG} and its checkpoint describe different runs ({differs[0]} differs)")
        return cls(path, config, table, model.to(target).eval(), saved.state, checkpoint)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """``metrics.jsonl``: one dict per epoch (train ELBO per point, KL, validation log-likelihood, RMSE/error)."""
        from elbokit.runs.run import read_history

        return read_history(self.path)

    def evaluate(self, *, samples: int = 100, split: str = "test", limit: int | None = None, seed: int = 0,
                 save: bool = True) -> BNNEvaluation:  # fmt: skip
        """Test log-likelihood ± its standard error, RMSE or error rate, and calibration on a split, by ``samples``
        draws of the weights (:func:`elbokit.runs.bnn_evaluation.evaluate_bnn`); ``save`` writes
        ``evaluation.json``."""
        x, y = self.table.split(split)
        result = evaluate_bnn(self.model, x[:limit], y[:limit], samples=samples, seed=seed, split=split)
        if save:
            where = {"checkpoint": self.checkpoint, "epoch": self.state.get("epoch"), "step": self.state.get("step")}
            write_json(self.path / EVALUATION, {**result.to_dict(), **where})
        return result

    def report(self, *, samples: int = 100, split: str = "test", limit: int | None = 1000, seed: int = 0) -> Path:
        """Write ``report.html`` (self-contained: settings, data, the predictive figures on the first ``limit``
        points of ``split``, training curves, the calibration and uncertainty-vs-error figures) and return its
        path."""
        from elbokit.report.bnn import write_bnn_report

        history = self.metrics
        result = self.evaluate(samples=samples, split=split, limit=limit, seed=seed, save=False)
        return write_bnn_report(self.path / "report.html", result, history=history,
                                settings=self.config.to_dict(), dataset=read_description(self.path),
                                title=self.path.name or str(self.path))  # fmt: skip
