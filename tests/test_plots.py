"""The figures of elbokit.report.plots, each drawn from real results: a small VAE trained on the 8x8 digits and
the diagnostics computed on it. Each test checks that the figure shows the data it was given (line and bar data,
image pixels, annotations), that it is labelled, and that it renders to PNG."""

from __future__ import annotations

import ast
import io
import math
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection, PolyCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import elbokit as ek
from elbokit import diagnostics as dx
from elbokit.models import VAE
from elbokit.report import plots
from elbokit.report.images import PNG_SIGNATURE, image_grid

SRC = Path(__file__).resolve().parents[1] / "src" / "elbokit"
SHAPE = (8, 8)


class Trained(NamedTuple):
    model: VAE
    result: ek.FitResult
    x: torch.Tensor  # (100, 64) float32 test digits
    labels: torch.Tensor  # (100,) int64


def _config(**kw: Any) -> ek.RunConfig:
    values: dict[str, Any] = {
        "data": "digits", "latent_dim": 4, "hidden": (32,), "likelihood": "continuous-bernoulli", "epochs": 3,
        "batch_size": 50, "lr": 3e-3, "limit": 600, "seed": 0, "quiet": True, "device": "cpu",
    }  # fmt: skip
    values.update(kw)
    return ek.RunConfig(**values)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only fight on shared cores


@pytest.fixture(scope="module")
def digits() -> ek.data.Dataset:
    return ek.data.load("digits", seed=0)


@pytest.fixture(scope="module")
def trained(digits: ek.data.Dataset) -> Iterator[Trained]:
    """A 64-32-4 VAE (float32, continuous Bernoulli) trained for 3 epochs on 600 digits, once per module."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = VAE.mlp(64, 4, hidden=(32,), likelihood="continuous-bernoulli").float()
        model.init_output_bias(digits.train[:600].mean(0))
        result = ek.fit(model, model.encoder, digits, _config())
    model.eval()
    assert digits.test_labels is not None
    yield Trained(model, result, digits.test[:100], digits.test_labels[:100])


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    return data


def _axes(fig: Figure, title: str) -> Any:
    (ax,) = [a for a in fig.axes if title in a.get_title()]
    return ax


def _legend_texts(ax: Any) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _image(ax: Any) -> np.ndarray:
    (image,) = ax.get_images()
    return np.asarray(image.get_array())


# -- the one matplotlib import -----------------------------------------------------------------------------------


def test_matplotlib_is_imported_only_by_the_report_plots_package_and_never_pyplot() -> None:
    importers = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            found = [n for n in names if n == "matplotlib" or n.startswith("matplotlib.")]
            if found:
                importers.setdefault(path.relative_to(SRC).as_posix(), set()).update(found)
    assert importers and all(path.startswith("report/plots/") for path in importers), sorted(importers)
    assert not any("pyplot" in name for names in importers.values() for name in names)


def test_the_core_imports_without_matplotlib() -> None:
    code = (
        "import sys, elbokit, elbokit.diagnostics, elbokit.train, elbokit.report.images\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- training ----------------------------------------------------------------------------------------------------


def test_training_curves_show_the_history(trained: Trained) -> None:
    history = trained.result.history
    fig = plots.training_curves(trained.result)
    assert len(fig.axes) == 4  # three panels, the middle one with a second y axis for the KL
    epochs = [row["epoch"] for row in history]

    def column(key: str) -> list[float]:
        return [row[key] for row in history]

    bound = _axes(fig, "bound")
    assert [list(line.get_ydata()) for line in bound.get_lines()] == [column("train_bound"), column("validation_bound")]
    assert all(list(line.get_xdata()) == epochs for line in bound.get_lines())
    assert _legend_texts(bound) == ["train (objective)", "validation"]
    assert "nats per data point" in bound.get_ylabel() and bound.get_xlabel() == "epoch"

    terms = _axes(fig, "reconstruction and KL")
    (kl_axis,) = [a for a in fig.axes if a is not terms and a.get_shared_x_axes().joined(a, terms)]
    assert [list(line.get_ydata()) for line in terms.get_lines()] == [
        column("train_reconstruction"), column("validation_reconstruction"),
    ]  # fmt: skip
    assert [list(line.get_ydata()) for line in kl_axis.get_lines()] == [column("train_kl"), column("validation_kl")]
    assert [line.get_linestyle() for line in kl_axis.get_lines()] == ["-", "--"]  # train solid, validation dashed
    assert "E_q log p(x|z)" in terms.get_ylabel() and "KL" in kl_axis.get_ylabel()
    assert all("nats per data point" in a.get_ylabel() for a in (terms, kl_axis))
    assert len(_legend_texts(terms)) == 4

    beta = _axes(fig, "β")
    assert [list(line.get_ydata()) for line in beta.get_lines()] == [column("beta")]
    assert "Training curves" in fig.get_suptitle()
    _png(fig)


def test_training_curves_without_a_validation_split_and_bad_histories(trained: Trained) -> None:
    rows = [{k: v for k, v in row.items() if not k.startswith("validation")} for row in trained.result.history]
    rows[0]["validation_bound"] = None  # absent or None: both mean no validation split
    fig = plots.training_curves(rows)
    assert len(_axes(fig, "bound").get_lines()) == 1
    assert len(_axes(fig, "reconstruction and KL").get_lines()) == 1
    _png(fig)
    with pytest.raises(ValueError, match="at least one epoch"):
        plots.training_curves([])
    with pytest.raises(ValueError, match="at least one epoch"):
        plots.training_curves(ek.FitResult(epochs=0, steps=0))
    with pytest.raises(ValueError, match="lacks train_kl"):
        plots.training_curves([{k: v for k, v in rows[0].items() if k != "train_kl"}])


# -- images ------------------------------------------------------------------------------------------------------


def test_sample_grid_shows_the_images_tiled(trained: Trained) -> None:
    images = trained.model.sample(12, generator=torch.Generator().manual_seed(0))  # (12, 64)
    fig = plots.sample_grid(images, SHAPE)
    (ax,) = fig.axes
    shown = _image(ax)
    assert shown.shape == (2 * 9 + 1, 8 * 9 + 1)  # 2 rows of 8 cells of 8 x 8 pixels, 1-pixel borders
    np.testing.assert_allclose(shown, image_grid(images, image_shape=SHAPE, columns=8).double().numpy())
    assert ax.get_title() == "Samples from p(z)" and not ax.axison
    _png(fig)
    fig = plots.sample_grid(images, SHAPE, columns=4, title="E[x|z]")
    assert _image(fig.axes[0]).shape == (3 * 9 + 1, 4 * 9 + 1) and fig.axes[0].get_title() == "E[x|z]"
    with pytest.raises(ValueError, match="image_shape"):
        plots.sample_grid(images, (7, 8))


def test_reconstructions_put_data_above_their_reconstructions(trained: Trained) -> None:
    x = trained.x[:16]
    reconstructed = trained.model.reconstruct(x)
    fig = plots.reconstructions(x, reconstructed, SHAPE)
    data, recon = fig.axes
    assert (data.get_title(), recon.get_title()) == ("data", "reconstruction")
    assert data.get_position().y0 > recon.get_position().y0
    for ax, images in ((data, x), (recon, reconstructed)):
        np.testing.assert_allclose(_image(ax), image_grid(images, image_shape=SHAPE, columns=8).double().numpy())
        assert _image(ax).shape == (19, 73)
    _png(fig)
    with pytest.raises(ValueError, match="same shape"):
        plots.reconstructions(x, reconstructed[:8], SHAPE)


def _cell(grid: np.ndarray, row: int, column: int, padding: int) -> np.ndarray:
    top, left = padding + row * (8 + padding), padding + column * (8 + padding)
    return grid[top : top + 8, left : left + 8]


def test_latent_traversals_vary_one_latent_per_row(trained: Trained) -> None:
    model = trained.model
    fig = plots.latent_traversals(model, SHAPE)
    (ax,) = fig.axes
    grid = _image(ax)
    values = (-3.0, -2.25, -1.5, -0.75, 0.0, 0.75, 1.5, 2.25, 3.0)
    assert grid.shape == (4 * 9 + 1, 9 * 9 + 1)  # d = 4 rows (min(8, d)), nine values
    assert [t.get_text() for t in ax.get_yticklabels()] == ["$z_{0}$", "$z_{1}$", "$z_{2}$", "$z_{3}$"]
    assert [float(t.get_text()) for t in ax.get_xticklabels()] == list(values)
    for row, column in ((0, 0), (2, 8), (3, 5)):
        z = torch.zeros(1, 4, dtype=torch.float32)
        z[0, row] = values[column]
        np.testing.assert_allclose(_cell(grid, row, column, 1), model.decode(z).reshape(8, 8), atol=3e-5)
    assert "z_j" in ax.get_xlabel()
    _png(fig)

    fig = plots.latent_traversals(model, SHAPE, dims=[3, 1], values=(-1.0, 1.0))
    grid = _image(fig.axes[0])
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1)
    one = torch.tensor([[0, 0, 0, 1.0]], dtype=torch.float32)
    np.testing.assert_allclose(_cell(grid, 0, 1, 1), model.decode(one).reshape(8, 8), atol=3e-5)
    for dims in ([4], [0, 0], []):
        with pytest.raises(ValueError, match="dims"):
            plots.latent_traversals(model, SHAPE, dims=dims)


def test_latent_manifold_decodes_the_prior_quantiles(trained: Trained) -> None:
    model = trained.model
    fig = plots.latent_manifold(model, SHAPE, dims=(1, 3), n=5)
    (ax,) = fig.axes
    grid = _image(ax)
    assert grid.shape == (5 * 8, 5 * 8)  # no padding between cells
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 5))
    for row, column in ((0, 0), (4, 2), (1, 4)):
        z = torch.zeros(1, 4, dtype=torch.float32)
        z[0, 1], z[0, 3] = quantiles[column], quantiles[4 - row]  # z_3 falls down the rows
        np.testing.assert_allclose(_cell(grid, row, column, 0), model.decode(z).reshape(8, 8), atol=3e-5)
    assert "z_{1}" in ax.get_xlabel() and "z_{3}" in ax.get_ylabel()
    assert float(ax.get_xticklabels()[0].get_text()) == pytest.approx(-1.64, abs=0.01)
    assert float(ax.get_yticklabels()[0].get_text()) == pytest.approx(1.64, abs=0.01)  # the top row
    _png(fig)
    assert _image(plots.latent_manifold(model, SHAPE).axes[0]).shape == (15 * 8, 15 * 8)
    with pytest.raises(ValueError, match="distinct"):
        plots.latent_manifold(model, SHAPE, dims=(2, 2))


# -- latent space ------------------------------------------------------------------------------------------------


def test_latent_scatter_places_each_point_at_its_encoder_mean(trained: Trained) -> None:
    model, x, labels = trained.model, trained.x, trained.labels
    mean = model.encoder(x).mean.detach().double().numpy()  # (100, 4)
    fig = plots.latent_scatter(model, x, labels, dims=(2, 0))
    (ax,) = fig.axes
    collections = [c for c in ax.collections if isinstance(c, PathCollection)]
    classes = labels.unique().tolist()
    assert len(collections) == len(classes)  # one series per class, in a legend
    for c, label in zip(collections, classes, strict=True):
        np.testing.assert_allclose(c.get_offsets(), mean[(labels == label).numpy()][:, [2, 0]], rtol=1e-6)
    assert _legend_texts(ax)[1:] == [str(label) for label in classes]
    assert "z_{2}" in ax.get_xlabel() and "z_{0}" in ax.get_ylabel()
    _png(fig)

    fig = plots.latent_scatter(model, x)  # no labels: one colour
    (ax,) = fig.axes
    (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(points.get_offsets(), mean[:, [0, 1]], rtol=1e-6)
    fig = plots.latent_scatter(model, x, labels.double())  # continuous labels: a colour bar
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "label"
    _png(fig)
    fig = plots.latent_scatter(model, x, -torch.rand(100, dtype=torch.float64), colour_label="log p(x)")
    assert fig.axes[1].get_ylabel() == "log p(x)"  # any value per point, named


def test_latent_scatter_refuses_bad_input(trained: Trained) -> None:
    with pytest.raises(ValueError, match="d >= 2"):
        plots.latent_scatter(VAE.mlp(64, 1, hidden=(8,)).float(), trained.x)
    with pytest.raises(ValueError, match="dims"):
        plots.latent_scatter(trained.model, trained.x, dims=(0, 4))
    with pytest.raises(ValueError, match="labels must have shape"):
        plots.latent_scatter(trained.model, trained.x, trained.labels[:10])


def test_kl_per_dim_bars_are_the_kls_coloured_by_activity(trained: Trained) -> None:
    model, x = trained.model, trained.x
    activity = dx.collapse(model, model.encoder, x).activity
    threshold = float(activity.median())  # splits the units: some active, some not
    collapse = dx.collapse(model, model.encoder, x, threshold=threshold)
    fig = plots.kl_per_dim(collapse)
    (ax,) = fig.axes
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [b.get_x() + b.get_width() / 2 for b in bars] == pytest.approx([0, 1, 2, 3])
    np.testing.assert_allclose([b.get_height() for b in bars], collapse.kl_per_dim.double().numpy())
    colours = [b.get_facecolor() for b in bars]
    active = (activity > threshold).tolist()
    assert 0 < sum(active) < 4
    (on,) = {c for c, a in zip(colours, active, strict=True) if a}
    (off,) = {c for c, a in zip(colours, active, strict=True) if not a}
    assert on != off
    texts = _legend_texts(ax)
    assert texts[0].startswith("active (") and "Cov" in texts[0] and "E_q[z_j]" in texts[0] and texts[1] == "inactive"
    assert f"{collapse.active_units} of 4 active" in ax.get_title()
    assert "nats per data point" in ax.get_ylabel() and "latent dimension" in ax.get_xlabel()
    _png(fig)


# -- the bound and the evidence ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaps(trained: Trained) -> dx.Gaps:
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(1)
        warnings.simplefilter("ignore")  # Pareto k-hat warnings of a barely trained model
        return dx.gaps(trained.model, trained.model.encoder, trained.x[:20], k=200, steps=30, samples=50)


def _nats(text: str) -> float:
    return float(text.replace("−", "-").replace("±", ""))


def test_gap_waterfall_steps_down_by_each_gap(gaps: dx.Gaps) -> None:
    s = gaps.summary()
    fig = plots.gap_waterfall(gaps)
    (ax,) = fig.axes
    approximation, amortization = (p for p in ax.patches if isinstance(p, Rectangle))
    assert approximation.get_y() == pytest.approx(s.log_px)  # from log p(x) ...
    assert approximation.get_height() == pytest.approx(-s.approximation)  # ... down to L[q*]
    assert amortization.get_y() == pytest.approx(s.elbo_optimal)
    assert amortization.get_y() + amortization.get_height() == pytest.approx(s.elbo_amortized)
    notes = [_nats(t.get_text()) for t in ax.texts]
    assert notes == pytest.approx([s.log_px, -s.approximation, -s.amortization, s.elbo_sample_sd], abs=0.006)
    noise = [c for c in ax.containers if isinstance(c, ErrorbarContainer)][-1]
    (marker, _caps, (bars,)) = noise.lines[0], noise.lines[1], noise.lines[2]
    assert list(marker.get_xdata()) == [3] and list(marker.get_ydata()) == pytest.approx([s.elbo_amortized])
    ((_, low), (_, high)) = bars.get_segments()[0]
    assert (low, high) == pytest.approx((s.elbo_amortized - s.elbo_sample_sd, s.elbo_amortized + s.elbo_sample_sd))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[-1] == "ELBO sample noise" and "hat p(x)" in labels[0]
    assert ax.get_ylabel() == "nats per data point"
    assert len(_legend_texts(ax)) == 4
    _png(fig)
    same = plots.gap_waterfall(s)  # a GapSummary draws the same figure
    assert [t.get_text() for t in same.axes[0].texts] == [t.get_text() for t in ax.texts]


def test_iwae_curve_with_error_bars_and_reference_lines(trained: Trained) -> None:
    model, x = trained.model, trained.x[:20]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(2)
        warnings.simplefilter("ignore")
        points = dx.iwae_curve(model, model.encoder, x, ks=(1, 4, 16), repeats=3)
        evidence = ek.log_marginal(model, model.encoder, x, k=200)
        ais = dx.ais(model, x, steps=20, chains=4, leapfrog=2)
    log_px = (float(evidence.value.mean()), float(evidence.stderr.square().sum().sqrt()) / 20)
    ais_px = (float(ais.value.mean()), float(ais.stderr.square().sum().sqrt()) / 20)
    fig = plots.iwae_curve(points[::-1], log_px=log_px, ais=ais_px)  # any order: drawn sorted by k
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "nats per data point" and "k" in ax.get_xlabel()
    (curve,) = ax.containers
    line, _caps, (bars,) = curve.lines
    assert list(line.get_xdata()) == [1, 4, 16]
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [p.value for p in points])
    np.testing.assert_allclose(
        [high - low for (_, low), (_, high) in bars.get_segments()], [4 * p.stderr for p in points]
    )
    references = [list(h.get_ydata()) for h in ax.get_lines() if h.get_linestyle() == "--"]
    assert references == [[log_px[0]] * 2, [ais_px[0]] * 2]
    texts = _legend_texts(ax)
    assert len(texts) == 3 and all("±2 se" in t for t in texts) and "AIS" in texts[1]
    refined = (log_px[0] + 0.5, 0.01)  # the gaps' reference: a third level
    (with_reference,) = plots.iwae_curve(points, log_px=log_px, ais=ais_px, reference=refined).axes
    levels = [list(h.get_ydata()) for h in with_reference.get_lines() if h.get_linestyle() == "--"]
    assert levels == [[log_px[0]] * 2, [ais_px[0]] * 2, [refined[0]] * 2]
    assert "refined proposal" in _legend_texts(with_reference)[2]
    bands = [c for c in ax.patches]
    assert len(bands) == 2
    _png(fig)
    fig = plots.iwae_curve(points[:1])  # one point, no references
    assert "--" not in [h.get_linestyle() for h in fig.axes[0].get_lines()] and len(_legend_texts(fig.axes[0])) == 1
    _png(fig)
    with pytest.raises(ValueError, match="at least one CurvePoint"):
        plots.iwae_curve([])


@pytest.fixture(scope="module")
def sweep_points() -> list[dx.SweepPoint]:
    """Two small models of a β sweep on the digits (300 training points, 2 epochs each), evaluated on 50."""
    config = _config(latent_dim=2, hidden=(16,), epochs=2, limit=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dx.sweep(config, (0.5, 2.0), None, k=50, limit=50, samples=2)


def test_rate_distortion_of_a_sweep(sweep_points: list[dx.SweepPoint]) -> None:
    fig = plots.rate_distortion(sweep_points)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["β=0.5", "β=2"]
    elbo_lines = [h for h in ax.get_lines() if h.get_linestyle() == "--"]
    assert len(elbo_lines) == 2
    for line, p in zip(elbo_lines, sweep_points, strict=True):
        r = np.asarray(line.get_xdata())
        np.testing.assert_allclose(r + np.asarray(line.get_ydata()), -p.elbo)  # R + D = -ELBO
        assert r[0] <= p.rate <= r[-1]
    markers = [c.lines[0] for c in ax.containers]
    assert [(m.get_xdata()[0], m.get_ydata()[0]) for m in markers] == [(p.rate, p.distortion) for p in sweep_points]
    (evidence,) = [h for h in ax.get_lines() if h.get_linestyle() == ":"]
    best = max(p.log_px for p in sweep_points)
    np.testing.assert_allclose(np.asarray(evidence.get_xdata()) + np.asarray(evidence.get_ydata()), -best)
    assert "rate" in ax.get_xlabel() and "distortion" in ax.get_ylabel()
    assert "nats per data point" in ax.get_xlabel() and "nats per data point" in ax.get_ylabel()
    assert len(_legend_texts(ax)) == 3
    _png(fig)


def test_rate_distortion_of_one_rate_point(trained: Trained) -> None:
    model, x = trained.model, trained.x
    point = dx.rate_distortion(model, model.encoder, x, samples=4)
    fig = plots.rate_distortion([point])
    (ax,) = fig.axes
    styles = [h.get_linestyle() for h in ax.get_lines()]
    assert styles.count("--") == 1 and ":" not in styles and len(ax.texts) == 0  # an ELBO line; no log p(x), β
    (marker,) = [c.lines[0] for c in ax.containers]
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (point.rate, point.distortion)
    lo, hi = ax.get_xlim()
    assert lo == 0 and hi > point.rate
    _png(fig)
    fig = plots.rate_distortion([point], log_px=point.elbo + 1.0)
    (evidence,) = [h for h in fig.axes[0].get_lines() if h.get_linestyle() == ":"]
    np.testing.assert_allclose(np.asarray(evidence.get_xdata()) + np.asarray(evidence.get_ydata()), -point.elbo - 1.0)
    with pytest.raises(ValueError, match="at least one"):
        plots.rate_distortion([])


def test_rate_distortion_refuses_a_mix(trained: Trained, sweep_points: list[dx.SweepPoint]) -> None:
    point = dx.rate_distortion(trained.model, trained.model.encoder, trained.x)
    with pytest.raises(ValueError, match="all SweepPoints or all RatePoints"):
        plots.rate_distortion([sweep_points[0], point])  # type: ignore[arg-type]


def test_mode_seeking_shows_the_target_and_both_fits() -> None:
    result = dx.mode_seeking(steps=200, grid_size=101)
    fig = plots.mode_seeking(result)
    (ax,) = fig.axes
    (filled,) = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert filled.get_label().startswith("target")
    reverse, forward, *modes = ax.get_lines()
    np.testing.assert_allclose(reverse.get_ydata(), result.reverse_log_density.exp().numpy())
    np.testing.assert_allclose(forward.get_ydata(), result.forward_log_density.exp().numpy())
    np.testing.assert_allclose(reverse.get_xdata(), result.grid.numpy())
    assert [m.get_xdata()[0] for m in modes] == list(result.modes)
    texts = _legend_texts(ax)
    assert "mode-seeking" in texts[1] and "reverse" in texts[1]
    assert "mass-covering" in texts[2] and "forward" in texts[2]
    assert ax.get_xlabel() == "z" and "density" in ax.get_ylabel()
    assert not any(isinstance(c, LineCollection) for c in ax.collections)
    assert math.isclose(ax.get_ylim()[0], 0.0)
    _png(fig)


# -- single points and single features ---------------------------------------------------------------------------


def test_pareto_k_histogram_counts_the_points_over_the_threshold() -> None:
    k_hat = [0.1, 0.3, 0.45, 0.8, 1.2, float("-inf")]  # -inf: a point without a finite k-hat
    fig = plots.pareto_k_histogram(k_hat)
    (ax,) = fig.axes
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert sum(b.get_height() for b in bars) == 5  # every finite k-hat, once
    assert sorted(line.get_xdata()[0] for line in ax.get_lines()) == [0.5, 0.7]
    assert "2 of 6 above 0.7" in ax.get_title() and "1 without a finite" in ax.get_title()
    assert ax.get_ylabel() == "points" and len(_legend_texts(ax)) == 3
    _png(fig)
    with pytest.raises(ValueError, match="no point has a finite"):
        plots.pareto_k_histogram([float("-inf"), float("nan")])


def test_point_reconstructions_put_each_point_beside_its_reconstruction(trained: Trained) -> None:
    x = trained.x[:6]
    recon = trained.model.reconstruct(x)
    groups = [plots.PointGroup("lowest log p(x)", x[:3], recon[:3], ["#0", "#1", "#2"]),
              plots.PointGroup("largest gap", x[3:], recon[3:], ["#3", "#4", "#5"])]  # fmt: skip
    fig = plots.point_reconstructions(groups, image_shape=SHAPE)
    assert [ax.get_title() for ax in fig.axes] == ["lowest log p(x)", "largest gap"]
    for ax, g in zip(fig.axes, groups, strict=True):
        expected = image_grid(torch.cat([g.data, g.reconstruction]), image_shape=SHAPE, columns=3)
        np.testing.assert_allclose(_image(ax), expected.double().numpy(), atol=1e-6)  # data row, then recon row
        assert [t.get_text() for t in ax.get_xticklabels()] == list(g.names)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["data", "recon."]
    _png(fig)
    fig = plots.point_reconstructions(groups)  # not images: a panel per point, features across
    assert len(fig.axes) == 6
    first = fig.axes[0]
    (dots,) = [c for c in first.collections if isinstance(c, PathCollection)]
    np.testing.assert_allclose(dots.get_offsets()[:, 1], x[0].double().numpy(), rtol=1e-6)
    (line,) = first.get_lines()
    np.testing.assert_allclose(line.get_ydata(), recon[0].double().numpy(), rtol=1e-6)
    assert first.get_title(loc="left") == "lowest log p(x)\n#0" and fig.axes[4].get_title(loc="left") == "#4"
    _png(fig)
    with pytest.raises(ValueError, match="one name per point"):
        plots.point_reconstructions([plots.PointGroup("bad", x[:2], recon[:2], ["#0"])])
    with pytest.raises(ValueError, match="at least one"):
        plots.point_reconstructions([])


def test_feature_reconstructions_plot_data_against_reconstruction(trained: Trained) -> None:
    x = trained.x
    recon = trained.model.reconstruct(x)
    fig = plots.feature_reconstructions(x, recon, features=[20, 3, 0])
    assert len(fig.axes) == 3
    for ax, j in zip(fig.axes, (20, 3, 0), strict=True):
        (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        np.testing.assert_allclose(points.get_offsets(), torch.stack([x[:, j], recon[:, j]], 1).double().numpy(),
                                   rtol=1e-6)  # fmt: skip
        xj, rj = x[:, j].double(), recon[:, j].double()
        if float(xj.var()) > 0:
            r2 = 1 - float(((xj - rj) ** 2).sum() / ((xj - xj.mean()) ** 2).sum())
            assert ax.get_title() == f"$x_{{{j}}}$: R² = {r2:.2f}"
        else:
            assert "constant" in ax.get_title()
    assert "Reconstructions" in fig.get_suptitle()
    _png(fig)
    with pytest.raises(ValueError, match="features must be"):
        plots.feature_reconstructions(x, recon, features=[64])


def test_feature_marginals_compare_the_data_with_draws_from_the_model(trained: Trained) -> None:
    x = trained.x
    draws = trained.model.sample(300, generator=torch.Generator().manual_seed(0), mean=False)  # (300, 64)
    fig = plots.feature_marginals(x, draws, features=[10, 20])
    means, sds, *histograms = fig.axes
    assert len(histograms) == 2 and "mean" in means.get_title() and "standard deviation" in sds.get_title()
    for ax, stat in ((means, lambda t: t.mean(0)), (sds, lambda t: t.std(0, unbiased=False))):
        (points,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        expected = torch.stack([stat(x.double()), stat(draws.double())], 1).numpy()
        np.testing.assert_allclose(points.get_offsets(), expected, rtol=1e-5, atol=1e-7)
    for ax, j in zip(histograms, (10, 20), strict=True):
        assert ax.get_title() == f"$x_{{{j}}}$"
        data_bars = [p for p in ax.patches if isinstance(p, Rectangle)]
        widths = np.array([b.get_width() for b in data_bars])
        assert float((widths * np.array([b.get_height() for b in data_bars])).sum()) == pytest.approx(1.0, abs=0.02)
    assert _legend_texts(histograms[0]) == ["data (100)", "x ~ p(x) (300)"]
    _png(fig)
    with pytest.raises(ValueError, match="same D"):
        plots.feature_marginals(x, draws[:, :10], features=[0])
