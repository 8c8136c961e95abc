"""The command line and the README quick start, run as a user would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from elbokit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _readme_blocks() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    printed = re.search(r"It prints[^\n]*\n\n```\n(.*?)```", text, re.S)
    assert code is not None and printed is not None, "README lost its quick start or its printed output"
    return code.group(1), printed.group(1)


def test_readme_quick_start_runs_as_written() -> None:
    """The README's quick start runs unchanged; its exact lines match what the README says it prints, and
    the importance-sampled log p(x) lies within 4 of its standard errors of the exact value."""
    code, printed = _readme_blocks()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == printed.splitlines()[:2]
    values = {line[:18].strip(): line[18:] for line in lines}
    exact = float(values["exact log p(x)"])
    estimate, stderr = (float(v) for v in values["IS log p(x)"].split("±"))
    assert abs(estimate - exact) < 4 * stderr
    assert float(values["exact ELBO(q)"]) < exact


def test_quickstart_example_matches_readme() -> None:
    code, _ = _readme_blocks()
    example = (ROOT / "examples" / "quickstart.py").read_text()
    assert code.strip() in example


def test_linear_gaussian_job_prints_bounds_below_the_exact_value(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo job: exit 0, and the exact ELBO sits below the exact log p(x) with the IS estimate near it."""
    assert main(["linear-gaussian", "--data-dim", "6", "--latent-dim", "2", "--n", "10", "--k", "1,10"]) == 0
    out = capsys.readouterr().out
    rows = {line[:28].strip(): line[28:].split() for line in out.splitlines()[3:]}
    exact = float(rows["exact log p(x)"][0])
    assert float(rows["exact ELBO(q)"][0]) < exact
    is_row = next(v for name, v in rows.items() if name.startswith("log p(x), IS"))
    assert abs(float(is_row[0]) - exact) < 4 * float(is_row[1])


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["linear-gaussian", "--k", "0"], "--k"),
        (["linear-gaussian", "--n", "x"], "--n"),
        (["linear-gaussian", "--latent-dim", "9", "--data-dim", "4"], "--latent-dim"),
        (["no-such-command"], "invalid choice"),
        ([], "command"),
    ],
)
def test_bad_usage_exits_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("elbokit: error:") and needle in err
    assert "Traceback" not in err


def test_console_script_exit_status() -> None:
    """The installed entry point (python -m elbokit.cli) keeps status 2 and prints no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "elbokit.cli", "linear-gaussian", "--k", "-3"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--k" in result.stderr


def test_readme_training_snippet_runs_with_one_epoch() -> None:
    """The README's library-API training snippet, with ``epochs=10`` cut to 1 epoch on 2,000 points."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    code = next(block for block in blocks if "ek.fit(" in block)
    assert "epochs=10" in code
    code = code.replace("epochs=10", "epochs=1, limit=2000, quiet=True, device='cpu'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    # nats per image: finite and plausible (an untrained model with the data-mean output bias gives about -200).
    assert -250 < float(result.stdout.strip().splitlines()[-1]) < -80


def test_readme_plots_snippet_draws_on_the_trained_model(tmp_path: Path) -> None:
    """The README's figure snippet, run after its training snippet (1 epoch on 2,000 points, fewer refinement and
    importance samples): it writes an SVG and a PNG."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    train = next(block for block in blocks if "ek.fit(" in block)
    train = train.replace("epochs=10", "epochs=1, limit=2000, quiet=True, device='cpu'")
    draw = next(block for block in blocks if "plots.gap_waterfall" in block)
    assert "k=1000" in draw
    draw = draw.replace("data.test[:100]", "data.test[:20]").replace("k=1000", "k=100, steps=20, samples=20")
    result = subprocess.run([sys.executable, "-c", train + draw], capture_output=True, text=True, timeout=300,
                            check=False, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gaps.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    assert (tmp_path / "kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
