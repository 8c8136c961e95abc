"""Examples run as scripts (tiny settings), and the PPCA example reaches the closed-form optimum."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from conftest import Z

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    "argv",
    [["quickstart.py"], ["train_ppca.py", "--steps", "5"], ["gradient_variance.py", "--repeats", "3"],
     ["train_vae.py", "--epochs", "1"], ["beta_disentanglement.py", "--epochs", "1", "--limit", "256"],
     ["own_conv_vae.py", "--steps", "5", "--limit", "50", "--k", "20", "--refine-steps", "10"],
     ["pyro_vae.py", "--steps", "5", "--train", "500", "--limit", "20", "--k", "20", "--refine-steps", "10"]],
    ids=lambda argv: argv[0],
)
def test_example_runs(argv: list[str], tmp_path: Path) -> None:
    result = subprocess.run(  # in a fresh folder: what an example writes (own_conv_vae.py's report) lands there
        [sys.executable, str(EXAMPLES / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120, check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("gradient", ["reparam", "stl"])
def test_elbo_training_reaches_the_ppca_maximum_likelihood(gradient: str) -> None:
    """With the exact posterior inside the guide's family, maximising the ELBO by stochastic gradients reaches
    the closed-form PPCA maximum of log p(x) (Tipping & Bishop 1999) and closes the ELBO's gap. At 1,000 steps
    the distance to the optimum was 3e-5 (reparam) and 2e-4 (stl) nats per point, from 6.8 at the start;
    the tolerance, 2e-3, is ten times the larger."""
    r = _load("train_ppca").train(steps=1000, gradient=gradient, samples=1)
    assert r["trained_log_px"] <= r["ml_log_px"] + 1e-9  # the closed form is the maximum
    assert r["ml_log_px"] - r["trained_log_px"] < 2e-3
    assert 0 <= r["trained_log_px"] - r["trained_exact_elbo"] < 2e-3
    assert abs(r["trained_noise_scale"] - r["ml_noise_scale"]) < 2e-3


def test_a_trained_vae_approaches_but_does_not_beat_the_true_density() -> None:
    """On data from a known linear-Gaussian model, E_data[log p_true(x) - log p_VAE(x)] = KL(p_true || p_VAE) >= 0.
    The paired per-point difference (1,000 test points) must be >= 0 within Z standard errors (over points) and,
    after 15 epochs, small: measured 0.30 ± 0.03 nats with the seed below (0.14 after 30 epochs); the bound
    asserted, 0.5, is loose for training noise but far below an untrained model's gap (tens of nats). The
    importance-sampled log p(x) also sits above the ELBO."""
    r = _load("train_vae").train(epochs=15, anneal="linear:3ep", seed=0)
    assert r["final_beta"] == 1.0
    assert r["gap_to_truth"] > -Z * r["gap_to_truth_stderr"]
    assert r["gap_to_truth"] < 0.5
    assert r["log_px"] > r["elbo"]
