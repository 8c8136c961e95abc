"""Several processes on torch.distributed (gloo on the CPU): ``--nproc 2`` trains to the parameters one process
reaches with the same global minibatch (up to the order of float additions), a two-process checkpoint resumes in
one process, a sharded evaluation, diagnosis or sweep equals one process's bit for bit (at one thread per
process), and a rank that fails or dies ends the job with a non-zero status naming it, within seconds; a SIGINT
to the launcher checkpoints once and stops every rank.

The launcher runs as a subprocess (its ranks are spawned processes); faults are injected into the ranks by a
``sitecustomize`` module on their ``PYTHONPATH``, which patches the training step of the rank named by
``ELBOKIT_TEST_FAULT_RANK``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# 225 training points in minibatches of 32: the last global minibatch holds 1 point, so one rank has none.
FIT = ["--data", "digits", "--limit", "225", "--batch-size", "32", "--latent-dim", "3", "--hidden", "16", "--quiet",
       "--device", "cpu", "--seed", "5"]  # fmt: skip
TIMEOUT = 240


def _elbokit(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "elbokit.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=TIMEOUT)  # fmt: skip


def _params(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "checkpoint.safetensors").items() if k.startswith("model.")}


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_close(a: Path, b: Path) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for name in pa:  # float32 sums over the ranks in another order: a few ulps per step
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-5, atol=1e-6, msg=name)
    for ma, mb in zip(_metrics(a), _metrics(b), strict=True):
        assert ma["validation_bound"] == pytest.approx(mb["validation_bound"], rel=1e-6)
        assert ma["train_bound"] == pytest.approx(mb["train_bound"], rel=1e-6)


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: 2 epochs in one process."""
    out = tmp_path_factory.mktemp("one") / "run"
    done = _elbokit(["fit", *FIT, "--epochs", "2", "--out", str(out)])
    assert done.returncode == 0, done.stderr
    return out


def test_two_processes_train_as_one_with_the_same_global_minibatch(one: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    done = _elbokit(["fit", *FIT, "--epochs", "2", "--out", str(out), "--nproc", "2"])
    assert done.returncode == 0, done.stderr
    _assert_close(one, out)
    rows = _metrics(out)
    assert [(r["processes"], r["batch_size"]) for r in rows] == [(2, 32), (2, 32)]
    assert [r["processes"] for r in _metrics(one)] == [1, 1]


def test_a_two_process_checkpoint_resumes_in_one_process(one: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert _elbokit(["fit", *FIT, "--epochs", "1", "--out", str(out), "--nproc", "2"]).returncode == 0
    done = _elbokit(["fit", "--out", str(out), "--resume", "--epochs", "2", "--quiet"])
    assert done.returncode == 0, done.stderr
    _assert_close(one, out)


def test_sharded_evaluation_is_one_process_evaluation_bit_for_bit(one: Path) -> None:
    args = ["evaluate", str(one), "--k", "50", "--limit", "90", "--json", "--refine-steps", "20"]
    single, sharded = _elbokit(args), _elbokit([*args, "--nproc", "2"])
    assert single.returncode == 0 and sharded.returncode == 0, sharded.stderr
    assert json.loads(single.stdout) == json.loads(sharded.stdout)


def test_sharded_diagnosis_is_one_process_diagnosis(one: Path, tmp_path: Path) -> None:
    """Two chunks of 100 points on two ranks: every figure as one process computes it (same threads per process)."""
    args = ["diagnose", str(one), "--k", "30", "--limit", "150", "--json", "--refine-steps", "10"]
    single, sharded = _elbokit(args), _elbokit([*args, "--nproc", "2"])
    assert single.returncode == 0 and sharded.returncode == 0, sharded.stderr
    a, b = json.loads(single.stdout), json.loads(sharded.stdout)
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert a["n"] == 150 and len(a["points"]["log_px"]) == 150


def _inject(tmp_path: Path, body: str) -> dict[str, str]:
    """A sitecustomize that wraps TrainStep.__call__ with ``body`` (run before the step, given ``self``) on the
    rank named by ELBOKIT_TEST_FAULT_RANK."""
    folder = tmp_path / "inject"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent('''
        import os

        def _patch():
            import elbokit.train.step as step
            original = step.TrainStep.__call__

            def patched(self, *args, **kwargs):
                if os.environ.get("RANK") == os.environ.get("ELBOKIT_TEST_FAULT_RANK"):
        ''') + textwrap.indent(textwrap.dedent(body), " " * 20) + textwrap.dedent('''
                return original(self, *args, **kwargs)

            step.TrainStep.__call__ = patched

        if os.environ.get("ELBOKIT_TEST_FAULT_RANK"):
            _patch()
        '''))  # fmt: skip
    path = os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "ELBOKIT_DIST_TIMEOUT": "30"}


@pytest.mark.parametrize(("body", "cause"), [
    ("if self.step == 3:\n    raise RuntimeError('injected failure')", "RuntimeError: injected failure"),
    ("if self.step == 3:\n    os.kill(os.getpid(), 9)", "killed by signal SIGKILL"),
])  # fmt: skip
def test_a_rank_that_fails_or_dies_ends_the_job_naming_it(tmp_path: Path, body: str, cause: str) -> None:
    env = {**_inject(tmp_path, body), "ELBOKIT_TEST_FAULT_RANK": "1"}
    started = time.monotonic()
    done = _elbokit(["fit", *FIT, "--epochs", "2", "--out", str(tmp_path / "run"), "--nproc", "2"], env)
    elapsed = time.monotonic() - started
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("elbokit:")]
    assert lines == [f"elbokit: error: rank 1 of 2 failed: {lines[0].split('failed: ', 1)[-1]}"], done.stderr
    assert cause in lines[0] and "Traceback" not in done.stderr
    assert elapsed < 60  # the other rank is stopped, not left waiting for the group's timeout


def test_sigint_to_the_launcher_checkpoints_once_and_the_run_resumes(one: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **_inject(tmp_path, "import time\ntime.sleep(1.0)"),
           "ELBOKIT_TEST_FAULT_RANK": "0"}  # rank 0 slowed: both ranks wait for it  # fmt: skip
    out = tmp_path / "run"
    launcher = subprocess.Popen([sys.executable, "-m", "elbokit.cli", "fit", *FIT, "--epochs", "2", "--out",
                                 str(out), "--nproc", "2", "--log-every", "1"], env=env, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    steps = out / "steps.jsonl"  # rank 0 logs every step: once it has logged two, its stop check is in place
    while not (steps.exists() and len(steps.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
        time.sleep(0.2)
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=TIMEOUT)
    assert launcher.returncode == 130, err
    assert "resume with" in err and "leaked" not in err, err  # the ranks' exit leaves no semaphore behind
    state = json.loads((out / "state.json").read_text())
    assert state["saved"] == "interrupted" and 0 < state["step"] < 16
    done = _elbokit(["fit", "--out", str(out), "--resume", "--quiet"])
    assert done.returncode == 0, done.stderr
    _assert_close(one, out)


def test_a_sharded_sweep_is_one_process_sweep(one: Path, tmp_path: Path) -> None:
    """Each rank trains its own share of the β values by itself: the same runs and numbers as one process."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(one, copy)
    args = ["--beta", "0.5,1,2", "--epochs", "1", "--k", "20", "--limit", "30", "--json"]
    single = _elbokit(["sweep", str(one), *args])
    sharded = _elbokit(["sweep", str(copy), *args, "--nproc", "2"])
    assert single.returncode == 0 and sharded.returncode == 0, sharded.stderr
    drop = lambda rows: [{k: v for k, v in r.items() if k != "path"} for r in rows]  # noqa: E731
    assert drop(json.loads(single.stdout)) == drop(json.loads(sharded.stdout))
    assert json.loads((copy / "sweep.json").read_text())[2]["path"].endswith("beta-2")


def test_under_torchrun_the_command_joins_the_group(one: Path, tmp_path: Path) -> None:
    """``torchrun --nproc-per-node 2 -m elbokit.cli fit ...``: the ranks find the group in torchrun's environment;
    rank 0 alone prints and writes."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "elbokit.cli", "fit",
               *[a for a in FIT if a != "--quiet"], "--epochs", "2", "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("done: 2 epochs") == 1  # one rank printed
    _assert_close(one, out)
