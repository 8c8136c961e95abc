"""Runs on data with known factors: a convolutional VAE on dsprites-small fitted, resumed, evaluated, reported
and swept over β from the command line, with the disentanglement scores in sweep.json and the report; and the
one-call summary ``dx.disentanglement`` against codes whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import elbokit as ek
from elbokit import diagnostics as dx
from elbokit.cli import main
from elbokit.data import known_factors, load_factors
from elbokit.runs import read_sweep

SMALL = ["--data", "dsprites-small", "--arch", "conv", "--limit", "512", "--latent-dim", "4", "--hidden", "32",
         "--batch-size", "64", "--quiet", "--device", "cpu"]  # fmt: skip


def test_summary_recovers_the_latent_of_each_factor() -> None:
    factors, names = known_factors("dsprites-small", "test")  # type: ignore[misc]
    order = [3, 0, 4, 1, 2]  # z_j = factor order[j], plus a little noise
    gen = torch.Generator().manual_seed(0)
    z = factors[:, order].double() + 0.05 * torch.randn(factors.shape, generator=gen, dtype=torch.float64)
    r = dx.disentanglement(z, factors, names=names)
    assert r.factor_names == ("shape", "scale", "orientation", "x", "y")
    assert r.latent_for_factor == tuple(order.index(k) for k in range(5))
    assert r.mig > 0.9 and r.dci_disentanglement > 0.95 and r.dci_completeness > 0.95 and r.factor_vae == 1.0
    assert r.n == factors.shape[0]
    with pytest.raises(ValueError, match="names must be 5 strings"):
        dx.disentanglement(z, factors, names=names[:4])
    assert known_factors("mnist", "test") is None


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "run"
    assert main(["fit", *SMALL, "--epochs", "2", "--beta", "4", "--out", str(out)]) == 0
    # Diagnosed cheaply here, so that `elbokit report` below uses this diagnosis (a conv decoder's per-point
    # refinement at the defaults, 300 steps on 1000 points, is minutes of CPU).
    assert main(["report", str(out), "--k", "10", "--limit", "10", "--refine-steps", "10", "--device", "cpu"]) == 0
    saved = json.loads((out / "diagnostics.json").read_text())
    assert (saved["n"], saved["gaps"]["refine_steps"]) == (10, 10)
    return out


def test_a_resumed_conv_run_ends_where_an_uninterrupted_one_does(conv_run: Path, tmp_path: Path) -> None:
    half = tmp_path / "half"
    assert main(["fit", *SMALL, "--epochs", "1", "--beta", "4", "--out", str(half)]) == 0
    assert main(["fit", "--out", str(half), "--resume", "--epochs", "2", "--quiet"]) == 0
    whole, resumed = load_file(conv_run / "checkpoint.safetensors"), load_file(half / "checkpoint.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    config = json.loads((conv_run / "config.json").read_text())
    assert (config["arch"], config["hidden"], config["activation"]) == ("conv", [32], "relu")


def test_run_api_scores_the_codes_and_the_report_shows_them(conv_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = ek.Run.open(conv_run)
    r = run.disentanglement(limit=300)
    assert r is not None and r.n == 300 and len(r.latent_for_factor) == 5
    assert 0.0 <= r.mig <= 1.0 and 0.0 <= r.dci_disentanglement <= 1.0 and 0.0 <= r.factor_vae <= 1.0
    codes = run.model.encode(run.data.test[:300])
    expected = dx.disentanglement(codes, load_factors("dsprites-small").test[:300])
    assert (r.mig, r.dci_disentanglement, r.factor_vae) == (expected.mig, expected.dci_disentanglement,
                                                            expected.factor_vae)  # fmt: skip
    assert main(["evaluate", str(conv_run), "--k", "10", "--limit", "10", "--proposal", "encoder",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert main(["report", str(conv_run), "--device", "cpu"]) == 0
    page = (conv_run / "report.html").read_text()
    section = page[page.index('<section id="disentanglement">') :].split("</section>")[0]
    assert ">orientation</td>" in section and "MIG gap" in section
    assert "data:image/png;base64," in section and "Not drawn" not in section  # the traversal per factor
    assert "Disentanglement against β" not in page  # no sweep yet


def test_the_sweep_reports_disentanglement_beside_rate_and_distortion(
    conv_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    argv = ["sweep", str(conv_run), "--beta", "1,8", "--epochs", "1", "--k", "10", "--limit", "20",
            "--factor-points", "400"]  # fmt: skip
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[6:] == ["MIG", "DCI", "D", "DCI", "C", "DCI", "I", "FVAE"] and len(table) == 3
    points = read_sweep(conv_run)
    assert points is not None and [p.beta for p in points] == [1.0, 8.0]
    for p in points:
        assert p.mig is not None and p.dci_disentanglement is not None and p.factor_vae is not None
        run = ek.Run.open(p.path)  # type: ignore[arg-type]
        r = run.disentanglement(limit=400, seed=0)
        assert r is not None and (r.mig, r.dci_completeness) == (p.mig, p.dci_completeness)
    assert main(["report", str(conv_run), "--device", "cpu"]) == 0
    page = (conv_run / "report.html").read_text()
    assert "Disentanglement against β" in page


def test_an_old_sweep_file_without_scores_still_reads(tmp_path: Path) -> None:
    row = {"beta": 1.0, "rate": 2.0, "distortion": 3.0, "elbo": -5.0, "log_px": -4.5, "log_px_stderr": 0.1,
           "rate_stderr": 0.0, "distortion_stderr": 0.2, "min_ess": 10.0, "path": None}  # fmt: skip
    (tmp_path / "sweep.json").write_text(json.dumps([row]))
    (point,) = read_sweep(tmp_path)  # type: ignore[misc]
    assert point.mig is None and point.log_px == -4.5
    (tmp_path / "sweep.json").write_text(json.dumps([row | {"mig": "high"}]))
    with pytest.raises(ValueError, match="not a sweep written by"):
        read_sweep(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps([row | {"mig": 0.3, "extra": 1.0}]))
    with pytest.raises(ValueError, match="not a sweep written by"):
        read_sweep(tmp_path)


def test_the_issue_commands_on_the_64_pixel_sprites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`elbokit fit --data dsprites --arch conv --beta 4` and its sweep, on the 64×64 set (cut to 128 training
    images and one epoch: the full run is minutes of CPU per epoch)."""
    out = tmp_path / "sprites"
    argv = ["fit", "--data", "dsprites", "--arch", "conv", "--beta", "4", "--limit", "128", "--epochs", "1",
            "--latent-dim", "10", "--quiet", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["arch"], config["hidden"], config["beta"]) == ("conv", [256, 256], 4.0)
    capsys.readouterr()
    assert main(["sweep", str(out), "--beta", "1,4", "--k", "5", "--limit", "10", "--factor-points", "500"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    points = read_sweep(out)
    assert points is not None and all(p.mig is not None and 0 <= p.mig <= 1 for p in points)
