"""The trainer's extra outputs: best.safetensors beside the last checkpoint, steps.jsonl (β, lr and the minibatch
bound every N steps) and TensorBoard event files; each survives a resume as an uninterrupted run writes it."""

from __future__ import annotations

import json
import math
import re
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from torch.distributions import Independent, Normal

from elbokit.config import RunConfig
from elbokit.data import Dataset
from elbokit.models import VAE
from elbokit.train import BEST, TrainingDiverged, fit, load_checkpoint, parse_schedule
from elbokit.train import loop as loop_module

STEPS_PER_EPOCH = 8  # 240 points at 32 per step


def _dataset() -> Dataset:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 12, generator=gen) * 2
    probs = torch.sigmoid(logits[torch.randint(0, 2, (320,), generator=gen)]).float()
    x = torch.bernoulli(probs, generator=gen)
    return Dataset(
        name="toy", train=probs[:240], validation=x[240:280], test=x[280:], train_labels=None,
        validation_labels=None, test_labels=None, image_shape=(3, 4), binarize="dynamic", support="binary",
        source="test",
    )  # fmt: skip


def _vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE.mlp(12, 2, hidden=(16,)).float()


def _config(**kw: object) -> RunConfig:
    values: dict[str, object] = {"epochs": 3, "batch_size": 32, "seed": 5, "quiet": True, "latent_dim": 2,
                                 "hidden": (16,), "device": "cpu", "lr": 3e-3}  # fmt: skip
    values.update(kw)
    return RunConfig.from_dict(values)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _saved_params(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(run, name=name).prefixed("model.")


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _assert_same_file(a: Path, b: Path) -> None:
    """Two safetensors files with equal tensors (all: parameters, optimizer, random-number state) and metadata."""
    with safe_open(str(a), framework="pt") as fa, safe_open(str(b), framework="pt") as fb:
        assert fa.metadata() == fb.metadata()
        assert sorted(fa.keys()) == sorted(fb.keys())
        for key in fa.keys():
            assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), key


def _metrics(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in rows]


class _Stop:
    """``_stop_requests`` replaced: a stop requested before step ``after`` + 1."""

    def __init__(self, after: int) -> None:
        self.calls, self.after = 0, after

    def __enter__(self) -> Any:
        def requested() -> bool:
            self.calls += 1
            return self.calls > self.after

        return requested

    def __exit__(self, *exc: object) -> None:
        return None


class _Crash(Exception):
    """Stands for a kill at a chosen moment."""


# -- best.safetensors ----------------------------------------------------------------------------------------------


def test_early_stopping_leaves_the_best_epoch_in_best_safetensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = iter([-10.0, -9.0, -9.5, -9.2, -8.0])

    def fake(*args: object, **kwargs: object) -> dict[str, float]:
        v = next(values)
        return {"bound": v, "elbo": v, "reconstruction": v, "kl": 0.0}

    monkeypatch.setattr(loop_module, "evaluate_bound", fake)
    model = _vae()
    after: list[dict[str, torch.Tensor]] = []
    result = fit(model, model.encoder, _dataset(), _config(epochs=5, patience=2), out=tmp_path,
                 on_epoch=lambda m: after.append(_params(model)))  # fmt: skip
    assert result.stopped == "early-stopping" and result.epochs == 4 and result.best_validation == -9.0
    assert not torch.equal(after[1]["decoder.0.weight"], after[3]["decoder.0.weight"])
    _assert_identical(_saved_params(tmp_path, BEST), after[1])
    _assert_identical(_saved_params(tmp_path, "checkpoint.safetensors"), after[3])
    state = load_checkpoint(tmp_path, name=BEST).state
    assert (state["epoch"], state["step"], state["best"], state["saved"]) == (2, 2 * STEPS_PER_EPOCH, -9.0, "best")
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 4  # state.json describes the last
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST, "checkpoint.safetensors", "metrics.jsonl",
                                                          "state.json"]  # fmt: skip


def test_a_resumed_run_writes_best_safetensors_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _dataset()
    straight = _vae()
    fit(straight, straight.encoder, data, _config(epochs=4), out=tmp_path / "a")
    assert load_checkpoint(tmp_path / "a", name=BEST).state["epoch"] > 2  # written after the interruption too

    first = _vae()
    monkeypatch.setattr(loop_module, "_stop_requests", lambda: _Stop(after=19))
    assert fit(first, first.encoder, data, _config(epochs=4), out=tmp_path / "b").stopped == "interrupted"
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "b", name=BEST).state["epoch"] == 2
    torch.manual_seed(12345)
    resumed = _vae(seed=77)
    fit(resumed, resumed.encoder, data, _config(epochs=4), out=tmp_path / "b", resume=True)
    for name in (BEST, "checkpoint.safetensors"):
        _assert_same_file(tmp_path / "a" / name, tmp_path / "b" / name)


def test_killed_between_the_best_file_and_the_checkpoint_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 2 has the best validation bound of three; the run is killed between epoch 2's two writes, whichever
    comes first, and resumed: it ends with the files of an uninterrupted run."""
    data = _dataset()

    def validation(values: list[float]) -> None:
        bounds = iter(values)

        def fake(*args: object, **kwargs: object) -> dict[str, float]:
            v = next(bounds)
            return {"bound": v, "elbo": v, "reconstruction": v, "kl": 0.0}

        monkeypatch.setattr(loop_module, "evaluate_bound", fake)

    validation([-10.0, -9.0, -9.5])
    straight = _vae()
    fit(straight, straight.encoder, data, _config(), out=tmp_path / "a")
    assert load_checkpoint(tmp_path / "a", name=BEST).state["epoch"] == 2

    real_save = loop_module.save_checkpoint
    writes: list[str] = []

    def save(run_dir: Path, **kw: Any) -> None:
        if kw["state"]["epoch"] == 2 and kw["state"]["position"] == 0:
            writes.append(kw.get("name", "checkpoint.safetensors"))
            if len(writes) == 2:
                raise _Crash  # the first of epoch 2's two files is written, the second not
        real_save(run_dir, **kw)

    validation([-10.0, -9.0])
    monkeypatch.setattr(loop_module, "save_checkpoint", save)
    crashed = _vae()
    with pytest.raises(_Crash):
        fit(crashed, crashed.encoder, data, _config(), out=tmp_path / "b")
    assert sorted(writes) == sorted([BEST, "checkpoint.safetensors"])
    assert load_checkpoint(tmp_path / "b").state["epoch"] == 1
    monkeypatch.setattr(loop_module, "save_checkpoint", real_save)
    validation([-9.0, -9.5])  # epochs 2 and 3, again
    resumed = _vae(seed=77)
    fit(resumed, resumed.encoder, data, _config(), out=tmp_path / "b", resume=True)
    for name in (BEST, "checkpoint.safetensors"):
        _assert_same_file(tmp_path / "a" / name, tmp_path / "b" / name)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


# -- steps.jsonl ---------------------------------------------------------------------------------------------------


def _steps(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def test_log_every_writes_beta_lr_and_the_minibatch_bound_of_each_nth_step(tmp_path: Path) -> None:
    model = _vae()
    config = _config(epochs=2, anneal="cyclical:4:1", beta=2.0, log_every=1)
    result = fit(model, model.encoder, _dataset(), config, out=tmp_path)
    rows = _steps(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert [r["epoch"] for r in rows] == [1] * STEPS_PER_EPOCH + [2] * STEPS_PER_EPOCH
    schedule = parse_schedule("cyclical:4:1")
    assert [r["beta"] for r in rows] == [2.0 * schedule.factor(t) for t in range(2 * STEPS_PER_EPOCH)]
    assert [r["beta"] for r in rows[:5]] == [0.5, 1.0, 1.5, 2.0, 0.5]  # rises over a cycle, falls at the next
    assert all(r["lr"] == 3e-3 for r in rows)
    # Each line is its minibatch's mean bound: weighted by the batch sizes (7 of 32, then 16) they average to the
    # epoch's train bound.
    sizes = [32] * 7 + [16]
    for epoch in (0, 1):
        bounds = [r["bound"] for r in rows[epoch * STEPS_PER_EPOCH : (epoch + 1) * STEPS_PER_EPOCH]]
        mean = sum(b * s for b, s in zip(bounds, sizes, strict=True)) / 240
        assert mean == pytest.approx(result.history[epoch]["train_bound"], rel=1e-9, abs=1e-9)
    assert rows[-1]["beta"] == result.history[-1]["beta"]


def test_log_every_n_logs_every_nth_step_and_none_writes_no_steps_file(tmp_path: Path) -> None:
    model = _vae()
    fit(model, model.encoder, _dataset(), _config(epochs=2, log_every=3, lr_schedule="burda"), out=tmp_path / "a")
    rows = _steps(tmp_path / "a")
    assert [r["step"] for r in rows] == [3, 6, 9, 12, 15]
    assert [r["epoch"] for r in rows] == [1, 1, 2, 2, 2]
    lrs = [m["lr"] for m in _metrics(tmp_path / "a")]
    assert [r["lr"] for r in rows] == [lrs[0], lrs[0], lrs[1], lrs[1], lrs[1]] and lrs[0] != lrs[1]
    assert all(math.isfinite(r["bound"]) and r["beta"] == 1.0 for r in rows)
    model = _vae()
    fit(model, model.encoder, _dataset(), _config(epochs=1), out=tmp_path / "b")
    assert not (tmp_path / "b" / "steps.jsonl").exists()


def test_logging_steps_changes_no_step() -> None:
    runs = []
    for log_every in (None, 1):
        model = _vae()
        fit(model, model.encoder, _dataset(), _config(epochs=2, log_every=log_every))
        runs.append(_params(model))
    _assert_identical(*runs)


def test_a_non_finite_logged_step_stops_training_as_an_unlogged_one_does(tmp_path: Path) -> None:
    """From the 13th training step on, the guide's mean is 1e30: the KL overflows (float32). The logged run stops
    there with the message of an unlogged one, and steps.jsonl holds the 12 finite steps before it."""

    class Exploding(torch.nn.Module):
        def __init__(self, guide: torch.nn.Module) -> None:
            super().__init__()
            self.guide, self.calls = guide, 0

        def forward(self, x: torch.Tensor) -> Independent:
            q = self.guide(x)
            if torch.is_grad_enabled():  # training steps only, not validation
                self.calls += 1
            return Independent(Normal(q.mean + 1e30, q.stddev), 1) if self.calls > 12 else q

    for log_every in (None, 1):
        model = _vae()
        with pytest.raises(TrainingDiverged, match=r"^non-finite KL term at step 12 \(epoch 2\)"):
            fit(
                model, Exploding(model.encoder), _dataset(), _config(log_every=log_every), out=tmp_path / str(log_every)
            )
    rows = _steps(tmp_path / "1")
    assert [r["step"] for r in rows] == list(range(1, 13)) and all(math.isfinite(r["bound"]) for r in rows)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3"])
def test_log_every_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(ValueError, match=r"log_every must be an integer >= 1"):
        _config(log_every=value)


def test_tensorboard_must_be_true_or_false() -> None:
    with pytest.raises(ValueError, match="tensorboard must be true or false, got 'yes'"):
        _config(tensorboard="yes")


def test_a_resumed_run_ends_steps_jsonl_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash at step 22 (after epoch 2's checkpoint, at step 16) leaves lines up to step 21 and a torn one; the
    resumed run drops them and writes them again."""
    data = _dataset()
    config = _config(epochs=4, log_every=2, anneal="cyclical:8")
    straight = _vae()
    fit(straight, straight.encoder, data, config, out=tmp_path / "a")

    class Crashing(loop_module.TrainStep):
        def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> None:
            if self.step == 21:
                with (tmp_path / "b" / "steps.jsonl").open("a") as f:
                    f.write('{"step": 22, "ep')
                raise _Crash
            super().__call__(x, *args, **kwargs)

    monkeypatch.setattr(loop_module, "TrainStep", Crashing)
    crashed = _vae()
    with pytest.raises(_Crash):
        fit(crashed, crashed.encoder, data, config, out=tmp_path / "b")
    monkeypatch.undo()
    assert [r["step"] for r in _steps(tmp_path / "a")][:10] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert (tmp_path / "b" / "steps.jsonl").read_text().splitlines()[-2:] == [
        json.dumps(_steps(tmp_path / "a")[9]), '{"step": 22, "ep'
    ]  # fmt: skip
    resumed = _vae(seed=77)
    fit(resumed, resumed.encoder, data, config, out=tmp_path / "b", resume=True)
    assert (tmp_path / "a" / "steps.jsonl").read_text() == (tmp_path / "b" / "steps.jsonl").read_text()
    _assert_identical(_params(straight), _params(resumed))


def test_a_corrupt_line_inside_steps_jsonl_is_refused_on_resume(tmp_path: Path) -> None:
    model = _vae()
    fit(model, model.encoder, _dataset(), _config(epochs=1, log_every=4), out=tmp_path)
    lines = (tmp_path / "steps.jsonl").read_text().splitlines()
    (tmp_path / "steps.jsonl").write_text("\n".join(["garbage", *lines]) + "\n")
    model = _vae()
    with pytest.raises(ValueError, match=r"steps\.jsonl, line 1: not a step's record"):
        fit(model, model.encoder, _dataset(), _config(epochs=2, log_every=4), out=tmp_path, resume=True)


# -- TensorBoard ---------------------------------------------------------------------------------------------------


def _events(folder: Path) -> list[Any]:
    """Every event in the folder's event files, read with the TFRecord framing: length (8 bytes, little-endian),
    its masked CRC (4), the serialized Event, its masked CRC (4)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
            offset += 12 + length + 4
    return events


def _scalars(events: list[Any]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for event in events:
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_writes_the_epochs_and_logged_steps_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    model = _vae()
    fit(model, model.encoder, _dataset(), _config(epochs=2, log_every=4, anneal="linear:12", tensorboard=True),
        out=tmp_path)  # fmt: skip
    scalars = _scalars(_events(tmp_path / "tensorboard"))
    assert set(scalars) == {"train/bound", "train/reconstruction", "train/kl", "validation/bound", "validation/elbo",
                            "validation/reconstruction", "validation/kl", "epoch/beta", "epoch/lr", "step/bound",
                            "step/beta", "step/lr"}  # fmt: skip
    metrics, steps = _metrics(tmp_path), _steps(tmp_path)
    f32 = lambda v: float(torch.tensor(v, dtype=torch.float32))  # noqa: E731  (simple_value is a float32)
    for tag, key in (("validation/bound", "validation_bound"), ("train/kl", "train_kl"), ("epoch/beta", "beta")):
        assert scalars[tag] == [(m["step"], f32(m[key])) for m in metrics], tag
    assert scalars["step/beta"] == [(r["step"], f32(r["beta"])) for r in steps]
    assert scalars["step/beta"] == [(4, f32(4 / 12)), (8, f32(8 / 12)), (12, 1.0), (16, 1.0)]
    assert scalars["step/bound"] == [(r["step"], f32(r["bound"])) for r in steps]


def _shown(events: list[Any]) -> dict[str, list[tuple[int, float]]]:
    """The scalars TensorBoard shows: read in order, a session START at step s drops those read before at >= s."""
    kept: list[Any] = []
    for event in events:
        if event.HasField("session_log") and event.session_log.status == event.session_log.START:
            kept = [e for e in kept if e.step < event.step]
        kept.append(event)
    return _scalars(kept)


def test_a_resumed_run_shows_in_tensorboard_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted at step 11 and resumed (in the same second: the event files must not collide), the run's second
    events file hides the first's events from step 12 on, which it logs again."""
    pytest.importorskip("tensorboardX")
    config = _config(epochs=3, log_every=2, tensorboard=True)
    straight = _vae()
    fit(straight, straight.encoder, _dataset(), config, out=tmp_path / "a")
    first = _vae()
    monkeypatch.setattr(loop_module, "_stop_requests", lambda: _Stop(after=11))
    fit(first, first.encoder, _dataset(), config, out=tmp_path / "b")
    monkeypatch.undo()
    resumed = _vae(seed=77)
    fit(resumed, resumed.encoder, _dataset(), config, out=tmp_path / "b", resume=True)
    assert len(list((tmp_path / "b" / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = _events(tmp_path / "b" / "tensorboard")
    assert [e.step for e in events if e.HasField("session_log")] == [0, 12]
    assert [step for step, _ in _scalars(events)["step/bound"]] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]
    assert _shown(events) == _scalars(_events(tmp_path / "a" / "tensorboard"))


def test_tensorboard_without_tensorboardx_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    model = _vae()
    with pytest.raises(ValueError, match=re.escape(loop_module.TENSORBOARD_MISSING)):
        fit(model, model.encoder, _dataset(), _config(epochs=1, tensorboard=True), out=tmp_path / "run")
    assert loop_module.TENSORBOARD_MISSING == (
        "tensorboard needs the tensorboardX package: pip install 'elbokit[tensorboard]'"
    )
    assert not (tmp_path / "run").exists()
    fit(model, model.encoder, _dataset(), _config(epochs=1, tensorboard=True))  # nothing to write: no need of it
