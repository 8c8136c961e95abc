"""The Run API under a thin CLI: ``ek.Run`` does what the commands do, with typed results; the CLI only parses and
prints (importing it loads neither the trainer nor the diagnostics); the rough edges: the best checkpoint,
``--device`` everywhere and a CUDA-trained run opened on the CPU, per-step logs, a likelihood that follows the
data, bits/dim only for discrete data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import elbokit as ek
from elbokit.cli import main
from elbokit.runs import Evaluation

FAST = ["--batch-size", "20", "--latent-dim", "2", "--hidden", "16", "--quiet", "--device", "cpu"]
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(path: Path, *, real: bool = False) -> Path:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)) if real else (rng.random((200, 8)) < 0.3)
    np.save(path, x.astype(np.float32))
    return path


@pytest.fixture(scope="module")
def early(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that stops early: at a learning rate this high the validation bound peaks and falls."""
    root = tmp_path_factory.mktemp("early")
    assert main(["fit", "--data", str(_data(root / "x.npy")), "--out", str(root / "run"), *FAST, "--epochs", "12",
                 "--patience", "2", "--lr", "0.05", "--log-every", "3"]) == 0  # fmt: skip
    return root / "run"


def test_importing_the_cli_loads_neither_the_trainer_nor_the_diagnostics() -> None:
    code = ("import sys, elbokit.cli\n"
            "print(sorted(m for m in sys.modules if m.startswith(('elbokit.train', 'elbokit.diagnostics'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_cli_module_is_small() -> None:
    for path in sorted((ROOT / "src" / "elbokit" / "cli").glob("*.py")):
        assert len(path.read_text().splitlines()) <= 125, path.name


def test_the_best_checkpoint_is_kept_and_read_by_default_after_early_stopping(early: Path) -> None:
    history = [json.loads(line) for line in (early / "metrics.jsonl").read_text().splitlines()]
    best_epoch = max(history, key=lambda r: r["validation_bound"])["epoch"]
    assert history[-1]["epoch"] > best_epoch  # it did stop after its best epoch
    best, last = ek.Run.open(early), ek.Run.open(early, checkpoint="last")
    assert best.checkpoint == "best" and best.state["epoch"] == best_epoch
    assert last.checkpoint == "last" and last.state["epoch"] == history[-1]["epoch"]
    assert not torch.equal(best.model.decoder[0].weight, last.model.decoder[0].weight)
    evaluated = best.evaluate(k=10, limit=10, proposal="encoder", save=False)
    assert (evaluated.checkpoint, evaluated.epoch) == ("best", best_epoch)


def test_checkpoint_and_device_flags_on_every_reading_command(early: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(early), "--k", "5", "--limit", "5", "--checkpoint", "last", "--device", "cpu",
                 "--proposal", "encoder", "--json"]) == 0  # fmt: skip
    result = Evaluation.from_dict(json.loads(capsys.readouterr().out))
    assert result.checkpoint == "last"
    assert main(["sample", str(early), "--n", "3", "--out", str(tmp_path / "s.npy"), "--checkpoint", "best",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert main(["diagnose", str(early), "--k", "5", "--limit", "5", "--refine-steps", "5", "--device", "cpu",
                 "--checkpoint", "best", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == ek.Run.open(early).state["epoch"]
    assert main(["evaluate", str(early), "--checkpoint", "newest"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_per_step_log_shows_the_annealing_schedule(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["fit", "--data", str(_data(tmp_path / "x.npy")), "--out", str(run), *FAST, "--epochs", "2",
                 "--anneal", "cyclical:4", "--log-every", "1"]) == 0  # fmt: skip
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    betas = [s["beta"] for s in steps]
    assert len(steps) == 16 and max(betas) == 1.0 and min(betas) < 1.0 and betas[4] < betas[3]
    assert {"step", "epoch", "beta", "lr", "bound"} <= set(steps[0])


def test_a_run_trained_on_cuda_opens_on_the_cpu(tmp_path: Path) -> None:
    """A run whose config says device "cuda" (trained on a GPU) opens with device="auto" on a CPU-only machine:
    safetensors reads onto the CPU and the model goes to the device asked for, not the one it was trained on."""
    run = tmp_path / "run"
    assert main(["fit", "--data", str(_data(tmp_path / "x.npy")), "--out", str(run), *FAST, "--epochs", "1"]) == 0
    config = json.loads((run / "config.json").read_text())
    config["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(config))
    for name in ("checkpoint.safetensors", "best.safetensors"):
        with safe_open(str(run / name), framework="pt") as f:
            metadata, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(metadata["elbokit"])
        state["config"]["device"] = "cuda"
        save_file(tensors, str(run / name), metadata={"elbokit": json.dumps(state)})
    opened = ek.Run.open(run)  # auto
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert opened.device.type == expected and opened.config.device == "cuda"
    assert ek.Run.open(run, device="cpu").device.type == "cpu"


def test_the_default_likelihood_follows_the_data_and_bits_per_dim_only_for_discrete(tmp_path: Path) -> None:
    real, binary = tmp_path / "real", tmp_path / "binary"
    assert main(["fit", "--data", str(_data(tmp_path / "r.npy", real=True)), "--out", str(real), *FAST,
                 "--epochs", "1"]) == 0  # fmt: skip
    assert main(["fit", "--data", str(_data(tmp_path / "b.npy")), "--out", str(binary), *FAST, "--epochs", "1"]) == 0
    assert json.loads((real / "config.json").read_text())["likelihood"] == "gaussian:learned"
    assert json.loads((binary / "config.json").read_text())["likelihood"] == "bernoulli"
    assert ek.Run.open(real).evaluate(k=5, limit=5, proposal="encoder", save=False).bits_per_dim is None
    assert ek.Run.open(binary).evaluate(k=5, limit=5, proposal="encoder", save=False).bits_per_dim is not None


def test_synthetic_data_trains_out_of_the_box(tmp_path: Path) -> None:
    """(was: `elbokit fit --data synthetic` failed: a Bernoulli likelihood on real-valued data)"""
    assert main(["fit", "--data", "synthetic", "--out", str(tmp_path / "s"), *FAST, "--epochs", "1"]) == 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["likelihood"] == "gaussian:learned"


def test_evaluation_round_trips_and_refuses_wrong_types(early: Path) -> None:
    e = ek.Run.open(early).evaluate(k=5, limit=5, proposal="encoder")
    assert Evaluation.from_dict(json.loads((early / "evaluation.json").read_text())) == e
    for bad in ({**e.to_dict(), "n": "5"}, {**e.to_dict(), "elbo": None}, {**e.to_dict(), "extra": 1}, [1]):
        with pytest.raises(ValueError):
            Evaluation.from_dict(bad)


def test_run_diagnose_matches_dx_diagnose_on_the_same_points(early: Path) -> None:
    from elbokit import diagnostics as dx

    run = ek.Run.open(early)
    through_run = run.diagnose(k=10, limit=8, refine_steps=5, save=False)
    x = run.data.test[:8].to(run.device)
    direct = dx.diagnose(run.model, run.guide, x, k=10, refine_steps=5)
    keep = lambda d: {k: v for k, v in d.to_dict().items() if k not in ("seconds", "run", "split", "epoch", "step")}  # noqa: E731
    assert keep(through_run) == keep(direct)
    assert dx.Diagnosis.from_dict(through_run.to_dict()) == through_run


def test_tensorboard_flag_writes_event_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["fit", "--data", str(_data(tmp_path / "x.npy")), "--out", str(run), *FAST, "--epochs", "1",
                 "--tensorboard"]) == 0  # fmt: skip
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert json.loads((run / "config.json").read_text())["tensorboard"] is True


def test_sweep_takes_a_device(early: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(early), "--beta", "1", "--epochs", "1", "--k", "5", "--limit", "5", "--device", "cpu",
                 "--json"]) == 0  # fmt: skip
    assert json.loads((early / "sweep" / "beta-1" / "config.json").read_text())["device"] == "cpu"
    assert main(["sweep", str(early), "--beta", "1", "--overwrite", "--device", "tpu"]) == 2
    assert "device must be" in capsys.readouterr().err


def test_fit_trains_iwae_by_vimco(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["fit", "--data", str(_data(tmp_path / "x.npy")), "--out", str(run), *FAST, "--epochs", "1",
                 "--objective", "iwae", "--k", "4", "--gradient", "vimco"]) == 0  # fmt: skip
    assert json.loads((run / "config.json").read_text())["gradient"] == "vimco"


def test_train_run_is_fit_from_python(tmp_path: Path) -> None:
    """`elbokit fit` as a library call: the same run directory, and an existing run refused unless replaced."""
    from elbokit.runs import train_run

    config = ek.RunConfig(data=str(_data(tmp_path / "x.npy")), epochs=1, batch_size=20, latent_dim=2, hidden=(16,),
                          quiet=True, device="cpu")  # fmt: skip
    trained = train_run(tmp_path / "run", config)
    assert trained.result.epochs == 1 and trained.run.config.likelihood == "bernoulli"
    assert ek.Run.open(tmp_path / "run").state["epoch"] == 1
    with pytest.raises(ValueError, match="already holds a run"):
        train_run(tmp_path / "run", config)
    again = train_run(tmp_path / "run", None, resume=True)
    assert again.result.epochs == 1  # nothing left to train: it ends where it was


def test_a_duration_estimate_never_scales_a_zero_difference(early: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With pilots whose times do not grow with k or the steps (a small model: clock noise hides the marginal
    cost), the estimate still grows with k: k = 10**12 must be refused, not started."""
    import time

    import elbokit.diagnostics.reference as reference
    import elbokit.runs.evaluation as evaluation
    from elbokit.cli._args import MAX_SECONDS

    run = ek.Run.open(early, device="cpu")
    # 2 ms a call, at every k and every number of steps: a fixed cost the pilots cannot tell from the marginal one
    monkeypatch.setattr(evaluation, "log_marginal", lambda *args, **kwargs: time.sleep(0.002))
    monkeypatch.setattr(reference, "refined_proposal", lambda *args, **kwargs: time.sleep(0.002))
    assert evaluation.evaluation_seconds(run, k=10**12, n=100) > MAX_SECONDS
    assert evaluation.evaluation_seconds(run, k=10**12, n=100, proposal="encoder") > MAX_SECONDS
    small = evaluation.evaluation_seconds(run, k=1000, n=100, proposal="encoder")
    assert small < 1.0  # the floor stays small at a sensible k
