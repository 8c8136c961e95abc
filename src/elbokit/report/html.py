"""The report as one self-contained HTML page: the settings, the truth about the bound, and the figures.

The page needs nothing but itself: figures are inlined as base64 PNG, the style sheet is inline, and there is no
JavaScript and no fetch of anything. It is assembled from what it is handed (a Diagnosis, the figures of
:mod:`elbokit.report.sections`, settings and a dataset description as mappings) and reads no file. Every value
that reaches the page passes through :func:`_text` (HTML-escaped), so text from anywhere can put words on the
page but never markup.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.report.sections import Section, number

if TYPE_CHECKING:
    from elbokit.diagnostics import Diagnosis

__all__ = ["page_head", "render_page"]


def _text(value: Any) -> str:
    """``value`` as HTML text or as the value of a quoted attribute: ``str(value)`` with ``&<>"'`` escaped. Every
    value interpolated into the page goes through here."""
    return html.escape(str(value), quote=True)


def _summary_rows(d: Diagnosis, *, data_dim: int, discrete: bool) -> list[tuple[str, str]]:
    """The summary table's (label, value) cells, as plain text: :func:`_table` escapes them."""
    g, s = d.gaps, d.surgery
    rows = [(f"ELBO ({'analytic' if d.elbo_kl == 'analytic' else 'sampled'} KL)", number(d.elbo))]
    khat = f"k̂ max {number(d.pareto_k_max, 2)}; {d.pareto_k_over_threshold} of {d.n} points over {KHAT_THRESHOLD}"
    rows.append((f"log p(x), importance sampled, k = {d.k}",
                 f"{number(d.log_px)} ± {number(d.log_px_stderr)} ({khat})"))  # fmt: skip
    if d.ais is not None:
        rows.append((f"log p(x), AIS {d.ais.steps} steps", f"{number(d.ais.value)} ± {number(d.ais.stderr)}"))
    rows += [
        (
            f"log p(x), the gaps' reference ({'AIS' if g.reference == 'ais' else 'IS'} from the full-covariance q*)",
            f"{number(g.log_px)} ± {number(g.log_px_stderr)} (k̂ max {number(g.pareto_k_max, 2)}; "
            f"{g.unreliable} of {d.n} points over {KHAT_THRESHOLD})",
        ),
        ("L[q*], q refined per point", f"{number(g.elbo_optimal)} ({g.family} q*, {g.steps} steps)"),
        ("L[q], the encoder's", number(g.elbo_amortized)),
        ("approximation gap, log p(x) − L[q*]", number(g.approximation)),
        ("amortization gap, L[q*] − L[q]", number(g.amortization)),
        ("active units", f"{d.active_units} of {d.latent_dim}"),
        ("I(x; z)", f"{number(s.mutual_information)} (at most log N = {number(s.log_n)})"),
        ("KL(q(z) ‖ p(z))", number(s.marginal_kl)),
        ("average KL(q(z|x) ‖ p(z))", number(s.average_kl)),
    ]
    if discrete:  # log p(x) of discrete data is a log probability; of continuous data, a density: no bits
        rows.append(("bits per dimension, −log p(x) / (D log 2)",
                     number(-d.log_px / (data_dim * math.log(2)), 4)))  # fmt: skip
    return rows


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { padding: 0.2rem 0.8rem; text-align: left; }
tr:nth-child(even) { background: #f4f4f4; } td.v { font-variant-numeric: tabular-nums; }
figure { margin: 0.5rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.95rem; } .note { color: #8a5300; }
.warn { background: #fff4e0; padding: 0.5rem; }
details { margin: 0.5rem 0; }
"""


def _table(rows: Sequence[tuple[Any, Any]], *, css_id: str | None = None) -> str:
    attr = f' id="{_text(css_id)}"' if css_id else ""
    body = "".join(f'<tr><th>{_text(k)}</th><td class="v">{_text(v)}</td></tr>' for k, v in rows)
    return f"<table{attr}><tbody>{body}</tbody></table>"


def _grid(rows: Sequence[Sequence[Any]]) -> str:
    """A table whose first row is its header."""
    head = "".join(f"<th>{_text(cell)}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f'<td class="v">{_text(c)}</td>' for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tbody><tr>{head}</tr>{body}</tbody></table>"


def _setting(value: Any) -> str:
    return json.dumps(value, default=str)


def _intro(d: Diagnosis, dataset: Mapping[str, Any] | None) -> str:
    said = []
    if dataset is not None and dataset.get("name") is not None:
        said.append(f"Data: {dataset['name']}.")
    if d.epoch is not None or d.step is not None:
        said.append(f"The model after {'?' if d.epoch is None else d.epoch} epochs, "
                    f"{'?' if d.step is None else d.step} steps.")  # fmt: skip
    where = f"the first {d.n} points of the {d.split} split" if d.split is not None else f"{d.n} points"
    said.append(f"Diagnostics on {where}, in nats per data point.")
    return " ".join(said)


def _section(s: Section) -> list[str]:
    parts = [f'<section id="{_text(s.id)}">', f"<h2>{_text(s.title)}</h2>"]
    if s.png is not None:
        data = base64.b64encode(s.png).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{_text(data)}" alt="{_text(s.title)}">'
                     f"<figcaption>{_text(s.caption)}</figcaption></figure>")  # fmt: skip
    else:
        parts.append(f'<p>{_text(s.caption)}</p><p class="note">Not drawn: {_text(s.note or "")}.</p>')
    if s.table:
        parts.append(_grid(s.table))
    parts.append("</section>")
    return parts


def page_head(title: str | None, intro: str, *, settings: Mapping[str, Any] | None = None,
              dataset: Mapping[str, Any] | None = None) -> list[str]:  # fmt: skip
    """A report page's opening lines: the document head with the style sheet, the heading, ``intro``, and the
    setup section (the settings and the dataset as tables, where given). Every value is escaped."""
    heading = "elbokit report" if title is None else f"elbokit report: {title}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(heading)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_text(heading)}</h1>",
        f"<p>{_text(intro)}</p>",
    ]
    tables = (("Configuration", "config", settings), ("Dataset", "dataset", dataset))
    described = [(name, css_id, rows) for name, css_id, rows in tables if rows is not None]
    if described:
        parts += ['<section id="header">', "<h2>Setup</h2>"]
        for name, css_id, rows in described:
            parts += [f"<details open><summary>{_text(name)}</summary>",
                      _table([(k, _setting(v)) for k, v in rows.items()], css_id=css_id), "</details>"]  # fmt: skip
        parts.append("</section>")
    return parts


def render_page(d: Diagnosis, sections: Sequence[Section], *, data_dim: int, discrete: bool = False,
                settings: Mapping[str, Any] | None = None, dataset: Mapping[str, Any] | None = None,
                title: str | None = None) -> str:  # fmt: skip
    """The page as one HTML string: a header (settings and dataset, where given), the summary of ``d``, then
    ``sections``. Every value is escaped, whatever its type."""
    parts = page_head(title, _intro(d, dataset), settings=settings, dataset=dataset)
    parts += [
        '<section id="summary">',
        "<h2>Summary</h2>",
        _table(_summary_rows(d, data_dim=data_dim, discrete=discrete), css_id="summary-table"),
    ]
    if d.pareto_k_over_threshold:
        parts.append(f'<p class="warn">k̂ exceeds {_text(KHAT_THRESHOLD)} on {_text(d.pareto_k_over_threshold)} '
                     f"of {_text(d.n)} points: there the importance weights have too heavy a tail for the error "
                     "bar of log p(x) to be trusted, and the estimate is likely short. AIS (<code>diagnose(..., "
                     "ais_steps=300)</code>, <code>elbokit diagnose DIR --ais 300</code>) is the tighter "
                     "reference.</p>")  # fmt: skip
    parts.append("</section>")
    for s in sections:
        parts += _section(s)
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
