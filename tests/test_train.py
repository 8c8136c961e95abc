"""The trainer: schedules, free bits, checkpoints, determinism, exact resume, the NaN guard, early stopping."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_tensors
from torch import nn
from torch.distributions import Independent, Normal, kl_divergence

from elbokit.config import RunConfig
from elbokit.data import Dataset
from elbokit.models import VAE
from elbokit.train import (
    CheckpointError,
    TrainingDiverged,
    check_reaches_target,
    fit,
    load_checkpoint,
    load_model_state,
    parse_schedule,
    save_checkpoint,
)
from elbokit.train import loop as loop_module
from elbokit.train.epochs import epoch_generator
from elbokit.train.objective import _free_bits_kl
from elbokit.train.schedules import burda_stage, lr_factor

# -- schedules ---------------------------------------------------------------------------------------------------


def test_linear_warmup_rises_to_one_at_its_last_step() -> None:
    s = parse_schedule("linear:4")
    assert [s.factor(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cyclical_restarts_every_period_and_holds_one_after_the_ratio() -> None:
    s = parse_schedule("cyclical:4:0.5")
    assert [s.factor(t) for t in range(8)] == [0.5, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0]
    s = parse_schedule("cyclical:5")  # default ratio 0.5: rising over 2.5 steps
    assert [round(s.factor(t), 6) for t in range(5)] == [0.4, 0.8, 1.0, 1.0, 1.0]


def test_epoch_lengths_are_converted_with_steps_per_epoch() -> None:
    assert parse_schedule("linear:2ep", steps_per_epoch=30).steps == 60
    assert parse_schedule("cyclical:1.5ep:0.25", steps_per_epoch=10).steps == 15
    assert parse_schedule("freebits:0.5").free_bits == 0.5
    assert parse_schedule("constant").factor(10**6) == 1.0


@pytest.mark.parametrize("spec", ["linear", "linear:0", "linear:abc", "cyclical:4:0", "cyclical:4:2", "freebits:-1",
                                  "freebits:x", "exponential:3", "constant:1", "linear:2.5"])  # fmt: skip
def test_bad_schedule_specs_are_refused_naming_the_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="anneal spec"):
        parse_schedule(spec)


def test_schedule_spec_round_trips() -> None:
    for spec in ("constant", "linear:100", "cyclical:40:0.25", "freebits:0.5"):
        assert parse_schedule(spec).describe() == spec


def test_warning_when_beta_never_reaches_one() -> None:
    message = check_reaches_target(parse_schedule("linear:1000"), 400)
    assert message is not None and "0.4" in message and "not the ELBO" in message
    assert check_reaches_target(parse_schedule("linear:400"), 400) is None
    assert check_reaches_target(parse_schedule("cyclical:100:0.5"), 230) is not None  # ends 30 steps into a rise
    assert check_reaches_target(parse_schedule("cyclical:100:0.5"), 260) is None
    assert check_reaches_target(parse_schedule("constant"), 10, beta=0.5) is not None
    assert check_reaches_target(parse_schedule("constant"), 10, beta=2.0) is None  # β > 1 is still a bound


def test_free_bits_counts_each_dimension_at_least_lambda() -> None:
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(6, 3, generator=gen) * torch.tensor([0.01, 1.0, 3.0])  # dim 0 nearly at the prior
    loc.requires_grad_(True)
    q = Independent(Normal(loc, torch.ones(6, 3)), 1)
    prior = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    per_dim = kl_divergence(q.base_dist, prior.base_dist).mean(0).detach()
    value = _free_bits_kl(q, prior, 0.25)
    assert float(per_dim[0]) < 0.25 < float(per_dim[1])
    torch.testing.assert_close(value.detach(), 0.25 + per_dim[1:].sum())
    value.backward()
    assert loc.grad is not None and float(loc.grad[:, 0].abs().max()) == 0.0  # no push on the free dimension
    assert float(loc.grad[:, 2].abs().max()) > 0


# -- checkpoints -------------------------------------------------------------------------------------------------


def _trained_pair(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).square().sum().backward()
        opt.step()
    return model, opt


def test_checkpoint_round_trip_restores_parameters_optimizer_and_rng(tmp_path: Path) -> None:
    model, opt = _trained_pair()
    gen = torch.Generator().manual_seed(7)
    save_checkpoint(tmp_path, model=model, optimizer=opt, state={"epoch": 3}, generators={"data": gen})
    expected_draw = torch.rand(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors", "state.json"]  # no temp files
    assert json.loads((tmp_path / "state.json").read_text())["epoch"] == 3

    fresh, fresh_opt = _trained_pair(seed=1)
    torch.manual_seed(99)
    ckpt = load_checkpoint(tmp_path)
    load_model_state(fresh, ckpt)
    loop_module.load_optimizer_state(fresh_opt, ckpt)
    loop_module.restore_rng(ckpt)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(opt.state.values(), fresh_opt.state.values(), strict=True):
        for key in a:
            assert torch.equal(a[key], b[key])
    assert torch.equal(torch.rand(3), expected_draw)


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    model, opt = _trained_pair()
    save_checkpoint(tmp_path, model=model, optimizer=opt, state={})
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("content", ["random", "pickle", "foreign-safetensors"])
def test_foreign_checkpoint_is_refused_without_unpickling(tmp_path: Path, content: str) -> None:
    path = tmp_path / "checkpoint.safetensors"
    if content == "random":
        path.write_bytes(bytes(range(256)) * 4)
    elif content == "pickle":
        torch.save({"weight": torch.ones(2)}, path)
    else:
        path.write_bytes(save_tensors({"weight": torch.ones(2)}))
    with pytest.raises(CheckpointError, match=r"checkpoint|safetensors"):
        load_checkpoint(tmp_path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    model, opt = _trained_pair()
    save_checkpoint(tmp_path, model=model, optimizer=opt, state={})
    other = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    with pytest.raises(CheckpointError, match=r"0.weight has shape \(3, 4\), the model's is \(5, 4\)"):
        load_model_state(other, load_checkpoint(tmp_path))
    with pytest.raises(CheckpointError, match="lacks"):
        load_model_state(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2), nn.Linear(2, 2)),
                         load_checkpoint(tmp_path))  # fmt: skip


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint\.safetensors is missing"):
        load_checkpoint(tmp_path)


# -- fit ---------------------------------------------------------------------------------------------------------


def _dataset(binarize: str = "none", n: int = 240, d: int = 12) -> Dataset:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, d, generator=gen) * 2
    labels = torch.randint(0, 2, (n + 80,), generator=gen)
    probs = torch.sigmoid(logits[labels]).float()
    x = probs if binarize == "dynamic" else torch.bernoulli(probs, generator=gen)
    return Dataset(
        name="toy", train=x[:n], validation=torch.bernoulli(probs[n : n + 40], generator=gen),
        test=torch.bernoulli(probs[n + 40 :], generator=gen), train_labels=None, validation_labels=None,
        test_labels=None, image_shape=(3, 4), binarize=binarize, support="binary", source="test",
    )  # fmt: skip


def _vae(seed: int = 0, d: int = 12) -> VAE:
    torch.manual_seed(seed)
    return VAE.mlp(d, 2, hidden=(16,)).float()


def _config(**kw: object) -> RunConfig:
    values: dict[str, object] = {"epochs": 3, "batch_size": 32, "seed": 5, "quiet": True, "latent_dim": 2,
                                 "hidden": (16,), "device": "cpu", "lr": 3e-3}  # fmt: skip
    values.update(kw)
    return RunConfig.from_dict(values)


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_fit_improves_the_bound_and_writes_metrics(tmp_path: Path) -> None:
    data = _dataset()
    model = _vae()
    result = fit(model, model.encoder, data, _config(epochs=6), out=tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4, 5, 6] and result.history == lines
    assert result.steps == 6 * math.ceil(240 / 32) == lines[-1]["step"]
    for key in ("train_bound", "train_reconstruction", "train_kl", "validation_bound", "validation_reconstruction",
                "validation_kl", "beta", "seconds", "examples_per_second"):  # fmt: skip
        assert all(math.isfinite(m[key]) for m in lines), key
    assert lines[-1]["validation_bound"] > lines[0]["validation_bound"] + 0.5
    assert lines[-1]["train_bound"] == pytest.approx(lines[-1]["train_reconstruction"] - lines[-1]["train_kl"])


def test_fit_is_deterministic_under_a_seed() -> None:
    data = _dataset("dynamic")
    runs = []
    for _ in range(2):
        model = _vae()
        fit(model, model.encoder, data, _config())
        runs.append(_params(model))
    _assert_identical(*runs)
    model = _vae()
    fit(model, model.encoder, data, _config(seed=6))
    assert not torch.equal(model.state_dict()["decoder.0.weight"], runs[0]["decoder.0.weight"])


def test_dynamic_binarization_draws_afresh_each_epoch_reproducibly() -> None:
    probs = _dataset("dynamic").train
    a = loop_module._epoch_data(probs, seed=1, epoch=0, dynamic=True)[0]
    b = loop_module._epoch_data(probs, seed=1, epoch=1, dynamic=True)[0]
    again = loop_module._epoch_data(probs, seed=1, epoch=0, dynamic=True)[0]
    assert set(a.unique().tolist()) == {0.0, 1.0} and torch.equal(a, again) and not torch.equal(a, b)
    # Each pixel's frequency over epochs matches its probability (binomial, Z standard errors).
    draws = torch.stack([loop_module._epoch_data(probs, seed=1, epoch=e, dynamic=True)[0] for e in range(200)])
    se = (probs * (1 - probs) / 200).sqrt().clamp(min=1e-3)
    assert float(((draws.mean(0) - probs) / se).abs().max()) < 5.0
    assert epoch_generator(1, 0, 0).initial_seed() != epoch_generator(1, 0, 1).initial_seed()


@pytest.mark.parametrize("objective", ["elbo", "iwae", "freebits", "linear", "stl", "dreg", "burda"])
def test_resume_after_an_interruption_is_bit_identical(tmp_path: Path, objective: str) -> None:
    extra: dict[str, object] = {
        "elbo": {}, "iwae": {"objective": "iwae", "k": 3}, "freebits": {"anneal": "freebits:0.3"},
        "linear": {"anneal": "linear:10"}, "stl": {"gradient": "stl", "k": 2},
        "dreg": {"objective": "iwae", "k": 4, "gradient": "dreg"}, "burda": {"lr_schedule": "burda", "epochs": 3},
    }[objective]  # fmt: skip
    data = _dataset("dynamic")
    epochs = int(extra.pop("epochs", 4))  # type: ignore[call-overload]
    straight = _vae()
    fit(straight, straight.encoder, data, _config(epochs=epochs, **extra), out=tmp_path / "a")

    # Stop partway through epoch 3 by a "signal" at step 19 (8 steps per epoch), then resume in a fresh process
    # state: new model object, scrambled global RNG.
    calls = {"n": 0}

    def stop_after_19() -> bool:
        calls["n"] += 1
        return calls["n"] > 19

    first = _vae()
    original = loop_module._stop_requests
    loop_module._stop_requests = lambda: _ContextReturning(stop_after_19)  # type: ignore[assignment]
    try:
        result = fit(first, first.encoder, data, _config(epochs=epochs, **extra), out=tmp_path / "b")
    finally:
        loop_module._stop_requests = original
    assert result.stopped == "interrupted" and result.steps == 19
    state = json.loads((tmp_path / "b" / "state.json").read_text())
    assert (state["epoch"], state["position"]) == (2, 3)
    torch.manual_seed(12345)
    resumed = _vae(seed=77)
    fit(resumed, resumed.encoder, data, _config(epochs=epochs, **extra), out=tmp_path / "b", resume=True)
    _assert_identical(_params(straight), _params(resumed))
    a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k not in ("seconds", "examples_per_second")}  # noqa: E731
    assert [strip(line) for line in a] == [strip(line) for line in b]


def test_sigint_and_sigterm_request_a_stop_between_steps() -> None:
    import os
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    with loop_module._stop_requests() as requested:
        assert not requested()
        os.kill(os.getpid(), signal.SIGTERM)
        assert requested()
    assert signal.getsignal(signal.SIGTERM) is previous
    with loop_module._stop_requests() as requested:
        os.kill(os.getpid(), signal.SIGINT)
        assert requested()


class _ContextReturning:
    def __init__(self, fn: object) -> None:
        self.fn = fn

    def __enter__(self) -> object:
        return self.fn

    def __exit__(self, *exc: object) -> None:
        return None


def test_training_longer_by_resume_equals_training_longer_at_once(tmp_path: Path) -> None:
    data = _dataset()
    straight = _vae()
    fit(straight, straight.encoder, data, _config(epochs=4))
    part = _vae()
    fit(part, part.encoder, data, _config(epochs=2), out=tmp_path)
    more = _vae(seed=3)
    fit(more, more.encoder, data, _config(epochs=4), out=tmp_path, resume=True)
    _assert_identical(_params(straight), _params(more))


class _Exploding(nn.Module):
    """A guide whose mean becomes 1e30 from a given call on: the KL overflows (float32), the decoder saturates."""

    def __init__(self, guide: nn.Module, after: int) -> None:
        super().__init__()
        self.guide, self.after, self.calls = guide, after, 0

    def forward(self, x: torch.Tensor) -> Independent:
        q = self.guide(x)
        if torch.is_grad_enabled():  # training steps only, not validation
            self.calls += 1
        if self.calls > self.after:
            return Independent(Normal(q.mean + 1e30, q.stddev), 1)
        return q


def test_nan_guard_names_the_step_and_the_term_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    data = _dataset()
    model = _vae()
    guide = _Exploding(model.encoder, after=12)
    with pytest.raises(TrainingDiverged, match=r"non-finite KL term at step 12 \(epoch 2\).*last good checkpoint"):
        fit(model, guide, data, _config(epochs=3), out=tmp_path)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 1 and state["step"] == 8
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_nan_in_the_reconstruction_is_named(tmp_path: Path) -> None:
    data = _dataset()
    model = _vae()
    with torch.no_grad():
        model.decoder[-1].bias[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"non-finite reconstruction term .* at step 0 \(epoch 1\)"):
        fit(model, model.encoder, data, _config(), out=tmp_path)
    assert not (tmp_path / "checkpoint.safetensors").exists()


def test_early_stopping_after_patience_epochs_without_improvement(monkeypatch: pytest.MonkeyPatch) -> None:
    values = iter([-10.0, -9.0, -9.5, -9.2, -8.0, -7.0])

    def fake(*args: object, **kwargs: object) -> dict[str, float]:
        v = next(values)
        return {"bound": v, "elbo": v, "reconstruction": v, "kl": 0.0}

    monkeypatch.setattr(loop_module, "evaluate_bound", fake)
    model = _vae()
    result = fit(model, model.encoder, _dataset(), _config(epochs=6, patience=2))
    assert result.stopped == "early-stopping" and result.epochs == 4 and result.best_validation == -9.0


def test_fit_warns_when_the_warmup_outlasts_training() -> None:
    model = _vae()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, model.encoder, _dataset(), _config(epochs=1, anneal="linear:100"))
    assert any("not the ELBO" in str(w.message) for w in caught)


def test_beta_follows_the_schedule_in_the_metrics() -> None:
    model = _vae()
    result = fit(model, model.encoder, _dataset(), _config(epochs=3, anneal="linear:16"))
    assert [m["beta"] for m in result.history] == [0.5, 1.0, 1.0]


def test_burda_schedule_keeps_its_stage_lengths_when_scaled() -> None:
    """Over 3,280 epochs stage i lasts 3^i epochs; over a tenth (328) and a hundredth (33) each stage keeps its
    share (early stages of under half an epoch vanish); factors 10^(-i/7)."""
    for epochs, expected in ((3280, [3**i for i in range(8)]), (328, [0, 0, 1, 3, 8, 24, 73, 219]),
                             (33, [0, 0, 0, 0, 1, 3, 7, 22])):  # fmt: skip
        counts = [0] * 8
        for epoch in range(epochs):
            counts[burda_stage(epoch, epochs)] += 1
        assert counts == expected
    assert lr_factor("burda", 0, 3280) == 1.0 and lr_factor("burda", 3279, 3280) == pytest.approx(0.1, rel=1e-12)
    assert lr_factor("constant", 5, 10) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor("cosine", 0, 1)
    with pytest.raises(ValueError, match="lr_schedule"):
        _config(lr_schedule="cosine")


def test_the_learning_rate_follows_the_schedule_in_the_metrics_and_the_optimizer() -> None:
    """8 epochs of the burda schedule: (e + 1/2) 410 falls in stages 5, 6, 6, 7, 7, 7, 7, 7."""
    model = _vae()
    result = fit(model, model.encoder, _dataset(), _config(epochs=8, lr=2e-3, lr_schedule="burda"))
    stages = [5, 6, 6, 7, 7, 7, 7, 7]
    assert [m["lr"] for m in result.history] == pytest.approx([2e-3 * 10 ** (-i / 7) for i in stages], rel=1e-12)


def test_gradient_clipping_bounds_the_update() -> None:
    data = _dataset()
    a, b = _vae(), _vae()
    before = _params(a)
    fit(a, a.encoder, data, _config(epochs=1, clip=1e-10))
    fit(b, b.encoder, data, _config(epochs=1))
    # Adam divides by sqrt(v) + eps (eps = 1e-8): gradients clipped to norm 1e-10 move the parameters by a
    # small fraction of an unclipped step.
    clipped = float((_params(a)["decoder.0.weight"] - before["decoder.0.weight"]).abs().max())
    free = float((_params(b)["decoder.0.weight"] - before["decoder.0.weight"]).abs().max())
    assert 0 < clipped < 0.1 * free


def test_iwae_with_annealing_is_refused() -> None:
    model = _vae()
    with pytest.raises(ValueError, match="β and annealing apply to the elbo objective"):
        fit(model, model.encoder, _dataset(), _config(objective="iwae", k=4, anneal="linear:5"))


@pytest.mark.parametrize(("objective", "gradient"), [("elbo", "score"), ("elbo", "stl"), ("iwae", "stl"),
                                                     ("iwae", "dreg")])  # fmt: skip
def test_every_gradient_estimator_trains(objective: str, gradient: str) -> None:
    model = _vae()
    result = fit(model, model.encoder, _dataset(), _config(epochs=5, objective=objective, k=4, gradient=gradient))
    assert result.history[-1]["validation_bound"] > result.history[0]["validation_bound"]


def test_a_gradient_the_objective_does_not_take_is_refused() -> None:
    with pytest.raises(ValueError, match="the elbo objective takes gradient reparam, score, stl, got 'dreg'"):
        _config(gradient="dreg")
