"""One self-contained ``report.html`` per run: the run's settings, the truth about its bound, and its pictures.

The page needs nothing but itself: figures are inlined as base64 PNG, the style sheet is inline, and there is no
JavaScript and no fetch of anything. It is built from a run directory and that run's ``diagnostics.json`` (what
``elbokit diagnose`` writes), plus ``sweep.json`` when ``elbokit sweep`` has traced a rate-distortion curve.
Every value that reaches the page, from whichever file, passes through :func:`_text` (HTML-escaped), so a crafted
run folder can put text on the page but never markup.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from elbokit._io import atomic_write
from elbokit.diagnostics import Collapse, CurvePoint, GapSummary, ModeSeekingResult, RatePoint, SweepPoint
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.report import plots
from elbokit.runs import Run, read_description
from elbokit.train.loop import METRICS

REPORT = "report.html"
SWEEP = "sweep.json"

__all__ = ["REPORT", "SWEEP", "Section", "read_history", "read_sweep", "render_report", "write_report"]


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading, then a figure with its caption (or, where it cannot be drawn, why)."""

    id: str
    title: str
    caption: str
    png: bytes | None = None
    note: str | None = None


def _text(value: Any) -> str:
    """``value`` as HTML text or as the value of a quoted attribute: ``str(value)`` with ``&<>"'`` escaped. Every
    value interpolated into the page goes through here."""
    return html.escape(str(value), quote=True)


def _is_real(value: Any) -> bool:
    """An int or float that converts to float (not a bool, and not an int too large for a float)."""
    return isinstance(value, float) or (type(value) is int and abs(value) <= sys.float_info.max)


def read_history(run_dir: Path) -> list[dict[str, float | None]]:
    """The per-epoch lines of ``metrics.jsonl`` (empty when there are none), keeping only the entries that are
    numbers or null; ValueError (one line) for a line that is not a JSON object."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                raise ValueError(f"{path}, line {number}: not JSON") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {number}: not a JSON object")
            rows.append({key: value for key, value in row.items() if value is None or _is_real(value)})
    return rows


def _sweep_row(row: Any) -> bool:
    """A row of ``sweep.json``: every SweepPoint field and nothing else, each a number but the path (a string or
    null)."""
    if not isinstance(row, dict) or set(row) != set(SweepPoint._fields):
        return False
    path = row["path"]
    return (path is None or isinstance(path, str)) and all(_is_real(v) for k, v in row.items() if k != "path")


def read_sweep(run_dir: Path) -> list[SweepPoint] | None:
    """The points ``elbokit sweep`` wrote to ``sweep.json``, or None when there is no sweep; ValueError (one line)
    for anything else, including a value that is not a number where the point has one."""
    path = Path(run_dir) / SWEEP
    if not path.exists():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        rows = None
    if not isinstance(rows, list) or not all(_sweep_row(row) for row in rows):
        raise ValueError(f"{path} is not a sweep written by `elbokit sweep`")
    return [SweepPoint(**(row | {"path": Path(row["path"]) if row["path"] else None})) for row in rows]


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _figure(make: Callable[[], Any]) -> tuple[bytes | None, str | None]:
    """The figure as PNG bytes, or (None, why) when its data cannot be drawn."""
    try:
        return _png(make()), None
    except ValueError as err:
        return None, str(err)


def _collapse(d: Mapping[str, Any]) -> Collapse:
    return Collapse(
        kl_per_dim=torch.tensor(d["kl_per_dim"], dtype=torch.float64),
        activity=torch.tensor(d["activity"], dtype=torch.float64),
        active_units=int(d["active_units"]),
        mutual_information=float(d["surgery"]["mutual_information"]),
        threshold=float(d.get("activity_threshold", 0.01)),
    )


def _top_two(kl_per_dim: Sequence[float]) -> tuple[int, int]:
    order = sorted(range(len(kl_per_dim)), key=lambda j: -kl_per_dim[j])
    return order[0], order[1]


#: Each figure's heading and one-line caption: what to look for.
CAPTIONS: dict[str, tuple[str, str]] = {
    "training": ("Training", "The bound should rise and flatten; a validation curve that turns down while training "
                 "still rises is overfitting; β shows the KL schedule."),
    "samples": ("Samples from p(z)", "Decoded means of z ~ p(z): blurry or repeated shapes say the decoder has not "
                "learnt the data, or that q(z) and the prior disagree."),
    "reconstructions": ("Reconstructions", "Test images above the decoded mean of their q(z|x): lost detail is "
                        "distortion the latent code does not carry."),
    "traversals": ("Latent traversals", "Each row moves one latent (the most informative first, by KL) from -3 to 3 "
                   "with the others at 0: a row that does not change is a collapsed latent."),
    "latent-space": ("Latent space", "The encoded test set on {which}, coloured by label: classes that separate are "
                     "what the code has learnt."),
    "manifold": ("Decoded manifold", "Decoded means over {which} at the prior's quantiles, the other latents at 0: "
                 "smooth change means a smooth decoder."),
    "kl-per-dim": ("Per-dimension KL", "KL(q(z_j|x) ‖ p(z_j)) per latent: latents near 0 carry no information "
                   "(posterior collapse); {active} of {d} are active."),
    "gaps": ("Where the bound loses", "From log p(x) down to the encoder's ELBO: the approximation gap is the "
             "family's, the amortization gap the encoder's; the last bar is the noise of a one-draw ELBO."),
    "iwae": ("log p(x) against k", "IWAE_k rises towards log p(x) as k grows; if it is still rising at the last k, "
             "or AIS or the refined proposal's estimate lies above the encoder's line, that importance-sampled "
             "log p(x) is short."),
    "rate-distortion": ("Rate and distortion", "One model per β (Alemi et al. 2018): each sits on its ELBO line "
                        "R + D = -ELBO; small β buys low distortion with a high rate."),
    "rate-distortion-one": ("Rate and distortion", "This model on the rate-distortion plane, with its ELBO line "
                            "R + D = -ELBO and -log p(x) below it; `elbokit sweep DIR --beta 0.25,0.5,1,2,4` traces "
                            "the curve."),
    "mode-seeking": ("Why the ELBO's q is mode-seeking", "A Gaussian fitted to two modes: the reverse KL (the ELBO) "
                     "locks onto one, the forward KL spreads over both. Posteriors with several modes are "
                     "underestimated the same way."),
}  # fmt: skip
NOT_IMAGES = "the data are not images, so there is nothing to draw here"
ONE_LATENT = "the latent space is 1-dimensional: no plane to draw"


def _sections(run: Run, d: Mapping[str, Any], history: Sequence[Mapping[str, Any]], sweep: list[SweepPoint] | None,
              mode: ModeSeekingResult) -> list[Section]:  # fmt: skip
    model, data = run.model, run.data
    shape = data.image_shape
    device = next(model.parameters()).device
    n_test = min(int(d["n"]), data.test.shape[0])
    x = data.test[:n_test].to(device)
    labels = data.test_labels[:n_test] if data.test_labels is not None else None
    latent_dim = int(d["latent_dim"])
    sections: list[Section] = []

    def add(key: str, make: Callable[[], Any] | None, why: str = "", *, section: str | None = None,
            **fill: Any) -> None:  # fmt: skip
        title, caption = CAPTIONS[key]
        png, note = _figure(make) if make is not None else (None, why)
        sections.append(Section(section or key, title, caption.format(**fill), png, note))

    add("training", lambda: plots.training_curves(history))
    images: dict[str, Callable[[], Any] | None] = dict.fromkeys(("samples", "reconstructions", "traversals"))
    if shape is not None:
        gen = torch.Generator(device=device).manual_seed(run.config.seed)
        with torch.inference_mode():
            samples = model.sample(64, generator=gen).cpu()
            originals = data.test[:32].to(device)
            recon = model.reconstruct(originals).cpu()
        by_kl = sorted(range(latent_dim), key=lambda j: -d["kl_per_dim"][j])[: min(8, latent_dim)]
        images["samples"] = lambda: plots.sample_grid(samples, shape)
        images["reconstructions"] = lambda: plots.reconstructions(originals.cpu(), recon, shape)
        images["traversals"] = lambda: plots.latent_traversals(model, shape, dims=by_kl)
    for key, make in images.items():
        add(key, make, NOT_IMAGES)

    if latent_dim >= 2:
        dims = (0, 1) if latent_dim == 2 else _top_two(d["kl_per_dim"])
        which = "the two latents" if latent_dim == 2 else f"z{dims[0]} and z{dims[1]}, the two latents with most KL"
        add("latent-space", lambda: plots.latent_scatter(model, x, labels, dims=dims), which=which)
        manifold = (lambda: plots.latent_manifold(model, shape, dims=dims)) if shape is not None else None
        add("manifold", manifold, NOT_IMAGES, which=which)
    else:
        add("latent-space", None, ONE_LATENT, which="the latent")
        add("manifold", None, ONE_LATENT, which="the latent")

    collapse = _collapse(d)
    add("kl-per-dim", lambda: plots.kl_per_dim(collapse), active=collapse.active_units, d=latent_dim)
    summary = GapSummary(**{name: d["gaps"][name] for name in GapSummary._fields})
    add("gaps", lambda: plots.gap_waterfall(summary))
    curve = [CurvePoint(int(p["k"]), float(p["value"]), float(p["stderr"])) for p in d["iwae"]]
    ais = (float(d["ais"]["value"]), float(d["ais"]["stderr"])) if "ais" in d else None
    reference = (float(d["gaps"]["log_px"]), float(d["gaps"]["log_px_stderr"]))
    add("iwae", lambda: plots.iwae_curve(curve, log_px=(d["log_px"], d["log_px_stderr"]), ais=ais,
                                         reference=reference))  # fmt: skip
    if sweep:
        add("rate-distortion", lambda: plots.rate_distortion(sweep))
    else:
        one = RatePoint(**d["rate_distortion"])
        add("rate-distortion-one", lambda: plots.rate_distortion([one], log_px=float(d["log_px"])),
            section="rate-distortion")  # fmt: skip
    add("mode-seeking", lambda: plots.mode_seeking(mode))
    return sections


def _number(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals and a true minus sign. Anything but a real number is never given to a
    format spec: it is shown as it is (and escaped where it is written)."""
    if not _is_real(value):
        return str(value)
    return "−" + f"{-value:.{digits}f}" if value < 0 else f"{value:.{digits}f}"


def _summary_rows(run: Run, d: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The summary table's (label, value) cells, as plain text: :func:`_table` escapes them."""
    g, s = d["gaps"], d["surgery"]
    rows = [
        (f"ELBO ({'analytic' if d.get('elbo_kl', 'analytic') == 'analytic' else 'sampled'} KL)", _number(d["elbo"]))
    ]
    khat = (
        f"k̂ max {_number(d['pareto_k_max'], 2)}; {d['pareto_k_over_threshold']} of {d['n']} points over "
        f"{KHAT_THRESHOLD}"
    )
    rows.append((f"log p(x), importance sampled, k = {d['k']}",
                 f"{_number(d['log_px'])} ± {_number(d['log_px_stderr'])} ({khat})"))  # fmt: skip
    if "ais" in d:
        a = d["ais"]
        rows.append((f"log p(x), AIS {a['steps']} steps", f"{_number(a['value'])} ± {_number(a['stderr'])}"))
    rows += [
        (
            f"log p(x), the gaps' reference ({'AIS' if g['reference'] == 'ais' else 'IS'} from the full-covariance q*)",
            f"{_number(g['log_px'])} ± {_number(g['log_px_stderr'])} (k̂ max {_number(g['pareto_k_max'], 2)}; "
            f"{g['unreliable']} of {d['n']} points over {KHAT_THRESHOLD})",
        ),
        ("L[q*], q refined per point", f"{_number(g['elbo_optimal'])} ({g['family']} q*, {g['steps']} steps)"),
        ("L[q], the encoder's", _number(g["elbo_amortized"])),
        ("approximation gap, log p(x) − L[q*]", _number(g["approximation"])),
        ("amortization gap, L[q*] − L[q]", _number(g["amortization"])),
        ("active units", f"{d['active_units']} of {d['latent_dim']}"),
        ("I(x; z)", f"{_number(s['mutual_information'])} (at most log N = {_number(s['log_n'])})"),
        ("KL(q(z) ‖ p(z))", _number(s["marginal_kl"])),
        ("average KL(q(z|x) ‖ p(z))", _number(s["average_kl"])),
    ]
    if run.data.image_shape is not None:
        rows.append(("bits per dimension, −log p(x) / (D log 2)",
                     _number(-d["log_px"] / (run.data.data_dim * math.log(2)), 4)))  # fmt: skip
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


def render_report(run: Run, diagnostics: Mapping[str, Any], *, history: Sequence[Mapping[str, Any]] = (),
                  sweep: list[SweepPoint] | None = None, mode: ModeSeekingResult | None = None) -> str:  # fmt: skip
    """The report page of ``run`` as one HTML string, from its diagnostics (the dict ``elbokit diagnose`` writes).

    Text from any source (the run's folder name, state, config and dataset, the diagnostics) is escaped. The
    numbers the figures are drawn from must have the types ``diagnose`` writes: ``elbokit report`` checks a
    ``diagnostics.json`` before it gets here (:func:`elbokit.cli_report.current_diagnostics`)."""
    if mode is None:
        from elbokit.diagnostics import mode_seeking

        mode = mode_seeking()
    d = diagnostics
    title = f"elbokit report: {run.path.name or run.path}"
    described = read_description(run.path)
    state = run.state
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_text(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{_text(title)}</h1>",
        f"<p>{_text(run.data.name)}, {_text(state.get('epoch', '?'))} epochs, {_text(state.get('step', '?'))} "
        f"steps. Diagnostics on the first {_text(d['n'])} points of the {_text(d['split'])} split, in nats per data "
        "point.</p>",
        '<section id="header">',
        "<h2>Run</h2>",
        "<details open><summary>Configuration</summary>",
        _table([(k, json.dumps(v)) for k, v in run.config.to_dict().items()], css_id="config"),
        "</details>",
        "<details open><summary>Dataset</summary>",
        _table([(k, json.dumps(v)) for k, v in described.items()], css_id="dataset"),
        "</details>",
        "</section>",
        '<section id="summary">',
        "<h2>Summary</h2>",
        _table(_summary_rows(run, d), css_id="summary-table"),
    ]
    if d["pareto_k_over_threshold"]:
        parts.append(f'<p class="warn">k̂ exceeds {_text(KHAT_THRESHOLD)} on {_text(d["pareto_k_over_threshold"])} '
                     f"of {_text(d['n'])} points: there the importance weights have too heavy a tail for the error "
                     "bar of log p(x) to be trusted, and the estimate is likely short. AIS (<code>elbokit diagnose DIR "
                     "--ais 300</code>) is the tighter reference.</p>")  # fmt: skip
    parts.append("</section>")
    for s in _sections(run, d, history, sweep, mode):
        parts.append(f'<section id="{_text(s.id)}">')
        parts.append(f"<h2>{_text(s.title)}</h2>")
        if s.png is not None:
            data = base64.b64encode(s.png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{_text(data)}" alt="{_text(s.title)}">'
                         f"<figcaption>{_text(s.caption)}</figcaption></figure>")  # fmt: skip
        else:
            parts.append(f'<p>{_text(s.caption)}</p><p class="note">Not drawn: {_text(s.note or "")}.</p>')
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_report(run: Run, diagnostics: Mapping[str, Any], *, mode: ModeSeekingResult | None = None) -> Path:
    """Write ``run.path / report.html`` atomically (an earlier report stays whole until the new one is complete)."""
    page = render_report(run, diagnostics, history=read_history(run.path), sweep=read_sweep(run.path), mode=mode)
    path = run.path / REPORT
    atomic_write(path, page.encode("utf-8"))
    return path
