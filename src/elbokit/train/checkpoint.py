"""Checkpoints that survive a crash and resume exactly, and that load without unpickling.

One file, ``checkpoint.safetensors``, holds every tensor a resumed run needs: the model's parameters
(``model.*``), the optimizer's state (``optimizer.<param index>.<name>``) and the random-number generators'
states (``rng.*``). Its safetensors header metadata holds the rest as JSON under the key ``elbokit``: epoch,
step, position in the epoch's data order, the optimizer's hyper-parameters and the run's configuration. Being
one file, it is replaced atomically (temporary file, fsync, rename, fsync of the folder): a crash leaves the
previous checkpoint or the new one, never a mix. ``state.json`` beside it is a readable copy of the metadata,
written after it.

``best.safetensors`` (:data:`BEST`) beside it has the same format and content at the epoch whose validation bound
was the best so far; its metadata's ``"saved"`` is ``"best"`` and its ``"epoch"`` and ``"step"`` say which epoch
it is. ``fit`` writes it before that epoch's checkpoint, so a crash between the two leaves a checkpoint of the
epoch before, from which the resumed run takes the same steps and writes the same best file again.

Loading reads the safetensors format only (never pickle) and refuses, with one line naming the file, a
truncated or foreign file and one whose tensors do not fit the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from elbokit._io import atomic_write
from elbokit._json import count, is_finite

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"  # the checkpoint at the best validation bound so far
STATE = "state.json"
FORMAT = "elbokit-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, foreign or does not fit the model (one-line message)."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds: tensors by name, and the JSON state."""

    tensors: dict[str, Tensor]
    state: dict[str, Any]

    def prefixed(self, prefix: str) -> dict[str, Tensor]:
        return {name[len(prefix) :]: t for name, t in self.tensors.items() if name.startswith(prefix)}


def rng_tensors(generators: dict[str, torch.Generator] | None = None) -> dict[str, Tensor]:
    """The global CPU (and CUDA) generator states, and those of named generators, as tensors."""
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = state
    for name, gen in (generators or {}).items():
        out[f"rng.gen.{name}"] = gen.get_state()
    return out


def restore_rng(checkpoint: Checkpoint, generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(checkpoint.tensors["rng.torch"])
    cuda = checkpoint.prefixed("rng.cuda.")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda[str(i)] for i in range(len(cuda))])
    for name, gen in (generators or {}).items():
        gen.set_state(checkpoint.tensors[f"rng.gen.{name}"])


def save_checkpoint(
    run_dir: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    generators: dict[str, torch.Generator] | None = None,
    name: str = CHECKPOINT,
    guide: nn.Module | None = None,
) -> None:
    """Write ``run_dir/<name>`` atomically (``checkpoint.safetensors`` by default, or :data:`BEST`), then, for
    ``checkpoint.safetensors`` only, ``state.json`` beside it."""
    tensors: dict[str, Tensor] = {}
    for key, tensor in (guide.state_dict() if guide is not None else {}).items():  # a guide outside the model
        tensors[f"guide.{key}"] = tensor.detach().cpu().contiguous().clone()
    for key, tensor in model.state_dict().items():
        tensors[f"model.{key}"] = tensor.detach().cpu().contiguous().clone()
    opt = optimizer.state_dict()
    for index, param_state in opt["state"].items():
        for key, value in param_state.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"optimizer state {key!r} is not a tensor; it cannot be checkpointed")
            tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous().clone()
    tensors.update({key: t.cpu().contiguous() for key, t in rng_tensors(generators).items()})
    full_state = {"format": FORMAT, **state, "param_groups": opt["param_groups"]}
    metadata = {"elbokit": json.dumps(full_state)}
    run_dir = Path(run_dir)
    atomic_write(run_dir / name, save_tensors(tensors, metadata=metadata))
    if name == CHECKPOINT:
        atomic_write(run_dir / STATE, (json.dumps(full_state, indent=2) + "\n").encode())


def load_checkpoint(run_dir: Path, *, name: str = CHECKPOINT) -> Checkpoint:
    """Read ``run_dir/<name>`` (the last checkpoint by default, :data:`BEST` for the best epoch's) without
    unpickling; CheckpointError for a missing, truncated or foreign file."""
    path = Path(run_dir) / name
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir} ({name} is missing)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or foreign?): {detail}") from None
    try:
        state = json.loads(metadata["elbokit"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is a safetensors file but not an elbokit checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} has an unknown checkpoint format {state.get('format')!r}, expected {FORMAT}")
    rng = tensors.get("rng.torch")
    expected = torch.get_rng_state()
    if rng is None or rng.dtype != expected.dtype or rng.shape != expected.shape:
        raise CheckpointError(f"{path} lacks the random-number state an elbokit checkpoint holds")
    check_state(state, str(path))
    return Checkpoint(tensors=tensors, state=state)


#: The metadata fields of a checkpoint, each with a check of its type and range and what it should be.
_STATE_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epoch": (count(0, 2**31), "an integer >= 0"),
    "position": (count(0, 2**31), "an integer >= 0"),
    "step": (count(0, 2**62), "an integer >= 0"),
    "sums": (lambda v: isinstance(v, dict) and set(v) == {"bound", "reconstruction", "kl", "seconds"}
             and all(is_finite(x) for x in v.values()), "a table of four finite numbers"),
    "best": (lambda v: v is None or is_finite(v), "a finite number or null"),
    "since_best": (count(0, 2**31), "an integer >= 0"),
    "config": (lambda v: isinstance(v, dict), "a table of settings"),
    "param_groups": (lambda v: isinstance(v, list) and len(v) in (1, 2) and all(
                     isinstance(g, dict) and is_finite(g.get("lr")) and isinstance(g.get("params"), list) for g in v),
                     "one Adam group (two with a local guide)"),
}  # fmt: skip


def check_state(state: dict[str, Any], source: str, *, complete: bool = False) -> None:
    """Refuse checkpoint metadata of the wrong type or range (one line naming the field, expected and given);
    ``complete``: every field the trainer writes must be there (to resume from it)."""
    for name, (ok, expected) in _STATE_FIELDS.items():
        if name not in state:
            if complete:
                raise CheckpointError(f"{source}: the checkpoint's metadata lacks {name!r}")
            continue
        if not ok(state[name]):
            given = json.dumps(state[name])
            given = given if len(given) <= 40 else given[:37] + "..."
            raise CheckpointError(f"{source}: the checkpoint's {name} must be {expected}, got {given}")
    if isinstance(state.get("step"), int) and isinstance(state.get("epoch"), int) and state["step"] < state["epoch"]:
        raise CheckpointError(f"{source}: the checkpoint's step {state['step']} is below its epoch {state['epoch']}")


def load_model_state(model: nn.Module, checkpoint: Checkpoint, *, source: str = "the checkpoint",
                     prefix: str = "model.") -> None:  # fmt: skip
    """Load ``model.*`` tensors (``guide.*`` for a guide saved beside the model), refusing (one line) a
    checkpoint of another architecture."""
    saved = checkpoint.prefixed(prefix)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        what = f"lacks {missing[0]!r}" if missing else f"has an unexpected {extra[0]!r}"
        raise CheckpointError(f"{source} does not fit the model: it {what} (another architecture?)")
    for name, tensor in expected.items():
        if saved[name].shape != tensor.shape:
            raise CheckpointError(
                f"{source} does not fit the model: {name} has shape {tuple(saved[name].shape)}, "
                f"the model's is {tuple(tensor.shape)} (another architecture?)"
            )
        if saved[name].is_floating_point() and not bool(torch.isfinite(saved[name]).all()):
            raise CheckpointError(f"{source}: {name} holds NaN or infinite values")
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(saved[name])


def load_optimizer_state(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Tensor]] = {}
    for name, tensor in checkpoint.prefixed("optimizer.").items():
        index, _, key = name.partition(".")
        if not index.isdigit() or int(index) >= len(params) or key not in _ADAM_STATE:
            raise CheckpointError(f"the checkpoint's optimizer state has an unexpected tensor {name!r}")
        shape = () if key == "step" else tuple(params[int(index)].shape)
        if tuple(tensor.shape) != shape or not tensor.is_floating_point():
            raise CheckpointError(f"the checkpoint's optimizer tensor {name!r} has shape {tuple(tensor.shape)} "
                                  f"{tensor.dtype}, expected {shape}")  # fmt: skip
        state.setdefault(int(index), {})[key] = tensor
    groups = checkpoint.state.get("param_groups")
    if not isinstance(groups, list):
        raise CheckpointError("the checkpoint lacks the optimizer's parameter groups")
    if len(groups) != len(optimizer.param_groups) or [len(g.get("params", ())) for g in groups] != [
        len(g["params"]) for g in optimizer.param_groups
    ]:
        raise CheckpointError("the checkpoint's optimizer parameter groups do not fit the model")
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"the checkpoint's optimizer state does not fit: {err}") from None


#: The tensors Adam keeps per parameter.
_ADAM_STATE = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
