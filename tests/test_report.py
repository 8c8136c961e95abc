"""``elbokit report`` and ``fit --report`` on small real runs: one self-contained, valid HTML page with every
section, diagnostics reused only while they belong to the checkpoint, bad input refused without losing the page,
and the page rendered by headless Chromium with no console errors. (The report of a model without a run
directory, :func:`elbokit.report.write`: tests/test_report_write.py.)"""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from elbokit.cli import main

SECTIONS = ("header", "summary", "training", "samples", "reconstructions", "traversals", "latent-space", "manifold",
            "kl-per-dim", "gaps", "iwae", "pareto-k", "worst-points", "rate-distortion")  # fmt: skip
#: Data that are not images: per-feature figures in place of the image ones.
FEATURE_SECTIONS = ("header", "summary", "training", "feature-reconstructions", "posterior-predictive",
                    "latent-space", "kl-per-dim", "gaps", "iwae", "pareto-k", "worst-points",
                    "rate-distortion")  # fmt: skip
SUMMARY_ROWS = ("ELBO (analytic KL)", "log p(x), importance sampled", "L[q*]", "L[q], the encoder's",
                "approximation gap", "amortization gap", "active units", "I(x; z)")  # fmt: skip
FAST = ("--k", "50", "--limit", "60")
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base", "embed", "param", "track"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only fight on shared cores


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 epochs on the 8x8 digits (images with labels), latent dimension 3: the latent-space figures use the two
    latents with the most KL."""
    out = tmp_path_factory.mktemp("report") / "run"
    argv = ["fit", "--data", "digits", "--out", str(out), "--epochs", "3", "--latent-dim", "3", "--hidden", "32",
            "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def report(digits_run: Path) -> Path:
    assert main(["report", str(digits_run), *FAST]) == 0
    return digits_run / "report.html"


class _Checker(HTMLParser):
    """Collects what the tests look at and fails on tags closed out of order or never closed."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.doctype = ""
        self.text: list[str] = []

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        for name in ("src", "href", "srcset", "action"):
            if a.get(name) is not None:
                self.urls.append(str(a[name]))
        if tag == "img":
            self.images.append(str(a.get("src")))
            if not a.get("alt"):
                self.errors.append("img without alt")
        if tag == "script":
            self.errors.append("script element")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else 'nothing'}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Checker:
    checker = _Checker()
    checker.feed(page)
    checker.close()
    return checker


def test_report_is_one_valid_self_contained_page_with_every_section(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    c = _parse(page)
    assert c.doctype.lower() == "doctype html"
    assert c.errors == [] and c.stack == []
    assert '<html lang="en">' in page and '<meta charset="utf-8">' in page and "<title>" in page
    assert re.findall(r'<section id="([^"]+)"', page) == list(SECTIONS)  # every section, in order
    assert len(set(c.ids)) == len(c.ids)
    # Self-contained: every reference is an inline image; nothing names another file or host.
    assert c.urls and all(u.startswith("data:image/png;base64,") for u in c.urls)
    assert not re.search(r"https?://|url\(", page)
    # Every figure the digits run can have is drawn (none replaced by a note), and each is a real PNG.
    assert "Not drawn" not in page
    assert len(c.images) == len(SECTIONS) - 2  # all but the header and the summary are figures
    assert "mode-seeking" not in page and "Why the ELBO" not in page  # the toy lives in examples/mode_seeking.py
    assert "coloured by label" in page  # the digits have labels
    for src in c.images:
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") > 100


def test_summary_holds_the_diagnostics_numbers(report: Path, digits_run: Path) -> None:
    page = report.read_text(encoding="utf-8")
    text = " ".join(_parse(page).text)
    for row in SUMMARY_ROWS:
        assert row in text, row
    d = json.loads((digits_run / "diagnostics.json").read_text())
    assert d["n"] == 60 and d["k"] == 50
    assert d["step"] == json.loads((digits_run / "state.json").read_text())["step"]

    def shown(value: float) -> str:
        return f"{value:.3f}".replace("-", "−")

    for value in (d["elbo"], d["log_px"], d["gaps"]["approximation"], d["gaps"]["amortization"],
                  d["surgery"]["mutual_information"]):  # fmt: skip
        assert shown(value) in text
    # The digits are grey levels in [0, 1] under a continuous likelihood: log p(x) is a density, so no bits/dim.
    assert "bits per dimension" not in text
    assert f"{d['active_units']} of 3" in text
    assert f"the first {d['n']} points of the test split" in text
    state = json.loads((digits_run / "state.json").read_text())
    assert f"after {state['epoch']} epochs, {state['step']} steps" in text
    # The worst-explained point by log p(x) heads the table of worst points.
    log_px = d["points"]["log_px"]
    assert f"#{log_px.index(min(log_px))}" in text
    config = json.loads((digits_run / "config.json").read_text())
    assert '"digits"' in text and str(config["latent_dim"]) in text


def test_report_reuses_current_diagnostics_and_recomputes_stale_ones(
    digits_run: Path, report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "copy"
    shutil.copytree(digits_run, run)
    diagnostics = run / "diagnostics.json"
    before = diagnostics.read_bytes()
    capsys.readouterr()
    assert main(["report", str(run), *FAST]) == 0
    out = capsys.readouterr().out
    assert "diagnosing" not in out and out.strip().endswith("report.html")
    assert diagnostics.read_bytes() == before  # current: reused as it is
    # One more epoch moves the checkpoint on: the diagnostics no longer describe it and are recomputed.
    assert main(["fit", "--out", str(run), "--resume", "--epochs", "4", "--quiet"]) == 0
    assert main(["report", str(run), *FAST]) == 0
    assert "diagnosing" in capsys.readouterr().out
    assert json.loads(diagnostics.read_text())["step"] == json.loads((run / "state.json").read_text())["step"]
    # A diagnostics.json from an older version (no step, no summary fields) is recomputed, not trusted.
    d = json.loads(diagnostics.read_text())
    del d["gaps"]["elbo_sample_sd"]
    diagnostics.write_text(json.dumps(d))
    assert main(["report", str(run), *FAST]) == 0
    assert "diagnosing" in capsys.readouterr().out


def test_fit_report_writes_the_page_at_the_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["fit", "--data", "digits", "--out", str(out), "--epochs", "1", "--latent-dim", "2", "--hidden", "16",
            "--quiet", "--device", "cpu", "--report"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == str(out / "report.html")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert all(f'id="{s}"' in page for s in SECTIONS)
    assert "on the two latents" in page  # a 2-D latent space is drawn as it is


def test_non_image_data_get_feature_figures_instead_of_image_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["fit", "--data", "synthetic", "--out", str(out), "--epochs", "1", "--latent-dim", "1", "--hidden", "16",
            "--quiet", "--device", "cpu", "--limit", "200", "--likelihood", "gaussian"]  # fmt: skip
    assert main(argv) == 0
    assert main(["report", str(out), *FAST]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    c = _parse(page)
    assert c.errors == [] and re.findall(r'<section id="([^"]+)"', page) == list(FEATURE_SECTIONS)
    assert "not images" not in page and "samples" not in c.ids and "manifold" not in c.ids
    assert page.count("Not drawn") == 1  # only the latent space: a 1-dimensional latent has no plane
    assert "Not drawn: the latent space is 1-dimensional" in page
    assert "bits per dimension" not in page  # a Gaussian likelihood: log p(x) is a density
    assert "coloured by label" not in page  # the synthetic data have no labels


def test_bad_input_is_one_line_and_keeps_the_earlier_page(
    digits_run: Path, report: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and "Traceback" not in err
    run = tmp_path / "copy"
    shutil.copytree(digits_run, run)
    page = (run / "report.html").read_bytes()
    (run / "sweep.json").write_text("{not json")
    assert main(["report", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sweep.json" in err
    assert (run / "report.html").read_bytes() == page
    assert main(["report", str(run), "--k", "0"]) == 2


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="Debian's chromium and chromium-driver are not installed (tests/install_chromium.sh "
                    "installs them where apt-get runs as root)")  # fmt: skip
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.get(report.resolve().as_uri())
        assert driver.title.startswith("elbokit report")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        # Every figure decoded to a real picture; nothing was fetched.
        sizes = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        assert len(sizes) == len(SECTIONS) - 2 and all(done and width > 100 for done, width in sizes)
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
        sections = driver.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
        assert sections == list(SECTIONS)
        height = driver.execute_script("return document.body.scrollHeight")
        assert height > 3000  # a dozen figures, laid out one after the other
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    (tmp_path / "screenshot.png").write_bytes(png)
    width, shot_height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and width > 0 and shot_height > 0
