"""The benchmark scripts run and say what they claim to measure: a smoke run of the training-step benchmark, and
quality.py's command line trains the configuration it describes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from elbokit.config import RunConfig
from elbokit.train.schedules import BURDA_EPOCHS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_train_step_benchmark_prints_the_issue_keys_for_every_configuration() -> None:
    """One round of one step per method at a tiny batch: the JSON has every configuration and every key, with
    positive times and a floor below every measured step (Pyro's keys are None where Pyro is not installed)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--repeats", "1", "--steps", "1",
         "--batch", "4", "--threads", "1", "--json"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    configs = {(c["arch"], c["batch"]) for c in result["configs"]}
    assert configs == {("784-400-20", 4), ("784-200-200-50", 4)}
    for c in result["configs"]:
        for key in ("elbokit_ms", "bare_ms", "bare_fused_ms", "matmuls_ms", "gemm_gflops", "model_gflop_per_step"):
            assert c[key] > 0, key
        assert "pyro_trace_ms" in c and "pyro_meanfield_ms" in c
        assert c["floor_ms"] < min(c["elbokit_ms"], c["bare_ms"], c["matmuls_ms"])
        # forward 2 B sum(in out), backward twice that less the first layer's input gradient
        sizes = [(784, 400), (400, 40), (20, 400), (400, 784)] if c["arch"] == "784-400-20" else \
            [(784, 200), (200, 200), (200, 100), (50, 200), (200, 200), (200, 784)]  # fmt: skip
        forward = 2 * 4 * sum(i * o for i, o in sizes)
        assert c["model_gflop_per_step"] == pytest.approx((3 * forward - 2 * 4 * 784 * sizes[0][1]) / 1e9)


def test_flow_step_benchmark_prints_its_keys() -> None:
    """One round of one step per method at a tiny batch: the flow guide against the Gaussian guide and against
    the same flow written on zuko in a bare loop, every key positive, the thread count stated."""
    pytest.importorskip("zuko")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "flow_step.py"), "--repeats", "1", "--steps", "1", "--batch", "4",
         "--threads", "1", "--json"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    assert "1 torch thread(s)" in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["threads"] == 1 and [c["batch"] for c in result["configs"]] == [4]
    (c,) = result["configs"]
    assert (c["arch"], c["transforms"]) == ("784-200-200-50", 4)
    for key in ("gaussian_ms", "flow_ms", "bare_flow_ms", "bare_flow_fused_ms", "flow_over_gaussian",
                "flow_over_bare_flow_fused", "flow_over_bare_flow"):  # fmt: skip
        assert c[key] > 0, key
    assert c["flow_parameters"] > c["gaussian_parameters"]


def test_quality_runs_the_configuration_it_describes(tmp_path: Path) -> None:
    """quality.py's `elbokit fit` command line, run for real (one epoch on 40 points), writes the config that
    quality.py describes: Burda et al.'s architecture, batch 20 and learning-rate schedule."""
    quality = pytest.importorskip("quality")  # benchmarks/quality.py (imports Pyro only to train Pyro)
    assert quality.epochs_for(0.1) == 328 and quality.epochs_for(1.0) == BURDA_EPOCHS
    with pytest.raises(ValueError, match="fraction"):
        quality.epochs_for(0.0)
    config = quality.config_for("iwae", 5, 1, seed=3)
    out = tmp_path / "run"
    subprocess.run([*quality.fit_command(config, out, resume=False), "--limit", "40"], check=True, timeout=300)
    saved = RunConfig.load(out / "config.json")
    assert dataclasses.replace(saved, limit=None) == config
    assert (config.hidden, config.latent_dim, config.batch_size, config.lr_schedule) == ((200, 200), 50, 20, "burda")
    assert quality.epochs_done(out) == 1


def test_gap_table_runs_on_two_small_runs(tmp_path: Path) -> None:
    """The Cremer-style table on two tiny runs (digits, a Gaussian and a flow guide): every row present, the
    reference's k-hat counts within the images, and the flow family's L[q*] reported for the Gaussian run."""
    pytest.importorskip("zuko")
    from elbokit.cli import main

    common = ["--data", "digits", "--limit", "200", "--epochs", "1", "--latent-dim", "2", "--hidden", "16",
              "--quiet", "--device", "cpu"]  # fmt: skip
    for name, guide in (("g", "gaussian"), ("f", "flow:2")):
        assert main(["fit", "--out", str(tmp_path / name), "--guide", guide, *common]) == 0
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gap_table.py"), "--gaussian-run", str(tmp_path / "g"),
         "--flow-run", str(tmp_path / "f"), "--limit", "8", "--k", "50", "--steps", "20", "--samples", "20",
         "--ais-limit", "4", "--ais-steps", "5", "--threads", "1", "--json"],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    gaussian, flow = result["rows"]
    assert (gaussian["family"], flow["family"]) == ("diagonal", "flow")
    for row in (gaussian, flow):
        assert row["n"] == 8 and 0 <= row["khat_over"] <= 8 and row["ais"]["n"] == 4
        assert row["approximation"] == pytest.approx(row["log_px"] - row["elbo_optimal"])
        assert 0 <= row["evaluate"]["refined"]["khat_over"] <= 8
    assert "flow_family" in gaussian and "flow_family" not in flow
    assert "approximation gap" in out.stdout
