"""The README's "From Python" section, run as written, and ``Run.diagnose`` against ``elbokit diagnose --json``.

The README's blocks run in this process against a tiny run trained here (scikit-learn's 8x8 digits, 1 epoch on
200 points, d = 2, one hidden layer of 16) in ``runs/demo`` under the working directory, so the README's path
resolves as written. The only edits to a block are the substitutions of its large k / limit / refinement values
by small ones, each listed in ``_SUBSTITUTIONS`` and asserted to be present before it is made.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import elbokit as ek
from elbokit.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_conv_vae.py"

#: README text -> what the test runs instead: smaller k, limit and refinement, nothing else.
_SUBSTITUTIONS = {
    "run": {"k=1000, limit=1000": "k=20, limit=20"},  # in both run.evaluate and run.diagnose
    "own": {"data.test[:100]": "data.test[:20]", "k=200": "k=20", "refine_steps=100": "refine_steps=10"},
}
#: The own-model block is the example's diagnosing lines with the example's flags written as their defaults.
_EXAMPLE_FLAGS = {
    "data.test[:100]": "data.test[: args.limit]",
    "k=200": "k=args.k",
    "refine_steps=100": "refine_steps=args.refine_steps",
    '"conv_vae_report.html"': "args.out",
}


def _block(needle: str) -> str:
    """The python block of the README's "From Python" section that contains ``needle``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\n## From Python\n" in text, "README lost its From Python section"
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if needle in b]
    assert len(blocks) == 1, f"expected one python block with {needle!r} in README's From Python section"
    return blocks[0]


def _substituted(code: str, which: str) -> str:
    for old, new in _SUBSTITUTIONS[which].items():
        assert old in code, f"README block no longer holds {old!r}: update the test's substitutions"
        code = code.replace(old, new)
    return code


def _run_block(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    exec(compile(code, "README.md (From Python)", "exec"), namespace)
    return namespace


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("own_conv_vae", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``runs/demo``: a tiny run trained by the CLI."""
    root = tmp_path_factory.mktemp("from_python")
    argv = ["fit", "--data", "digits", "--out", str(root / "runs" / "demo"), "--epochs", "1", "--latent-dim", "2",
            "--hidden", "16", "--limit", "200", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return root


def test_readme_run_block_runs_as_written(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Open, evaluate, diagnose, report and sample the run at runs/demo (k and limit 1000 -> 20)."""
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    ns = _run_block(_substituted(_block("ek.Run.open("), "run"), {"__name__": "__readme__"})
    lines = capsys.readouterr().out.splitlines()
    run_dir = Path("runs/demo")
    assert lines[0] == "digits 1 epochs"
    assert lines[1].startswith("ELBO ") and "log p(x)" in lines[1]
    assert lines[-1] == str(run_dir / "report.html")
    assert ns["e"].n == 20 and ns["e"].k == 20 and ns["d"].n == 20 and ns["d"].k == 20
    assert tuple(ns["x"].shape) == (16, 64)
    for name in ("evaluation.json", "diagnostics.json", "report.html"):
        assert (run_dir / name).is_file(), name
    # The report drew on the diagnosis the block made (diagnostics.json), not on a fresh one at another k.
    saved = json.loads((run_dir / "diagnostics.json").read_text())
    assert saved["k"] == 20 and saved["n"] == 20 and saved["elbo"] == ns["d"].elbo


def test_readme_own_model_block_is_the_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README shows the example's diagnosing and reporting lines, its flags written as their defaults."""
    example = EXAMPLE.read_text(encoding="utf-8")
    for line in _block("dx.diagnose(model").splitlines():
        if line.startswith(("import ", "from ", "#")) or not line.strip():
            continue  # the example imports at its top; a comment line tells the README's reader what is given
        for old, new in _EXAMPLE_FLAGS.items():
            line = line.replace(old, new)
        assert line in example, f"README line not in examples/own_conv_vae.py: {line}"
    parser_defaults = {"--steps": "1500", "--limit": "100", "--k": "200", "--refine-steps": "100"}
    for flag, default in parser_defaults.items():
        assert re.search(rf'"{flag}", type=int, default={default}\b', example), flag


# After 5 steps q is far from the posterior, so the gaps' reference warns of its k-hat: expected here.
@pytest.mark.filterwarnings("ignore:gaps \\(the reference log p\\(x\\)\\)")
def test_readme_own_model_block_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The bring-your-own-model lines on the example's conv VAE after 5 steps of its own loop (20 test images,
    k 200 -> 20, refine_steps 100 -> 10): the figures print and the report is written where the block says."""
    example = _example()
    data = ek.data.load("binarized-mnist")
    model = example.ConvVAE(latent_dim=16).float()  # the data are float32; the tests' default dtype is float64
    history = example.train(model, data.train[:500], steps=5)
    assert len(history) == 5
    model.eval()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    ns = _run_block(_substituted(_block("dx.diagnose(model"), "own"), {"model": model, "data": data})
    out = capsys.readouterr().out.splitlines()
    assert ns["d"].n == 20 and ns["d"].k == 20 and ns["d"].latent_dim == 16
    assert out[0].startswith("ELBO") and out[-1].endswith("conv_vae_report.html")
    page = (tmp_path / "conv_vae_report.html").read_text(encoding="utf-8")
    assert "<html" in page.lower() and "data:image/png;base64," in page
    assert "<script" not in page.lower()


def test_run_diagnose_gives_the_figures_of_the_cli(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``Run.open(path).diagnose(...)`` and ``elbokit diagnose PATH --json`` with the same k, limit and seed give
    the same diagnosis, every figure (all but the time taken) equal."""
    path = workdir / "runs" / "demo"
    d = ek.Run.open(path).diagnose(k=20, limit=20, seed=3, save=False)
    capsys.readouterr()
    assert main(["diagnose", str(path), "--k", "20", "--limit", "20", "--seed", "3", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    python = json.loads(json.dumps(d.to_dict()))  # tuples -> lists, as the CLI's JSON has them
    cli.pop("seconds")
    python.pop("seconds")
    assert python == cli
