"""``elbokit.report.write`` / ``render``: the report of a Diagnosis for a model that no run directory holds. Data
that are not images get per-feature reconstructions and a posterior-predictive check (no "Not drawn"); captions
claim only what is there (labels, bits per dimension for discrete data only); the k̂ and worst-points sections
hold the diagnosis's per-point figures; a model without sample()/reconstruct() gets notes saying so."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

import elbokit as ek
import elbokit.report
from elbokit import diagnostics as dx
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.models import VAE, LinearGaussian

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only fight on shared cores

FEATURE_SECTIONS = ["summary", "feature-reconstructions", "posterior-predictive", "latent-space", "kl-per-dim", "gaps",
                    "iwae", "pareto-k", "worst-points", "rate-distortion"]  # fmt: skip
IMAGE_SECTIONS = ["summary", "training", "samples", "reconstructions", "traversals", "latent-space", "manifold",
                  "kl-per-dim", "gaps", "iwae", "pareto-k", "worst-points", "rate-distortion"]  # fmt: skip
VOID = {"meta", "img"}


class Fitted(NamedTuple):
    model: VAE
    x: torch.Tensor
    d: dx.Diagnosis


def _fit(model: VAE, x: torch.Tensor, *, steps: int = 40) -> dx.Diagnosis:
    """A few Adam steps on the ELBO, then a quick diagnosis (k = 20, 10 refinement steps)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = -ek.elbo(model, model.encoder, x).value.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with warnings.catch_warnings():  # 20 samples a point: diagnose may warn of heavy-tailed weights
        warnings.simplefilter("ignore")
        return dx.diagnose(model, model.encoder, x, k=20, refine_steps=10)


@pytest.fixture(scope="module")
def features() -> Fitted:
    """40 points of 12 real-valued features (rank 3 plus noise) and a 12-16-2 Gaussian VAE: no images, no labels."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen) @ torch.randn(3, 12, generator=gen) + 0.3 * torch.randn(40, 12, generator=gen)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VAE.mlp(12, 2, hidden=(16,), likelihood="gaussian")
        return Fitted(model, x, _fit(model, x))


@pytest.fixture(scope="module")
def images() -> tuple[Fitted, torch.Tensor]:
    """30 binary 8x8 images, two noisy prototypes (labels 0 and 1), and a 64-16-3 Bernoulli VAE."""
    gen = torch.Generator().manual_seed(1)
    prototypes = (torch.rand(2, 64, generator=gen) > 0.5).double()
    labels = torch.arange(30) % 2
    flips = (torch.rand(30, 64, generator=gen) < 0.1).double()
    x = (prototypes[labels] - flips).abs()  # each pixel of its prototype, flipped with probability 0.1
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = VAE.mlp(64, 3, hidden=(16,))
        return Fitted(model, x, _fit(model, x)), labels


class _Page(HTMLParser):
    """The section ids, the images and the text of a page; fails on tags closed out of order or left open."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.sections: list[str] = []
        self.images: list[str] = []
        self.chunks: list[str] = []
        self.feed(page)
        self.close()
        self.text = " ".join(self.chunks)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(str(a.get("id")))
        if tag == "img":
            self.images.append(str(a.get("src")))
        if tag == "script":
            self.errors.append("script")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}>")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)


def _valid(page: str) -> _Page:
    parsed = _Page(page)
    assert page.startswith("<!DOCTYPE html>") and parsed.errors == [] and parsed.stack == []
    assert parsed.images and all(src.startswith("data:image/png;base64,iVBORw0KGgo") for src in parsed.images)
    assert not re.search(r"https?://|url\(", page)
    return parsed


def test_a_model_without_a_run_directory_gets_feature_figures(features: Fitted, tmp_path: Path) -> None:
    model, x, d = features
    rng = torch.get_rng_state()
    path = elbokit.report.write(d, tmp_path / "report.html", model=model, x=x, title="a tiny Gaussian VAE")
    assert torch.equal(torch.get_rng_state(), rng)  # the posterior-predictive draws leave torch's RNG as it was
    assert path == tmp_path / "report.html" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    page = path.read_text(encoding="utf-8")
    parsed = _valid(page)
    # No run: no settings, no history; data that are not images: feature figures, every one drawn.
    assert parsed.sections == FEATURE_SECTIONS
    assert len(parsed.images) == len(FEATURE_SECTIONS) - 1
    assert "Not drawn" not in page and "not images" not in page
    assert "<title>elbokit report: a tiny Gaussian VAE</title>" in page
    assert f"Diagnostics on {d.n} points" in parsed.text
    assert "mode-seeking" not in page
    # Captions say what is drawn: no labels, so coloured by log p(x); continuous data, so no bits.
    assert "label" not in parsed.text
    assert "coloured by each point's importance-sampled log p(x)" in parsed.text
    assert "bits per dimension" not in parsed.text
    assert "the 8 features with the largest variance" in parsed.text and "1000 draws x ~ p(x)" in parsed.text


def _no_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures still drawn but not encoded (most of a page's time) where a test reads only the text."""
    monkeypatch.setattr("elbokit.report.sections._png", lambda figure: b"\x89PNG\r\n\x1a\n")


def test_the_k_hat_and_worst_points_sections_hold_the_per_point_figures(
    features: Fitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_encoding(monkeypatch)
    model, x, d = features
    page = elbokit.report.render(d, model=model, x=x)
    text = _Page(page).text
    over = sum(k > KHAT_THRESHOLD for k in d.points.pareto_k)
    assert f"{over} of {d.n} points are above" in text
    section = page.split('<section id="worst-points">')[1].split("</section>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", section)
    assert len(rows) == 1 + 2 * 4  # a header, then 4 points by log p(x) and 4 by the gap
    log_px, gap = d.points.log_px, [a - b for a, b in zip(d.points.log_px, d.points.elbo, strict=True)]
    lowest = sorted(range(d.n), key=lambda i: log_px[i])[:4]
    widest = sorted(range(d.n), key=lambda i: -gap[i])[:4]
    shown = [re.search(r"#(\d+)", row) for row in rows[1:]]
    assert [int(m.group(1)) for m in shown if m] == lowest + widest
    assert f"{-log_px[lowest[0]]:.3f}" in rows[1] and f"{gap[widest[0]]:.3f}" in rows[5]


def test_binary_images_with_labels_get_bits_per_dimension_and_label_colours(
    images: tuple[Fitted, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    (model, x, d), labels = images
    history = [{"epoch": e, "train_bound": -40.0 + e, "train_reconstruction": -38.0 + e, "train_kl": 2.0, "beta": 1.0,
                "note": "<b>not a number</b>"} for e in (1, 2, 3)]  # fmt: skip
    page = elbokit.report.render(d, model=model, x=x, labels=labels, image_shape=(8, 8), discrete=True,
                                 history=history, settings={"latent_dim": 3},
                                 dataset={"name": "two prototypes"})  # fmt: skip
    parsed = _valid(page)
    assert parsed.sections == ["header", *IMAGE_SECTIONS]
    assert "Not drawn" not in page and "<b>" not in page
    assert "coloured by label" in parsed.text
    assert parsed.text.count("two prototypes") >= 2  # the dataset's name opens the page and is in its table
    bits = -d.log_px / (64 * math.log(2))
    assert "bits per dimension" in parsed.text and f"{bits:.4f}" in parsed.text
    _no_encoding(monkeypatch)
    continuous = elbokit.report.render(d, model=model, x=x, labels=labels, image_shape=(8, 8))
    assert "bits per dimension" not in continuous


def test_a_model_without_sample_or_reconstruct_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A LinearGaussian has prior() and likelihood(z), and nothing to draw pictures with: each figure that needs a
    method says which one it lacks; the worst points are still listed."""
    _no_encoding(monkeypatch)
    gen = torch.Generator().manual_seed(2)
    model = LinearGaussian(weight=torch.randn(6, 2, generator=gen), bias=torch.zeros(6), noise_scale=0.5)
    x = model.likelihood(torch.randn(25, 2, generator=gen)).sample()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = dx.diagnose(model, model.posterior, x, k=20, refine_steps=5)
    page = elbokit.report.render(d, model=model, x=x)
    for call in ("reconstruct(x)", "sample(n, generator=..., mean=...)", "encode(x)"):  # its sample() draws (x, z)
        assert f"Not drawn: the model has no {call}." in page
    assert "listed below" in page and len(re.findall(r"<tr><td", page.split('id="worst-points"')[1])) == 8


def test_arguments_that_do_not_fit_are_refused_and_nothing_is_written(features: Fitted, tmp_path: Path) -> None:
    model, x, d = features
    path = tmp_path / "report.html"
    for change, match in (({"x": x[:10]}, "B >= n = 40"), ({"x": x[0]}, "B >= n"),
                          ({"image_shape": (5, 5)}, "H W = D = 12"), ({"labels": torch.zeros(3)}, "labels"),
                          ({"history": [1.0]}, "history"), ({"sweep": [1.0]}, "sweep")):  # fmt: skip
        arguments: dict[str, Any] = {"model": model, "x": x} | change
        with pytest.raises(ValueError, match=re.escape(match)):
            elbokit.report.write(d, path, **arguments)
    with pytest.raises(ValueError, match="Diagnosis"):
        elbokit.report.write(d.to_dict(), path, model=model, x=x)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_importing_the_report_loads_no_matplotlib() -> None:
    code = ("import sys, elbokit.report, elbokit.report.html, elbokit.report.sections, elbokit.runs\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
