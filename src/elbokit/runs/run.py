"""A run directory as an object: :class:`Run`."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from elbokit.config import RunConfig
from elbokit.data import Dataset
from elbokit.diagnostics.rate_distortion import SweepPoint
from elbokit.diagnostics.reference import ReferenceMethod
from elbokit.distributed import rank_device, world
from elbokit.models import VAE, Guide
from elbokit.report.images import image_grid, write_png
from elbokit.runs.build import build_model, check_data, load_data, training_points
from elbokit.runs.evaluation import Evaluation, evaluate
from elbokit.runs.files import CONFIG, EVALUATION, check_data_file, read_description, which_checkpoint, write_json
from elbokit.train.checkpoint import load_checkpoint, load_model_state
from elbokit.train.epochs import resolve_device
from elbokit.train.records import METRICS

if TYPE_CHECKING:
    from elbokit.diagnostics import Diagnosis, Disentanglement


#: What ``elbokit diagnose`` writes beside a run.
DIAGNOSTICS = "diagnostics.json"
CHECKPOINTS = ("auto", "best", "last")
#: Settings a resumed run may change, so that config.json and its checkpoint's copy may differ in them.
_MAY_CHANGE = ("epochs", "quiet", "device", "log_every", "tensorboard")


@dataclass
class Run:
    """A run directory as an object: its config, data, model (its encoder is the guide) and checkpoint state.

    ``Run.open(path)`` reads a directory that ``elbokit fit`` (or :func:`elbokit.fit` with ``out=``) wrote;
    :meth:`evaluate`, :meth:`diagnose`, :meth:`report` and :meth:`sample` do what the commands of the same names
    do and return typed results (each also writes its file beside the run unless ``save=False``).
    """

    path: Path
    config: RunConfig
    data: Dataset
    model: VAE
    state: dict[str, Any]
    checkpoint: str = "last"  # which file the parameters came from: "last" or "best"

    @classmethod
    def open(cls, path: str | Path, *, device: str = "auto", checkpoint: str = "auto") -> Run:
        """Read a run (never unpickling) onto ``device`` ("auto": CUDA when present, else the CPU, whatever
        device it was trained on). ``checkpoint``: "last", "best" (the epoch with the best validation bound), or
        "auto" (best when the run stops early, else last). ValueError (one line) for anything missing or wrong,
        including a data file that changed since training and a config.json that does not describe the
        checkpoint."""
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
        path = Path(path)
        if not path.is_dir():
            raise ValueError(f"run directory {path} does not exist")
        config = RunConfig.load(path / CONFIG)
        if config.model == "bnn":  # a Bayesian neural network's run: its own object, with evaluate and report
            from elbokit.runs.bnn import BNNRun

            bnn: Any = BNNRun.open(path, device=device, checkpoint=checkpoint)
            return bnn
        target = resolve_device(rank_device(device))  # in a process group: each rank on its own GPU
        checkpoint, name = which_checkpoint(path, config, checkpoint)
        saved = load_checkpoint(path, name=name)
        check_data_file(path, config, contents=False)
        data = load_data(config)
        trained_dim = read_description(path).get("data_dim")
        if trained_dim is not None and trained_dim != data.data_dim:
            raise ValueError(f"{config.data} now has dimension {data.data_dim}; the run was trained on {trained_dim}")
        check_data_file(path, config)
        model = build_model(config, data.data_dim, training_points(config, data), image_shape=data.image_shape)
        load_model_state(model, saved, source=f"{path / name}")
        recorded = saved.state.get("config", {})
        differs = [name for name, value in config.to_dict().items()
                   if name not in _MAY_CHANGE and name in recorded and recorded[name] != value]  # fmt: skip
        if differs:
            raise ValueError(f"{path / CONFIG} and its checkpoint describe different runs ({differs[0]} differs); "
                             "is another command replacing the run?")  # fmt: skip
        check_data(model, data)
        model.to(target).eval()
        return cls(path, config, data, model, saved.state, checkpoint)

    @property
    def guide(self) -> Guide:
        """q(z|x): the model's encoder (for a ``guide="local"`` run, a :class:`elbokit.NonAmortizedGaussian`:
        its training points' q by ``select(index)``, and q fitted per point for any x it is called with)."""
        return self.model.encoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """``metrics.jsonl``: one dict per epoch (train and validation bound, KL, β, lr, seconds)."""
        return read_history(self.path)

    def evaluate(self, *, k: int = 1000, split: str = "test", limit: int | None = None, seed: int = 0,
                 proposal: str = "refined", refine_steps: int = 300, progress: bool = False,
                 save: bool = True) -> Evaluation:  # fmt: skip
        """ELBO and importance-sampled log p(x) ± its standard error on a split (:func:`evaluate`); ``save``
        writes ``evaluation.json``."""
        result = evaluate(self, k=k, split=split, limit=limit, seed=seed, proposal=proposal,
                          refine_steps=refine_steps, progress=progress)  # fmt: skip
        if save and world().main:  # in a process group, rank 0 writes
            write_json(self.path / EVALUATION, result.to_dict())
        return result

    def diagnose(self, *, k: int = 1000, limit: int | None = 1000, split: str = "test", refine_steps: int = 300,
                 ais_steps: int | None = None, reference: ReferenceMethod = "is", seed: int = 0,
                 save: bool = True) -> Diagnosis:  # fmt: skip
        """:func:`elbokit.diagnostics.diagnose` on the first ``limit`` points of a split, labelled with this run
        and its checkpoint; ``save`` writes ``diagnostics.json``."""
        from elbokit.diagnostics import diagnose

        x = self.data.split(split)[:limit].to(self.device)
        d = diagnose(self.model, self.guide, x, k=k, refine_steps=refine_steps, ais_steps=ais_steps,
                     reference=reference, seed=seed)  # fmt: skip
        d = dataclasses.replace(d, run=str(self.path), split=split, epoch=self.state.get("epoch"),
                                step=self.state.get("step"))  # fmt: skip
        if save and world().main:  # in a process group, rank 0 writes
            write_json(self.path / DIAGNOSTICS, d.to_dict())
        return d

    def saved_diagnosis(self) -> Diagnosis | None:
        """``diagnostics.json`` when it is complete, well-typed and was computed on this checkpoint; else None (a
        stale, partial or crafted file is never used)."""
        return current_diagnosis(self.path, self.state.get("step"))

    def report(self, *, k: int = 1000, limit: int = 1000, ais_steps: int | None = None, refine_steps: int = 300,
               refresh: bool = False, on_diagnose: Callable[[], None] | None = None) -> Path:  # fmt: skip
        """Write ``report.html`` (self-contained, :func:`elbokit.report.write`) and return its path, diagnosing
        first when ``diagnostics.json`` is missing or stale (or ``refresh``); ``on_diagnose`` is called before
        that. ``metrics.jsonl`` and ``sweep.json`` are read first: a bad one is refused before any work."""
        from elbokit.report import write  # matplotlib loads only when a report is made

        history, sweep = self.metrics, read_sweep(self.path)
        d = None if refresh else self.saved_diagnosis()
        if d is None:
            if on_diagnose is not None:
                on_diagnose()
            d = self.diagnose(k=k, limit=limit, ais_steps=ais_steps, refine_steps=refine_steps)
        split = d.split or "test"
        return write(d, self.path / "report.html", model=self.model, x=self.data.split(split),
                     labels=self.data.labels(split), image_shape=self.data.image_shape,
                     discrete=self.data.support == "binary", history=history, sweep=sweep,
                     disentanglement=self.disentanglement(split=split),
                     settings=self.config.to_dict(), dataset=read_description(self.path),
                     title=self.path.name or str(self.path))  # fmt: skip

    def disentanglement(
        self, *, split: str = "test", limit: int | None = 5000, seed: int = 0
    ) -> Disentanglement | None:
        """MIG, DCI and the FactorVAE score of the codes E_q z of a split's first ``limit`` points
        (:func:`elbokit.diagnostics.disentanglement`), for data with known generative factors (the sprite
        datasets); ``None`` for other data."""
        from elbokit.runs.factors import factor_scores

        return factor_scores(self.model, self.data, split, limit=limit, data_seed=self.config.seed, seed=seed)

    def sample(self, n: int = 64, *, seed: int = 0, draw: bool = False) -> Tensor:
        """(n, D) samples x from the model: decoded means of z ~ p(z), or draws x ~ p(x|z) with ``draw``."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        with torch.inference_mode():
            return self.model.sample(n, generator=gen, mean=not draw)


def current_diagnosis(run_dir: Path, step: Any) -> Diagnosis | None:
    """``run_dir/diagnostics.json`` when it is complete, well-typed and was computed on the checkpoint at
    ``step``; else None (a stale, partial or crafted file is never used)."""
    from elbokit.diagnostics import Diagnosis

    try:
        d = Diagnosis.from_dict(json.loads((Path(run_dir) / DIAGNOSTICS).read_text(encoding="utf-8")))
    except (OSError, ValueError, RecursionError, TypeError):  # missing, not JSON/UTF-8, too deep, wrong types
        return None
    return d if d.step is not None and d.step == step else None


def open_run(path: str | Path, *, device: str = "auto", checkpoint: str = "auto") -> Run:
    """:meth:`Run.open`."""
    return Run.open(path, device=device, checkpoint=checkpoint)


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` rows ([] when missing); a line that is not a JSON object is an error."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            row = None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: not an epoch's metrics")
        rows.append(row)
    return rows


#: What ``elbokit sweep`` writes beside a run.
SWEEP = "sweep.json"


def _sweep_row(row: Any) -> bool:
    """A row of ``sweep.json``: every SweepPoint field and nothing else, each a number (an int or float that
    converts to float, not a bool) but the path (a string or null) and the disentanglement scores (numbers or
    null; absent from a sweep written before them)."""

    def real(value: Any) -> bool:
        return isinstance(value, float) or (type(value) is int and abs(value) <= sys.float_info.max)

    optional = set(SweepPoint._field_defaults)
    if not isinstance(row, dict) or not set(SweepPoint._fields) - optional <= set(row) <= set(SweepPoint._fields):
        return False
    path = row["path"]
    return (path is None or isinstance(path, str)) and all(
        real(v) or (k in optional and v is None) for k, v in row.items() if k != "path"
    )


def read_sweep(run_dir: str | Path) -> list[SweepPoint] | None:
    """The points ``elbokit sweep`` wrote to ``sweep.json``, or None when there is no sweep; ValueError (one line)
    for anything else, including a value that is not a number where the point has one."""
    path = Path(run_dir) / SWEEP
    if not path.exists():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        rows = None
    if not isinstance(rows, list) or not all(_sweep_row(row) for row in rows):
        raise ValueError(f"{path} is not a sweep written by `elbokit sweep`")
    return [SweepPoint(**(row | {"path": Path(row["path"]) if row["path"] else None})) for row in rows]


def write_images(path: Path, images: Tensor, shape: tuple[int, int], *, columns: int | None = None) -> None:
    write_png(path, image_grid(images.detach().float().cpu().clamp(0, 1), image_shape=shape, columns=columns))


@torch.inference_mode()
def write_pictures(run: Run, *, n: int = 64, seed: int = 0) -> list[Path]:
    """``samples.png`` (decoded z ~ p(z)) and ``reconstructions.png`` (test images above their reconstructions)."""
    shape = run.data.image_shape
    if shape is None:
        return []
    device = next(run.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = run.model.sample(n, generator=gen)
    columns = min(8, run.data.test.shape[0])
    rows = max(1, min(4, run.data.test.shape[0] // columns))
    originals = run.data.test[: columns * rows].to(device)
    recon = run.model.reconstruct(originals)
    # Rows alternate: a row of originals, then their reconstructions.
    pairs = torch.stack([originals.view(rows, columns, -1), recon.view(rows, columns, -1)], 1)
    pairs = pairs.reshape(-1, originals.shape[1])
    written = [run.path / "samples.png", run.path / "reconstructions.png"]
    write_images(written[0], samples, shape)
    write_images(written[1], pairs, shape, columns=columns)
    return written
