"""A Bayesian neural network's report: one self-contained HTML page (the settings, the data, the predictive figures
on the test split, the training curves, calibration, uncertainty against error), in the style of the VAE report
(:mod:`elbokit.report.html`): figures inlined as PNG, no script, every value escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elbokit._io import atomic_write
from elbokit.report.html import _section, _table, page_head
from elbokit.report.sections import Section, _figure, number
from elbokit.runs.bnn_evaluation import BNNEvaluation


def _summary(result: BNNEvaluation) -> list[tuple[str, str]]:
    rows = [(f"log-likelihood per point ({result.samples} weight draws)",
             f"{number(result.log_likelihood, 4)} ± {number(result.log_likelihood_stderr, 4)}")]  # fmt: skip
    if result.task == "regression":
        rows += [("RMSE", number(result.rmse, 4))]
        rows += [(f"coverage of the {float(level):.0%} interval", f"{cov:.1%}")
                 for level, cov in result.coverage.items() if level in ("0.5", "0.9", "0.95")]  # fmt: skip
        rows += [("mean |coverage − level| over the levels", number(result.calibration_error, 4)),
                 ("epistemic variance (mean over points)", number(result.epistemic, 4)),
                 ("aleatoric variance (mean over points)", number(result.aleatoric, 4))]  # fmt: skip
    else:
        rows += [("error rate", f"{result.error:.2%}"),
                 ("expected calibration error", number(result.calibration_error, 4)),
                 ("mutual information (epistemic), mean", number(result.epistemic, 4)),
                 ("expected entropy (aleatoric), mean", number(result.aleatoric, 4))]  # fmt: skip
    return rows


def bnn_sections(result: BNNEvaluation, history: Sequence[Mapping[str, Any]]) -> list[Section]:
    """The report's figures (each a :class:`elbokit.report.sections.Section`; one that cannot be drawn says why)."""
    from elbokit.report.plots.bnn import bnn_training_curves, calibration, uncertainty_vs_error

    out = []
    png, note = _figure(lambda: bnn_training_curves(history))
    caption = ("The training ELBO per data point, the validation log predictive density per point, and the KL of "
               "q(w) from the prior per data point, by epoch.")
    out.append(Section("training", "Training", caption, png, note))
    png, note = _figure(lambda: calibration(result))
    caption = ("Coverage of the central predictive intervals against their level (calibrated on the diagonal; "
               "below it, over-confident), and the histogram of P(Y ≤ y | x) (flat when calibrated)."
               if result.task == "regression" else
               "Reliability: accuracy against the mean top-class probability, per bin of it.")  # fmt: skip
    out.append(Section("calibration", "Calibration", caption, png, note))
    png, note = _figure(lambda: uncertainty_vs_error(result))
    caption = ("Each test point's |error| against its predictive standard deviation, and their mean per bin of sd; "
               "an honest predictive follows the dashed line.")
    if result.task != "regression":
        caption = "The error rate per decile of predictive entropy: an honest classifier errs where it is unsure."
    out.append(Section("uncertainty", "Uncertainty vs error", caption, png, note))
    return out


def render_bnn_page(result: BNNEvaluation, sections: Sequence[Section], *, settings: Mapping[str, Any] | None = None,
                    dataset: Mapping[str, Any] | None = None, title: str | None = None) -> str:  # fmt: skip
    intro = (f"A Bayesian neural network's {result.task}: its predictive distribution on the {result.split} split "
             f"({result.n} points, {result.samples} draws of the weights from q(w)), per data point.")  # fmt: skip
    parts = page_head(title, intro, settings=settings, dataset=dataset)
    parts += ['<section id="summary">', "<h2>Summary</h2>", _table(_summary(result), css_id="summary-table"),
              "</section>"]  # fmt: skip
    for s in sections:
        parts += _section(s)
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_bnn_report(path: str | Path, result: BNNEvaluation, *, history: Sequence[Mapping[str, Any]] = (),
                     settings: Mapping[str, Any] | None = None, dataset: Mapping[str, Any] | None = None,
                     title: str | None = None) -> Path:  # fmt: skip
    """Write the page to ``path`` atomically and return the path."""
    page = render_bnn_page(result, bnn_sections(result, history), settings=settings, dataset=dataset, title=title)
    path = Path(path)
    atomic_write(path, page.encode("utf-8"))
    return path
