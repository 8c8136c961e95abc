"""A run directory's life: one writer at a time, nothing lost on --overwrite, nothing left half-made.

- **Lock.** A writer (``fit``, ``sweep``) holds an advisory ``fcntl.flock`` on ``DIR/.lock`` for as long as it
  runs, with its PID written inside. The OS releases the lock when the process ends, however it ends, so a killed
  run never leaves the folder locked. A second writer is refused with the holder's PID. Readers (``evaluate``,
  ``report``...) take no lock: the checkpoint is one file replaced atomically, so they always read a whole one.
- **Replacing a run.** ``--overwrite`` moves the old run's files into ``DIR/.replaced/`` and deletes them only
  once the new run has written its first checkpoint. If the new run fails before that, the old one is moved
  back; if it is killed, the old one stays in ``.replaced`` (and every command says so) until a run in the
  folder writes a checkpoint.
- **Leftovers.** Temporary files of atomic writes killed half-way (``.NAME.HEX.tmp``) are removed when the next
  writer starts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks; one writer is then the user's to ensure
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"
CHECKPOINT = "checkpoint.safetensors"  # the name train.checkpoint writes
REPLACED = ".replaced"


class RunInUse(ValueError):
    """Another process is writing the run directory (one-line message naming its PID)."""


@contextmanager
def locked(folder: Path, *, what: str = "elbokit fit") -> Iterator[None]:
    """Hold the run directory's writer lock for the duration of the block (the folder must exist)."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").split()
                pid = f"PID {holder[0]}" if holder and holder[0].isdigit() else "another process"
                raise RunInUse(f"{folder} is in use by another elbokit command ({pid}); wait for it to finish or "
                               "stop it") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left (call with the lock held)."""
    removed = []
    for path in folder.glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def replaced_folder(folder: Path) -> Path | None:
    """``DIR/.replaced`` when it holds a run that ``--overwrite`` set aside, else None."""
    aside = folder / REPLACED
    return aside if aside.is_dir() else None


def set_aside(folder: Path, names: tuple[str, ...]) -> Path | None:
    """Move the named files and folders of ``folder`` into ``folder/.replaced`` (call with the lock held) and
    return it, or None when there was nothing to move.

    A ``.replaced`` from an earlier overwrite is stale when the folder holds a checkpoint (a run there has
    trained since) and is deleted first; otherwise the folder holds a run killed before its first checkpoint,
    the set-aside run is the only trained one and is kept, with anything of it found in the folder merged back.
    """
    aside, staging = folder / REPLACED, folder / f"{REPLACED}.partial"
    if staging.is_dir():  # a set-aside killed half-way: put its files back first
        for path in staging.iterdir():
            if not (folder / path.name).exists():
                os.replace(path, folder / path.name)
        shutil.rmtree(staging)
    present = [name for name in names if (folder / name).exists()]
    if aside.is_dir():
        if (folder / CHECKPOINT).exists():
            shutil.rmtree(aside)
        else:
            for name in present:
                if (aside / name).exists():
                    _remove(folder / name)
                else:
                    os.replace(folder / name, aside / name)
            return aside
    if not present:
        return None
    staging.mkdir()
    for name in present:
        os.replace(folder / name, staging / name)
    os.replace(staging, aside)  # the set-aside run appears whole, or not at all
    return aside


def restore(folder: Path, names: tuple[str, ...]) -> None:
    """Undo :func:`set_aside` after the new run failed before its first checkpoint: remove what it wrote and
    move the old run back, its checkpoint last (so that a checkpoint in the folder means the whole run is back)."""
    aside = folder / REPLACED
    if not aside.is_dir():
        return
    for name in names:
        _remove(folder / name)
    for path in sorted(aside.iterdir(), key=lambda p: p.name == CHECKPOINT):
        os.replace(path, folder / path.name)
    aside.rmdir()


def discard_replaced(folder: Path) -> None:
    """Delete the set-aside run: the new run has written its first checkpoint."""
    shutil.rmtree(folder / REPLACED, ignore_errors=True)
    shutil.rmtree(folder / f"{REPLACED}.partial", ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
