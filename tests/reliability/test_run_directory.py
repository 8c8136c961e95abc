"""Nothing lost, ever: kill -9 at 20 moments then resume (bit-identical to an uninterrupted run), two writers on
one folder, --overwrite that keeps the old run until the new one has a checkpoint, resume from anywhere.

The killed processes run ``kill_driver.py``, which makes ``elbokit fit`` SIGKILL itself at a named moment (a
training step, the middle of an atomic write, the middle of a metrics line), so every moment is hit exactly; three
more kills come from outside at seeded random times. Every process runs with one thread, so that an interrupted
and an uninterrupted run take bit-identical steps.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from elbokit.cli import main

DRIVER = Path(__file__).with_name("kill_driver.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# 240 points: 192 train at 24 per step = 8 steps per epoch, 3 epochs = 24 steps.
ARGS = ["--epochs", "3", "--batch-size", "24", "--latent-dim", "2", "--hidden", "8", "--quiet", "--device", "cpu",
        "--seed", "5"]  # fmt: skip
STEPS_PER_EPOCH, EPOCHS = 8, 3

#: The injected moments: before the run exists, before its first checkpoint, during every kind of write.
EVENTS = [
    "replace:config.json:1",  # config.json half-written: no run yet
    "replace:dataset.json:1",  # config.json written, dataset.json not
    "step:1",  # before the first step
    "step:4",  # inside the first epoch: no checkpoint yet
    "step:8",  # the first epoch's last step
    "append:1",  # a torn first metrics line, before the first checkpoint
    "replace:checkpoint.safetensors:1",  # the first checkpoint written, not yet renamed
    "written:checkpoint.safetensors:1",  # the first checkpoint in place, state.json not yet
    "replace:state.json:1",  # state.json half-written
    "step:9",  # the first step of epoch 2
    "step:13",
    "append:2",
    "replace:checkpoint.safetensors:2",
    "written:checkpoint.safetensors:2",
    "step:20",
    "append:3",
    "replace:checkpoint.safetensors:3",  # the last checkpoint
]
TIMED_KILLS = 3  # from outside, after a seeded random delay


def _data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    prototypes = rng.random((3, 12))
    np.save(path, (rng.random((240, 12)) < prototypes[rng.integers(0, 3, 240)]).astype(np.float32))
    return path


def _fit(data: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--data", str(data), "--out", str(out), *ARGS, *extra]


def _driver(event: str, argv: list[str]) -> list[str]:
    return [sys.executable, str(DRIVER), event, "--", *argv]


def _final(run: Path) -> dict[str, torch.Tensor]:
    """The trained state: parameters and optimizer moments (the RNG state is compared through them)."""
    return {k: v for k, v in load_file(run / "checkpoint.safetensors").items() if not k.startswith("rng.")}


def _metrics(run: Path) -> list[dict[str, float]]:
    """metrics.jsonl without its timings."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_second")} for r in rows]


def _assert_same_run(expected: Path, run: Path) -> None:
    a, b = _final(expected), _final(run)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{run.name}: {name} differs"
    assert _metrics(expected) == _metrics(run), run.name
    assert json.loads((run / "state.json").read_text())["epoch"] == EPOCHS
    assert not list(run.glob(".*.tmp")), f"{run.name}: temporary files left: {list(run.glob('.*.tmp'))}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The data file and one uninterrupted run of ARGS on it."""
    root = tmp_path_factory.mktemp("straight")
    data = _data(root / "x.npy")
    subprocess.run([sys.executable, "-m", "elbokit.cli", *_fit(data, root / "run")], env=ENV, check=True,
                   capture_output=True)  # fmt: skip
    return data, root / "run"


def _kill(event: str, argv: list[str], delay: float | None) -> int:
    """Run argv under the driver, killed at ``event`` (or from outside after ``delay`` seconds)."""
    if delay is None:
        return subprocess.run(_driver(event, argv), env=ENV, capture_output=True, timeout=120).returncode
    proc = subprocess.Popen(_driver("none", argv), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    return proc.wait(timeout=60)


def test_kill_9_at_twenty_moments_then_resume_is_bit_identical(straight: tuple[Path, Path], tmp_path: Path) -> None:
    """Each kill, then what a user does next: `fit --resume` where the folder holds a run, else the command
    again. Every run ends with the parameters, optimizer state and metrics of the uninterrupted run."""
    data, expected = straight
    rng = random.Random(20)
    cases: list[tuple[str, float | None]] = [(e, None) for e in EVENTS]
    cases += [(f"timed-{i}", rng.uniform(1.5, 3.5)) for i in range(TIMED_KILLS)]
    assert len(cases) == 20
    runs = {name: tmp_path / name.replace(":", "-") for name, _ in cases}
    with ThreadPoolExecutor(max_workers=2) as pool:
        codes = list(pool.map(lambda c: _kill(c[0], _fit(data, runs[c[0]]), c[1]), cases))
    for (name, delay), code in zip(cases, codes, strict=True):
        if delay is None:
            assert code == -signal.SIGKILL, f"{name}: the fault was not reached (exit {code})"
    # The next command, all in one process (one interpreter start instead of twenty).
    script = (
        "import json, sys\nfrom pathlib import Path\nfrom elbokit.cli import main\n"
        "codes = {}\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    codes[argv[argv.index('--out') + 1]] = main(argv)\n"
        "print(json.dumps(codes))\n"
    )
    commands = []
    for run in runs.values():
        resume = (run / "config.json").exists()
        commands.append(["fit", "--out", str(run), "--resume", "--quiet"] if resume else _fit(data, run))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], env=ENV, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    codes_after = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(codes_after.values()) == {0}, codes_after
    for run in runs.values():
        _assert_same_run(expected, run)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder (bar the lock, which holds only its last writer's PID), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}  # fmt: skip


@pytest.fixture
def trained(straight: tuple[Path, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(straight[1], run)
    return run


def test_two_writers_on_one_folder(straight: tuple[Path, Path], tmp_path: Path) -> None:
    """While one fit trains (held before its 10th step, after its first checkpoint, until the others are done), a
    second `fit --resume`, a `fit --overwrite` and a `sweep` on the folder are refused with the holder's PID; a
    reader reads a whole checkpoint; the first run ends as an uninterrupted run does."""
    data, expected = straight
    run, gate = tmp_path / "run", tmp_path / "release"
    proc = subprocess.Popen(_driver(f"gate:10:{gate}", _fit(data, run)), env=ENV, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoint.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.05)
        writers = [["fit", "--out", str(run), "--resume", "--quiet"], _fit(data, run, "--overwrite", "--lr", "0.01"),
                   ["sweep", str(run), "--beta", "0.5,1", "--k", "5", "--limit", "5"]]  # fmt: skip
        reader = ["evaluate", str(run), "--k", "5", "--limit", "5", "--proposal", "encoder", "--json"]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda argv: subprocess.run([sys.executable, "-m", "elbokit.cli", *argv], env=ENV,
                                    capture_output=True, text=True, timeout=120), [*writers, reader]))  # fmt: skip
        assert proc.poll() is None, "the first run ended before the others were tried"
        gate.touch()
        for second in results[:3]:
            lines = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(lines) == 1, second.stderr
            assert f"in use by another elbokit command (PID {proc.pid})" in lines[0], lines[0]
        assert results[3].returncode == 0, results[3].stderr
    finally:
        gate.touch()
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    os.unlink(run / "evaluation.json")  # the reader's output, not part of the run compared
    _assert_same_run(expected, run)


def test_overwrite_with_a_bad_flag_keeps_the_run(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(trained)
    data = json.loads((trained / "config.json").read_text())["data"]
    for bad in (["--anneal", "bogus:3"], ["--objective", "iwae", "--k", "5", "--beta", "0.5"],
                ["--likelihood", "gamma"], ["--hidden", "8,0"]):  # fmt: skip
        status, err = _run(["fit", "--data", data, "--out", str(trained), *ARGS, "--overwrite", *bad], capsys)
        assert status == 2 and err.startswith("elbokit: error: ") and len(err.strip().splitlines()) == 1, err
        assert _tree(trained) == before, bad


def test_overwrite_failing_before_its_first_checkpoint_restores_the_old_run(
    trained: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run that diverges in its first epoch leaves the old run exactly as it was, and says that no
    checkpoint was written (not that "the last good checkpoint is kept")."""
    from elbokit.train import loop

    before = _tree(trained)
    monkeypatch.setattr(loop, "evaluate_bound", lambda *a, **k: {"bound": float("nan")})
    data = json.loads((trained / "config.json").read_text())["data"]
    status, err = _run(["fit", "--data", data, "--out", str(trained), *ARGS, "--overwrite", "--seed", "9"], capsys)
    assert status == 1 and "no checkpoint was written" in err and "last good checkpoint" not in err, err
    assert _tree(trained) == before
    assert not (trained / ".replaced").exists()


def test_overwrite_killed_before_its_first_checkpoint_keeps_the_old_run(
    straight: tuple[Path, Path], trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed inside the first epoch of the replacing run: the old run waits whole in .replaced (and evaluate
    says so); `fit --resume` then trains the new run from the start and only its first checkpoint discards the
    old one. The result is the uninterrupted new run."""
    data, _ = straight
    before = _tree(trained)
    code = subprocess.run(_driver("step:3", _fit(data, trained, "--overwrite", "--seed", "6")), env=ENV,
                          capture_output=True).returncode  # fmt: skip
    assert code == -signal.SIGKILL
    kept = {name: content for name, content in _tree(trained).items() if name.startswith(".replaced/")}
    assert {name.removeprefix(".replaced/"): c for name, c in kept.items()} == before
    status, err = _run(["evaluate", str(trained), "--k", "5"], capsys)
    assert status == 2 and "the run it replaced is kept in" in err, err
    done = subprocess.run([sys.executable, "-m", "elbokit.cli", "fit", "--out", str(trained), "--resume"], env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "starting from the beginning" in done.stderr
    assert not (trained / ".replaced").exists()
    again = trained.parent / "again"
    subprocess.run([sys.executable, "-m", "elbokit.cli", *_fit(data, again, "--seed", "6")], env=ENV, check=True,
                   capture_output=True)  # fmt: skip
    _assert_same_run(again, trained)


def test_a_fit_refused_inside_training_leaves_no_half_made_run(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    data = _data(tmp_path / "x.npy")
    for bad in (["--objective", "iwae", "--k", "5", "--beta", "0.5"], ["--objective", "iwae", "--k", "5",
                "--anneal", "linear:10"], ["--guide", "full", "--anneal", "freebits:0.5"]):  # fmt: skip
        status, err = _run(_fit(data, tmp_path / "new", *bad), capsys)
        assert status == 2 and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "new").exists()


def test_extending_a_burda_schedule_is_refused_and_config_json_follows_a_longer_run(
    straight: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The burda schedule is scaled to the run's epochs, so more epochs on resume would not end where one longer
    run does: refused. A constant schedule extends exactly, and config.json then says the new count."""
    data, _ = straight
    burda = tmp_path / "burda"
    assert main(_fit(data, burda, "--lr-schedule", "burda")) == 0
    before = _tree(burda)
    status, err = _run(["fit", "--out", str(burda), "--resume", "--epochs", "5"], capsys)
    assert status == 2 and "burda" in err and "train a new run" in err, err
    assert _tree(burda) == before
    run = tmp_path / "constant"
    assert main(_fit(data, run)) == 0
    assert main(["fit", "--out", str(run), "--resume", "--epochs", "4", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 4
    status, err = _run(["fit", "--out", str(run), "--resume", "--epochs", "2"], capsys)
    assert status == 2 and "the checkpoint is at epoch 4" in err, err


def test_stale_temporary_files_are_removed_on_the_next_start(trained: Path) -> None:
    stale = [trained / ".checkpoint.safetensors.0123456789ab.tmp", trained / ".state.json.ba9876543210.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    assert main(["fit", "--out", str(trained), "--resume", "--epochs", "4", "--quiet"]) == 0
    assert not any(path.exists() for path in stale)


def test_a_torn_metrics_line_is_dropped_on_resume(trained: Path) -> None:
    metrics = trained / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + '{"epoch": 4, "step": 3')  # what a crash mid-append leaves
    assert main(["fit", "--out", str(trained), "--resume", "--epochs", "4", "--quiet"]) == 0
    lines = metrics.read_text().splitlines()
    assert len(lines) == 4 and lines[:3] == good.splitlines()
    assert json.loads(lines[3])["epoch"] == 4


def test_relative_data_paths_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`--data x.npy` is kept as an absolute path with the file's SHA-256: evaluate from another folder reads the
    same file, and a changed or missing file is named."""
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    _data(here / "x.npy")
    np.save(elsewhere / "x.npy", np.zeros((50, 12), dtype=np.float32))  # a different file of the same name
    monkeypatch.chdir(here)
    assert main(["fit", "--data", "x.npy", "--out", "run", *ARGS]) == 0
    config = json.loads((here / "run" / "config.json").read_text())
    described = json.loads((here / "run" / "dataset.json").read_text())
    assert config["data"] == str(here / "x.npy") and described["file"]["path"] == str(here / "x.npy")
    assert len(described["file"]["sha256"]) == 64
    capsys.readouterr()
    monkeypatch.chdir(elsewhere)
    status, err = _run(["evaluate", str(here / "run"), "--k", "5", "--limit", "5", "--json"], capsys)
    assert status == 0, err
    x = np.load(here / "x.npy")
    x[0, 0] = 1 - x[0, 0]
    np.save(here / "x.npy", x)
    status, err = _run(["evaluate", str(here / "run"), "--k", "5"], capsys)
    assert status == 2 and "has changed since the run was trained on it" in err, err
    (here / "x.npy").unlink()
    status, err = _run(["evaluate", str(here / "run"), "--k", "5"], capsys)
    assert status == 2 and "is missing" in err, err


def test_sample_and_sweep_never_replace_a_file_they_did_not_create(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "thesis.npy"
    precious.write_bytes(b"years of work")
    status, err = _run(["sample", str(trained), "--n", "4", "--out", str(precious)], capsys)
    assert status == 2 and "exists; pass --overwrite" in err, err
    assert precious.read_bytes() == b"years of work"
    assert main(["sample", str(trained), "--n", "4", "--out", str(precious), "--overwrite"]) == 0
    assert np.load(precious).shape == (4, 12)
    (trained / "sweep.json").write_text("[]\n")
    status, err = _run(["sweep", str(trained), "--beta", "1", "--k", "5", "--limit", "5"], capsys)
    assert status == 2 and "already holds a sweep" in err, err
    assert (trained / "sweep.json").read_text() == "[]\n"


def test_sweep_overwrite_replaces_its_runs_rather_than_appending(trained: Path) -> None:
    """(was: the second sweep's metrics were appended to the first's.)"""
    argv = ["sweep", str(trained), "--beta", "1", "--epochs", "1", "--k", "5", "--limit", "5"]
    assert main(argv) == 0
    assert main([*argv, "--overwrite"]) == 0
    beta_run = trained / "sweep" / "beta-1"
    assert len((beta_run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (beta_run / ".replaced").exists()
