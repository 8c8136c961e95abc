"""A run directory's files: their names, what marks a folder as a run, the recorded data file, and the writer that
holds the lock (:func:`writing_run`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from elbokit._io import atomic_write
from elbokit.config import RunConfig
from elbokit.data import Dataset, available
from elbokit.data.registry import FILE_SUFFIXES
from elbokit.rundir import (
    REPLACED,
    discard_replaced,
    locked,
    remove_stale_temporaries,
    replaced_folder,
    restore,
    set_aside,
)
from elbokit.train.checkpoint import BEST, CHECKPOINT, STATE
from elbokit.train.records import METRICS, STEPS, TENSORBOARD

CONFIG = "config.json"
DATASET = "dataset.json"
EVALUATION = "evaluation.json"
#: Files a run consists of: their presence marks a folder as holding a run.
RUN_FILES = (CONFIG, DATASET, METRICS, CHECKPOINT, STATE, BEST, STEPS, TENSORBOARD, EVALUATION, "samples.png",
             "reconstructions.png", "diagnostics.json", "report.html")  # fmt: skip
#: What --overwrite sets aside: the run's files and what was derived from it (a sweep over its β).
REPLACED_BY_OVERWRITE = (*RUN_FILES, "sweep.json", "sweep", "tmp")

def run_model(path: Path) -> str:
    """The kind of model the run in ``path`` trains ("vae" or "bnn"), from its config.json; "vae" when it cannot be
    read (opening the run then says what is wrong)."""
    try:
        values = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "vae"
    model = values.get("model", "vae") if isinstance(values, dict) else "vae"
    return model if model in ("vae", "bnn") else "vae"


def vae_only(path: Path, command: str) -> None:
    """Refuse (one line) ``command`` on a bnn run."""
    if run_model(path) == "bnn":
        raise ValueError(f"{command} applies to VAE runs; {path} holds a bnn run (it has evaluate and report)")


def which_checkpoint(path: Path, config: RunConfig, checkpoint: str) -> tuple[str, str]:
    """The checkpoint a reading command opens, as ("last" | "best", its file name): ``checkpoint`` "last", "best"
    or "auto" (best when the run stops early and has one, else last). ValueError (one line) when it is missing, or
    when the folder's new run stopped before its first checkpoint and the run it replaced is set aside."""
    if not (path / CHECKPOINT).exists() and replaced_folder(path) is not None:
        raise ValueError(f"no checkpoint in {path}: its new run stopped before writing one; the run it "
                         f"replaced is kept in {path / REPLACED}")  # fmt: skip
    if checkpoint == "auto":
        checkpoint = "best" if config.patience is not None and (path / BEST).exists() else "last"
    if checkpoint == "best" and not (path / BEST).exists():
        raise ValueError(f"no best checkpoint in {path} ({BEST} is missing: a run from before it was kept)")
    return checkpoint, BEST if checkpoint == "best" else CHECKPOINT


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def is_data_file(data: str) -> bool:
    """Whether a run's ``data`` setting names a file rather than a registered dataset (as :func:`load` decides)."""
    path = Path(data).expanduser()
    return data not in available() and (path.suffix.lower() in FILE_SUFFIXES or path.exists())


def absolute_data(config: RunConfig) -> RunConfig:
    """``config`` with a data file and ``data_dir`` as absolute paths, so that the run reads the same file from
    any working folder (a registered dataset name is kept as it is)."""
    changes: dict[str, Any] = {}
    if is_data_file(config.data):
        changes["data"] = str(Path(config.data).expanduser().absolute())
    if config.data_dir is not None:
        changes["data_dir"] = str(Path(config.data_dir).expanduser().absolute())
    return dataclasses.replace(config, **changes) if changes else config


def describe_data(config: RunConfig, data: Dataset) -> dict[str, Any]:
    """What ``dataset.json`` records: the dataset's description and, for a data file, its size and SHA-256, so
    that a later command notices a file that changed under the run."""
    described = data.describe()
    if is_data_file(config.data):
        path = Path(config.data)
        described["file"] = {"path": str(path), "bytes": path.stat().st_size, "sha256": _sha256(path)}
    return described


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_data_file(run_dir: Path, config: RunConfig, *, contents: bool = True) -> None:
    """Refuse (one line) a run whose data file is missing or (``contents``) has changed since the run was trained
    on it."""
    recorded = read_description(run_dir).get("file")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("sha256"), str):
        return  # a named dataset, or a run from before files were recorded
    path = Path(config.data)
    if not path.is_file():
        raise ValueError(f"the run's data file {path} is missing (the run was trained on it)")
    if contents and (path.stat().st_size != recorded.get("bytes") or _sha256(path) != recorded["sha256"]):
        raise ValueError(f"the run's data file {path} has changed since the run was trained on it (its size or "
                         "SHA-256 differs from dataset.json)")  # fmt: skip


class RunWriter:
    """What ``fit`` and ``sweep`` hold while they write a run directory: its lock, and the run an --overwrite set
    aside until the new run's first checkpoint (:meth:`committed`)."""

    def __init__(self, path: Path, aside: Path | None) -> None:
        self.path, self.aside = path, aside

    def committed(self) -> None:
        """The new run has written a checkpoint: the set-aside run is no longer needed."""
        if self.aside is not None:
            discard_replaced(self.path)
            self.aside = None


@contextmanager
def writing_run(path: Path, config: RunConfig, data: Dataset, *, resume: bool = False,
                overwrite: bool = False) -> Iterator[RunWriter]:  # fmt: skip
    """Open ``path`` for writing a run (everything about the run already checked): take its lock, remove stale
    temporary files, set an old run aside (``overwrite``), write ``config.json`` and ``dataset.json`` (on resume,
    the config again when its epoch count grew, and the dataset when a kill left it unwritten). A failure
    before the new run's first checkpoint moves the old run back."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    with locked(path):
        if resume and not holds_run(path):
            raise ValueError(f"{path} holds no run to resume")
        if not (resume or overwrite) and holds_run(path):
            raise ValueError(f"{path} already holds a run; pass --resume to continue it or --overwrite to replace it")
        remove_stale_temporaries(path)
        aside = set_aside(path, REPLACED_BY_OVERWRITE) if overwrite else replaced_folder(path)
        writer = RunWriter(path, aside)
        try:
            if not resume or not (path / CONFIG).exists() or RunConfig.load(path / CONFIG) != config:
                write_json(path / CONFIG, config.to_dict())
            if not resume or not (path / DATASET).exists():
                write_json(path / DATASET, describe_data(config, data))
            yield writer
        except BaseException:
            if overwrite and writer.aside is not None and not (path / CHECKPOINT).exists():
                restore(path, REPLACED_BY_OVERWRITE)
            raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=2) + "\n").encode())


def read_description(run_dir: Path) -> dict[str, Any]:
    """The run's ``dataset.json`` (what it was trained on), or {} when missing or unreadable."""
    try:
        described = json.loads((run_dir / DATASET).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return described if isinstance(described, dict) else {}


def image_shape(run_dir: Path) -> tuple[int, int] | None:
    shape = read_description(run_dir).get("image_shape")
    return (int(shape[0]), int(shape[1])) if shape else None


