"""Bad input to the command line, as a table: each row is a command and what it must answer, exit status 2 and
one line ``elbokit: error: ...`` matching a pattern, no traceback, and every file of the run and its data
byte-identical afterwards (a fit to a new folder must not create it). Rows marked ``# was:`` failed before this
table existed; the others guard what already held.

Every row runs against a fresh copy of one small trained run (``RUN``), its data file (``DATA``), and files a
row's set-up may craft in the test's folder (``TMP``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from elbokit.cli import main

FAST = ["--epochs", "2", "--batch-size", "20", "--latent-dim", "2", "--hidden", "16", "--quiet", "--device", "cpu"]


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]  # with {RUN}, {DATA}, {TMP} placeholders
    pattern: str  # a substring of the one error line (case-insensitive)
    setup: Callable[[Path, Path, Path], None] | None = None  # (run, data, tmp) -> None, before the snapshot
    fresh_out: bool = field(default=False)  # argv writes to {TMP}/new, which must not exist afterwards


def _edit_checkpoint(run: Path, change: Callable[[dict[str, object], dict[str, torch.Tensor]], None]) -> None:
    path = run / "checkpoint.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    state = json.loads(metadata["elbokit"])
    change(state, tensors)
    save_file(tensors, str(path), metadata={"elbokit": json.dumps(state)})


def _set_state(**values: object) -> Callable[[Path, Path, Path], None]:
    return lambda run, data, tmp: _edit_checkpoint(run, lambda state, _: state.update(values))


def _drop_state(name: str) -> Callable[[Path, Path, Path], None]:
    return lambda run, data, tmp: _edit_checkpoint(run, lambda state, _: state.pop(name))


def _tensor(name: str, value: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Path, Path, Path], None]:
    def change(state: dict[str, object], tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = value(tensors[name])

    return lambda run, data, tmp: _edit_checkpoint(run, change)


def _edit_config(**values: object) -> Callable[[Path, Path, Path], None]:
    def setup(run: Path, data: Path, tmp: Path) -> None:
        config = json.loads((run / "config.json").read_text())
        config.update(values)
        (run / "config.json").write_text(json.dumps(config))

    return setup


def _write(name: str, content: bytes | str) -> Callable[[Path, Path, Path], None]:
    def setup(run: Path, data: Path, tmp: Path) -> None:
        path = tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def _npy(name: str, array: np.ndarray) -> Callable[[Path, Path, Path], None]:
    return lambda run, data, tmp: np.save(tmp / name, array)


def _toml(text: str) -> Callable[[Path, Path, Path], None]:
    return _write("run.toml", text)


def _both(*setups: Callable[[Path, Path, Path], None]) -> Callable[[Path, Path, Path], None]:
    def setup(run: Path, data: Path, tmp: Path) -> None:
        for s in setups:
            s(run, data, tmp)

    return setup


def _huge_header(run: Path, data: Path, tmp: Path) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000000), }"
    header += " " * (63 - len(header) % 64) + "\n"
    (tmp / "huge.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())


def _truncate(name: str) -> Callable[[Path, Path, Path], None]:
    def setup(run: Path, data: Path, tmp: Path) -> None:
        path = run / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def _changed_hash(run: Path, data: Path, tmp: Path) -> None:
    described = json.loads((run / "dataset.json").read_text())
    described["file"]["sha256"] = "0" * 64
    (run / "dataset.json").write_text(json.dumps(described))


def _corrupt_middle_metrics(run: Path, data: Path, tmp: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[0] = lines[0][:10]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _burda_run(run: Path, data: Path, tmp: Path) -> None:
    assert main(["fit", "--data", str(data), "--out", str(tmp / "burda"), *FAST, "--lr-schedule", "burda"]) == 0


def _local_run(change: Callable[[dict[str, object], dict[str, torch.Tensor]], None] | None = None,
               ) -> Callable[[Path, Path, Path], None]:  # fmt: skip
    """A run with a local guide (one q per training point) in {TMP}/local, its checkpoint then changed."""
    def setup(run: Path, data: Path, tmp: Path) -> None:
        assert main(["fit", "--data", str(data), "--out", str(tmp / "local"), *FAST, "--guide", "local"]) == 0
        if change is not None:
            _edit_checkpoint(tmp / "local", change)

    return setup


def _shorten(name: str) -> Callable[[dict[str, object], dict[str, torch.Tensor]], None]:
    def change(state: dict[str, object], tensors: dict[str, torch.Tensor]) -> None:
        tensors[name] = tensors[name][:-1].clone()

    return change


NEW = ["fit", "--data", "{DATA}", "--out", "{TMP}/new", *FAST]
TOML = ["fit", "--data", "{DATA}", "--out", "{TMP}/new"]  # no flags: the file's settings are not overridden
OVER = ["fit", "--data", "{DATA}", "--out", "{RUN}", *FAST, "--overwrite"]
# fmt: off
CASES = [
    # -- fit: settings, on a new folder and over a trained run ------------------------------------------------
    Case("overwrite-anneal-typo", [*OVER, "--anneal", "bogus:3"], "unknown anneal spec"),  # was: run deleted
    Case("overwrite-iwae-beta", [*OVER, "--objective", "iwae", "--k", "5", "--beta", "0.5"],
         "β and annealing apply to the elbo objective"),  # was: run deleted
    Case("new-iwae-anneal", [*NEW, "--objective", "iwae", "--k", "5", "--anneal", "linear:5"],
         "β and annealing apply", fresh_out=True),  # was: config.json and dataset.json left behind
    Case("new-freebits-full", [*NEW, "--guide", "full", "--anneal", "freebits:0.5"], "free bits needs",
         fresh_out=True),
    Case("iwae-k1", [*OVER, "--objective", "iwae"], "needs k >= 2"),
    Case("elbo-dreg", [*OVER, "--gradient", "dreg"], "takes gradient"),
    Case("lr-zero", [*OVER, "--lr", "0"], "lr must be"),
    Case("lr-nan", [*OVER, "--lr", "nan"], "expected a finite number"),
    Case("new-arch-conv-not-images", [*NEW, "--arch", "conv"], "arch conv is for images", fresh_out=True),
    Case("overwrite-arch-conv-not-images", [*OVER, "--arch", "conv"], "arch conv is for images"),
    Case("arch-typo", [*NEW, "--arch", "cnn"], "invalid choice", fresh_out=True),
    Case("conv-odd-image-sides", ["fit", "--data", "{TMP}/odd.npy", "--out", "{TMP}/new", *FAST, "--arch", "conv"],
         "must be even and above 4", _npy("odd.npy", (np.arange(30 * 25).reshape(30, 5, 5) % 2).astype(np.float32)),
         fresh_out=True),
    Case("conv-count-likelihood", ["fit", "--data", "{TMP}/img.npy", "--out", "{TMP}/new", *FAST, "--arch", "conv",
                                   "--likelihood", "poisson"], "count likelihood needs arch mlp",
         _npy("img.npy", (np.arange(30 * 64).reshape(30, 8, 8) % 2).astype(np.float32)), fresh_out=True),
    Case("bnn-arch-conv", [*NEW, "--model", "bnn", "--arch", "conv"], "arch applies to model vae", fresh_out=True),
    Case("beta-negative", [*OVER, "--beta", "-1"], "beta must be"),
    Case("beta-inf", [*OVER, "--beta", "inf"], "expected a finite number"),
    Case("epochs-zero", [*OVER, "--epochs", "0"], "expected an integer >= 1"),
    Case("epochs-text", [*OVER, "--epochs", "ten"], "expected an integer"),
    Case("hidden-text", [*OVER, "--hidden", "16,x"], "comma-separated integers"),
    Case("hidden-zero", [*OVER, "--hidden", "16,0"], "integers >= 1"),
    Case("latent-negative", [*OVER, "--latent-dim", "-2"], "expected an integer >= 1"),
    Case("batch-zero", [*OVER, "--batch-size", "0"], "expected an integer >= 1"),
    Case("clip-zero", [*OVER, "--clip", "0"], "clip must be"),
    Case("patience-zero", [*OVER, "--patience", "0"], "expected an integer >= 1"),
    Case("limit-zero", [*OVER, "--limit", "0"], "expected an integer >= 1"),
    Case("seed-negative", [*OVER, "--seed", "-1"], "seed must be an integer >= 0"),  # was: accepted
    Case("seed-huge", [*OVER, "--seed", str(2**70)], "seed must be an integer in 0..2**32"),  # was: exit 1
    Case("likelihood-unknown", [*OVER, "--likelihood", "gamma"], "unknown likelihood"),
    Case("likelihood-nb-dispersion", [*OVER, "--likelihood", "nb:wide"], "dispersion must be gene, cell or a number"),
    Case("counts-negative", [*NEW[:2], "{TMP}/neg.npy", *NEW[3:], "--likelihood", "nb"], "needs counts >= 0",
         _npy("neg.npy", np.tile(np.array([[3.0, -1.0, 2.0, 5.0]], dtype=np.float32), (30, 1))), fresh_out=True),
    Case("counts-fractional", [*NEW[:2], "{TMP}/frac.npy", *NEW[3:], "--likelihood", "zinb"], "needs integer counts",
         _npy("frac.npy", np.tile(np.array([[3.0, 1.5, 2.0, 5.0]], dtype=np.float32), (30, 1))), fresh_out=True),
    Case("counts-empty-cell", [*NEW[:2], "{TMP}/empty.npy", *NEW[3:], "--likelihood", "poisson"],
         "have no counts at all", _npy("empty.npy", np.vstack([np.full((29, 4), 2.0), np.zeros((1, 4))])
                                       .astype(np.float32)), fresh_out=True),
    Case("likelihood-scale", [*OVER, "--likelihood", "gaussian:abc"], "SCALE must be"),
    Case("guide-unknown", [*OVER, "--guide", "planar"], "guide must be"),
    Case("guide-flow-zero", [*OVER, "--guide", "flow:0"], "flow:K needs an integer K >= 1"),
    Case("guide-local-unknown", [*OVER, "--guide", "local:diag"], "guide must be"),
    Case("nproc-zero", [*OVER, "--nproc", "0"], "expected an integer >= 1"),
    Case("nproc-freebits", [*NEW, "--anneal", "freebits:0.5", "--nproc", "2"], "free bits takes the KL per dimension",
         fresh_out=True),
    Case("evaluate-nproc-text", ["evaluate", "{RUN}", "--nproc", "two"], "--nproc: expected an integer"),
    Case("local-lr-zero", [*OVER, "--guide", "local", "--local-lr", "0"], "local_lr must be a finite number > 0"),
    Case("local-lr-nan", [*OVER, "--guide", "local", "--local-lr", "nan"], "finite"),
    Case("local-full-beyond-memory", [*OVER, "--guide", "local:full", "--latent-dim", "20000"], "needs about"),
    Case("device-unknown", [*OVER, "--device", "tpu0"], "device must be auto, cpu or cuda"),
    Case("device-no-cuda", [*OVER, "--device", "cuda"], "CUDA is not available"),
    Case("hidden-beyond-memory", [*OVER, "--hidden", "200000,200000,200000"], "needs about"),  # was: exit 1
    Case("binarize-file", [*OVER, "--binarize", "fixed"], "binarize does not apply to a file"),
    Case("activation-unknown", [*OVER, "--activation", "sigmoid"], "invalid choice"),
    Case("flag-unknown", [*OVER, "--latnet-dim", "3"], "unrecognized arguments"),
    # -- fit: data ---------------------------------------------------------------------------------------------
    Case("data-unknown-name", [*NEW[:2], "imagenet", *NEW[3:]], "unknown dataset 'imagenet'", fresh_out=True),
    Case("data-missing-file", [*NEW[:2], "{TMP}/missing.npy", *NEW[3:]], "file not found", fresh_out=True),
    Case("data-npz-not-zip", [*NEW[:2], "{TMP}/bad.npz", *NEW[3:]], "not a valid .npz",
         _write("bad.npz", b"PK\x03\x04 this is not a zip archive"), fresh_out=True),  # was: exit 1
    Case("data-npy-absurd-shape", [*NEW[:2], "{TMP}/huge.npy", *NEW[3:]], "truncated or corrupt", _huge_header,
         fresh_out=True),  # was: exit 1 (MemoryError)
    Case("data-nan", [*NEW[:2], "{TMP}/nan.npy", *NEW[3:]], "NaN or inf",
         _npy("nan.npy", np.full((30, 4), np.nan, dtype=np.float32)), fresh_out=True),
    Case("data-outside-bernoulli", [*NEW[:2], "{TMP}/big.npy", *NEW[3:], "--likelihood", "bernoulli"],
         "needs x in [0, 1]",
         _npy("big.npy", np.full((30, 4), 3.0, dtype=np.float32)), fresh_out=True),
    Case("data-1d", [*NEW[:2], "{TMP}/flat.npy", *NEW[3:]], "expected a 2-D",
         _npy("flat.npy", np.zeros(30, dtype=np.float32)), fresh_out=True),
    Case("data-csv-ragged", [*NEW[:2], "{TMP}/x.csv", *NEW[3:]], "line 3",
         _write("x.csv", "1,0\n0,1\n1\n0,0\n"), fresh_out=True),
    Case("data-wrong-suffix", [*NEW[:2], "{TMP}/x.txt", *NEW[3:]], "unknown dataset",
         fresh_out=True),
    # -- fit: configuration files ------------------------------------------------------------------------------
    Case("toml-missing", [*NEW, "--config", "{TMP}/none.toml"], "does not exist", fresh_out=True),
    Case("toml-syntax", [*TOML, "--config", "{TMP}/run.toml"], "not valid TOML", _toml("seed = = 3\n"),
         fresh_out=True),
    Case("toml-seed-text", [*TOML, "--config", "{TMP}/run.toml"], "seed must be an integer",
         _toml('seed = "abc"\n'), fresh_out=True),  # was: accepted
    Case("toml-lr-bool", [*TOML, "--config", "{TMP}/run.toml"], "lr must be a number", _toml("lr = true\n"),
         fresh_out=True),  # was: accepted as 1.0
    Case("toml-hidden-int", [*TOML, "--config", "{TMP}/run.toml"], "hidden must be a list", _toml("hidden = 5\n"),
         fresh_out=True),  # was: "'int' object is not iterable"
    Case("toml-patience-float", [*TOML, "--config", "{TMP}/run.toml"], "patience must be an integer",
         _toml("patience = 1.5\n"), fresh_out=True),  # was: accepted
    Case("toml-device", [*TOML, "--config", "{TMP}/run.toml"], "device must be", _toml('device = "foo"\n'),
         fresh_out=True),  # was: accepted until training
    Case("toml-quiet-text", [*TOML, "--config", "{TMP}/run.toml"], "quiet must be true or false",
         _toml('quiet = "no"\n'), fresh_out=True),  # was: accepted
    Case("toml-extra-text", [*TOML, "--config", "{TMP}/run.toml"], "extra must be a table",
         _toml('extra = "notes"\n'), fresh_out=True),  # was: exit 1
    Case("toml-epochs-float", [*TOML, "--config", "{TMP}/run.toml"], "epochs must be an integer",
         _toml("epochs = 2.0\n"), fresh_out=True),
    Case("toml-unknown", [*TOML, "--config", "{TMP}/run.toml"], "unknown setting 'latnet_dim'",
         _toml("latnet_dim = 3\n"), fresh_out=True),
    Case("toml-binary", [*TOML, "--config", "{TMP}/run.toml"], "not valid TOML", _write("run.toml", b"\xff\xfe\x00"),
         fresh_out=True),
    # -- fit: the run directory ----------------------------------------------------------------------------------
    Case("existing-run", ["fit", "--data", "{DATA}", "--out", "{RUN}", *FAST], "already holds a run"),
    Case("resume-and-overwrite", ["fit", "--out", "{RUN}", "--resume", "--overwrite"], "exclude each other"),
    Case("resume-changed-lr", ["fit", "--out", "{RUN}", "--resume", "--lr", "0.5"], "differs from the run's"),
    Case("resume-changed-local-lr", ["fit", "--out", "{RUN}", "--resume", "--local-lr", "0.5"],
         "differs from the run's"),
    Case("resume-changed-guide", ["fit", "--out", "{RUN}", "--resume", "--guide", "local"], "differs from the run's"),
    Case("resume-local-table-short", ["fit", "--out", "{TMP}/local", "--resume", "--epochs", "3"], "shape",
         _local_run(_shorten("model.encoder.table.loc"))),
    Case("resume-local-moment-short", ["fit", "--out", "{TMP}/local", "--resume", "--epochs", "3"], "shape",
         _local_run(_shorten("optimizer.4.exp_avg"))),
    Case("resume-fewer-epochs", ["fit", "--out", "{RUN}", "--resume", "--epochs", "1"],
         "the checkpoint is at epoch 2"),  # was: accepted, nothing trained
    Case("resume-burda-longer", ["fit", "--out", "{TMP}/burda", "--resume", "--epochs", "5"],
         "burda lr schedule is scaled", _burda_run),  # was: resumed onto a different schedule
    Case("resume-nothing", ["fit", "--out", "{TMP}", "--resume"], "holds no run to resume"),
    Case("out-is-a-file", ["fit", "--data", "{DATA}", "--out", "{DATA}", *FAST], "exists and is not a folder"),
    Case("resume-corrupt-metrics", ["fit", "--out", "{RUN}", "--resume", "--epochs", "3"], "line 1",
         _corrupt_middle_metrics),  # was: a bare JSON error
    Case("resume-checkpoint-lacks-sums", ["fit", "--out", "{RUN}", "--resume", "--epochs", "3"], "lacks 'sums'",
         _drop_state("sums")),  # was: exit 1 (KeyError)
    Case("resume-optimizer-shape", ["fit", "--out", "{RUN}", "--resume", "--epochs", "3"],
         "optimizer tensor '0.exp_avg'",
         _tensor("optimizer.0.exp_avg", lambda t: torch.zeros(3))),  # was: exit 1 mid-training
    Case("resume-rng-size", ["fit", "--out", "{RUN}", "--resume", "--epochs", "3"], "random-number state",
         _tensor("rng.torch", lambda t: t[:10])),  # was: exit 1 (RuntimeError)
    # -- evaluate: crafted or damaged runs --------------------------------------------------------------------
    Case("evaluate-missing", ["evaluate", "{TMP}/nowhere"], "does not exist"),
    Case("evaluate-not-a-run", ["evaluate", "{TMP}"], "holds no run"),
    Case("evaluate-k-zero", ["evaluate", "{RUN}", "--k", "0"], "expected an integer >= 1"),
    Case("evaluate-k-beyond-reason", ["evaluate", "{RUN}", "--k", str(10**12)], "would take about"),  # was: weeks
    Case("evaluate-split", ["evaluate", "{RUN}", "--split", "holdout"], "invalid choice"),
    Case("evaluate-truncated-checkpoint", ["evaluate", "{RUN}"], "not a readable safetensors",
         _truncate("checkpoint.safetensors")),
    Case("evaluate-epoch-script", ["evaluate", "{RUN}"], "epoch must be an integer",
         _set_state(epoch="<script>alert(1)</script>")),  # was: accepted, then put into report.html
    Case("evaluate-step-negative", ["evaluate", "{RUN}"], "step must be an integer >= 0",
         _set_state(step=-5)),  # was: accepted
    Case("evaluate-step-list", ["evaluate", "{RUN}"], "step must be", _set_state(step=[1, 2])),  # was: accepted
    Case("evaluate-best-text", ["evaluate", "{RUN}"], "best must be", _set_state(best="high")),  # was: accepted
    Case("evaluate-nan-weights", ["evaluate", "{RUN}"], "NaN or infinite",
         _tensor("model.decoder.0.weight", lambda t: torch.full_like(t, float("nan")))),
    Case("evaluate-wrong-shape", ["evaluate", "{RUN}"], "does not fit the model",
         _tensor("model.decoder.0.weight", lambda t: torch.zeros(3, 3))),
    Case("evaluate-config-not-json", ["evaluate", "{RUN}"], "not valid JSON", _truncate("config.json")),
    Case("evaluate-config-lr-text", ["evaluate", "{RUN}"], "lr must be a number", _edit_config(lr="fast")),
    Case("evaluate-config-disagrees", ["evaluate", "{RUN}"], "describe different runs",
         _edit_config(seed=99)),  # was: read the checkpoint as another run's
    Case("evaluate-data-changed", ["evaluate", "{RUN}"], "has changed since the run was trained",
         _changed_hash),  # was: silently read another file
    Case("evaluate-no-checkpoint", ["evaluate", "{RUN}"], "no checkpoint",
         lambda run, data, tmp: (run / "checkpoint.safetensors").unlink()),
    # -- sample, diagnose, report, sweep, linear-gaussian ----------------------------------------------------
    Case("sample-n-zero", ["sample", "{RUN}", "--n", "0"], "expected an integer >= 1"),
    Case("sample-n-beyond-memory", ["sample", "{RUN}", "--n", str(10**12), "--out", "{TMP}/s.npy"],
         "need about"),  # was: exit 1
    Case("sample-replaces-a-file", ["sample", "{RUN}", "--out", "{TMP}/mine.npy"], "exists; pass --overwrite",
         _write("mine.npy", b"precious")),  # was: replaced silently
    Case("sample-suffix", ["sample", "{RUN}", "--out", "{TMP}/s.txt"], "must end in .png or .npy"),
    Case("sample-no-folder", ["sample", "{RUN}", "--out", "{TMP}/none/s.npy"], "does not exist"),
    Case("sample-png-not-images", ["sample", "{RUN}", "--out", "{TMP}/s.png"], "not image data"),
    Case("diagnose-k-beyond-reason", ["diagnose", "{RUN}", "--k", str(10**12)], "would take about"),
    Case("diagnose-reference", ["diagnose", "{RUN}", "--reference", "exact"], "invalid choice"),
    Case("report-not-a-run", ["report", "{TMP}"], "holds no run"),
    Case("sweep-negative-beta", ["sweep", "{RUN}", "--beta", "-1"], "numbers >= 0"),
    Case("sweep-again", ["sweep", "{RUN}", "--beta", "1"], "already holds a sweep",
         lambda run, data, tmp: (run / "sweep.json").write_text("[]")),  # was: replaced silently
    Case("sweep-not-a-run", ["sweep", "{TMP}", "--beta", "1"], "holds no run"),
    Case("sweep-factor-points-zero", ["sweep", "{RUN}", "--beta", "1", "--factor-points", "0"],
         "expected an integer >= 1"),
    Case("lg-latent-too-big", ["linear-gaussian", "--data-dim", "3", "--latent-dim", "5"], "must be below"),
    Case("no-command", [], "required"),
]
# fmt: on


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("original")
    rng = np.random.default_rng(0)
    np.save(root / "x.npy", (rng.random((200, 16)) < 0.4).astype(np.float32))
    assert main(["fit", "--data", str(root / "x.npy"), "--out", str(root / "run"), *FAST]) == 0
    return root / "run", root / "x.npy"


def _tree(*folders: Path) -> dict[str, bytes]:
    """Every file under the folders, bar run locks (which hold only the last writer's PID)."""
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_the_table_is_large() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, original: tuple[Path, Path], tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(original[0], run)
    work = tmp_path / "work"
    work.mkdir()
    data = original[1]
    if case.setup is not None:
        case.setup(run, data, work)
    before = _tree(run, work, data.parent)
    argv = [a.replace("{RUN}", str(run)).replace("{DATA}", str(data)).replace("{TMP}", str(work)) for a in case.argv]
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, f"exit {status}: {err}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("elbokit: error: "), err
    assert case.pattern.lower() in lines[0].lower(), lines[0]
    assert _tree(run, work, data.parent) == before, "a file changed"
    if case.fresh_out:
        assert not (work / "new").exists()
