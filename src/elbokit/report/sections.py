"""The figures of a report, each a :class:`Section`, drawn from a Diagnosis, the model and the points it was
computed on, and nothing else: no file is read. Sections hold plain text; the page escapes it
(:mod:`elbokit.report.html`). Matplotlib is imported when :func:`build_sections` runs, not before.

What is drawn depends on what was given: image figures for images (``image_shape``), per-feature reconstructions
and a posterior-predictive check for other data; figures that need ``model.sample``, ``reconstruct``, ``encode``
or ``decode`` say so when the model lacks the method, and the training curves appear only with a history.
"""

from __future__ import annotations

import inspect
import io
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.report.captions import CAPTIONS, COLOURS

if TYPE_CHECKING:
    from elbokit.diagnostics import Collapse, Diagnosis, Disentanglement, SweepPoint

IMAGES = 64  # samples drawn for the image grid
RECONSTRUCTED = 32  # images shown above their reconstructions
WORST = 6  # points in each group of the worst explained (4 for data that are not images: a panel each)
FEATURES = 8  # features shown one by one for data that are not images, the most variable first
DRAWS = 1000  # draws x ~ p(x) of the posterior-predictive check
ONE_LATENT = "the latent space is 1-dimensional: no plane to draw"


@dataclass(frozen=True)
class Section:
    """One part of the page: a heading, then a figure with its caption (or, where it cannot be drawn, why), and
    an optional table whose first row is its header. All plain text."""

    id: str
    title: str
    caption: str
    png: bytes | None = None
    note: str | None = None
    table: tuple[tuple[str, ...], ...] = ()


def is_real(value: Any) -> bool:
    """An int or float that converts to float (not a bool, and not an int too large for a float)."""
    return isinstance(value, float) or (type(value) is int and abs(value) <= sys.float_info.max)


def number(value: Any, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals and a true minus sign. Anything but a real number is never given to a
    format spec: it is shown as it is (and escaped where it is written)."""
    if not is_real(value):
        return str(value)
    return "−" + f"{-value:.{digits}f}" if value < 0 else f"{value:.{digits}f}"


def numbers_only(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The history's rows keeping only the entries that are numbers or null: nothing else reaches a figure."""
    return [{key: value for key, value in row.items() if value is None or is_real(value)} for row in history]


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


def _device(model: Any, x: Tensor) -> torch.device:
    """Where the model's parameters (or buffers) are; x's device for a model that has none."""
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return x.device


#: What the report calls, by method: a model whose method is missing, or a sample() without these keywords (a
#: LinearGaussian's draws (x, z) pairs), gets a note in place of the figures that need it.
CALLS = {"sample": "sample(n, generator=..., mean=...)", "reconstruct": "reconstruct(x)", "encode": "encode(x)",
         "decode": "decode(z)"}  # fmt: skip


def _has(model: Any, name: str) -> bool:
    method = getattr(model, name, None)
    if not callable(method):
        return False
    if name != "sample":
        return True
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):  # no signature to read: trust it
        return True
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return takes_any or {"generator", "mean"} <= set(parameters)


def _missing(name: str) -> str:
    return f"the model has no {CALLS[name]}"


def worst_points(log_px: Sequence[float], elbo: Sequence[float], m: int) -> tuple[list[int], list[int]]:
    """The positions of the ``m`` points with the lowest log p(x), and of the ``m`` with the largest
    log p(x) − ELBO (a NaN sorts last)."""
    n = len(log_px)
    gap = [a - b for a, b in zip(log_px, elbo, strict=True)]
    lowest = sorted(range(n), key=lambda i: (math.isnan(log_px[i]), log_px[i]))[:m]
    widest = sorted(range(n), key=lambda i: (math.isnan(gap[i]), -gap[i]))[:m]
    return lowest, widest


def _collapse(d: Diagnosis) -> Collapse:
    from elbokit.diagnostics import Collapse

    return Collapse(kl_per_dim=torch.tensor(d.kl_per_dim, dtype=torch.float64),
                    activity=torch.tensor(d.activity, dtype=torch.float64), active_units=d.active_units,
                    mutual_information=float(d.surgery.mutual_information), threshold=d.activity_threshold)  # fmt: skip


def _top_two(kl_per_dim: Sequence[float]) -> tuple[int, int]:
    order = sorted(range(len(kl_per_dim)), key=lambda j: -kl_per_dim[j])
    return order[0], order[1]


def build_sections(d: Diagnosis, *, model: Any, x: Tensor, labels: Tensor | None, image_shape: tuple[int, int] | None,
                   history: Sequence[Mapping[str, Any]], sweep: Sequence[SweepPoint] | None,
                   disentanglement: Disentanglement | None = None, seed: int = 0) -> list[Section]:  # fmt: skip
    """The report's figures, in page order. ``x`` (first ``d.n`` rows used) and ``labels`` are checked by the
    caller (:func:`elbokit.report.render`); model calls run under ``torch.inference_mode``."""
    from elbokit.diagnostics import CurvePoint
    from elbokit.report import plots

    n = d.n
    device = _device(model, x)
    xs = x[:n].to(device)
    flat = xs.reshape(n, -1).detach().cpu().double()  # (n, D)
    labels = labels[:n] if labels is not None else None
    latent_dim = d.latent_dim
    sections: list[Section] = []
    gen = torch.Generator(device=device).manual_seed(seed)

    def add(key: str, make: Callable[[], Any] | None, why: str = "", *, section: str | None = None,
            **fill: Any) -> None:  # fmt: skip
        title, caption = CAPTIONS[key]
        png, note = _figure(make) if make is not None else (None, why)
        sections.append(Section(section or key, title, caption.format(**fill), png, note))

    with torch.inference_mode():
        recon = model.reconstruct(xs).reshape(n, -1).cpu().double() if _has(model, "reconstruct") else None

    if history:
        add("training", lambda: plots.training_curves(numbers_only(history)))
    if image_shape is not None:
        shape = image_shape
        samples = None
        if _has(model, "sample"):
            with torch.inference_mode():
                samples = model.sample(IMAGES, generator=gen, mean=True).reshape(IMAGES, -1).cpu()
        add("samples", (lambda: plots.sample_grid(samples, shape)) if samples is not None else None,
            _missing("sample"))  # fmt: skip
        shown = slice(0, min(RECONSTRUCTED, n))
        add("reconstructions", (lambda: plots.reconstructions(flat[shown], recon[shown], shape))
            if recon is not None else None, _missing("reconstruct"))  # fmt: skip
        by_kl = sorted(range(latent_dim), key=lambda j: -d.kl_per_dim[j])[: min(8, latent_dim)]
        add("traversals", (lambda: plots.latent_traversals(model, shape, dims=by_kl))
            if _has(model, "decode") else None, _missing("decode"))  # fmt: skip
    else:
        features = torch.argsort(flat.var(0) if n > 1 else flat[0].abs(), descending=True)[:FEATURES].tolist()
        m = len(features)
        add("feature-reconstructions", (lambda: plots.feature_reconstructions(flat, recon, features=features))
            if recon is not None else None, _missing("reconstruct"), m=m)  # fmt: skip
        draws = None
        if _has(model, "sample"):
            # A draw of x uses torch's global generator: seeded here, and restored afterwards.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
                torch.manual_seed(seed)
                draws = model.sample(DRAWS, generator=gen, mean=False).reshape(DRAWS, -1).cpu().double()
        add("posterior-predictive", (lambda: plots.feature_marginals(flat, draws, features=features))
            if draws is not None else None, _missing("sample"), m=m, draws=DRAWS)  # fmt: skip
        if getattr(getattr(model, "observation", None), "support", None) == "count" and recon is not None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
                torch.manual_seed(seed)
                predictive = model.reconstruct(xs, mean=False).reshape(n, -1).cpu().double()
            add("mean-variance", lambda: plots.gene_mean_variance(flat, predictive))

    if latent_dim >= 2:
        dims = (0, 1) if latent_dim == 2 else _top_two(d.kl_per_dim)
        which = "the two latents" if latent_dim == 2 else f"z{dims[0]} and z{dims[1]}, the two latents with most KL"
        # Colour by label where there are labels, else by log p(x) where every point has a finite one.
        log_px = torch.tensor(d.points.log_px, dtype=torch.float64)
        by: str | None = "label" if labels is not None else "log_px" if bool(torch.isfinite(log_px).all()) else None
        colours = labels if by == "label" else log_px if by == "log_px" else None

        def scatter() -> Any:
            return plots.latent_scatter(model, xs, colours, dims=dims,
                                        colour_label="log p(x)" if by == "log_px" else "label")  # fmt: skip

        add("latent-space", scatter if _has(model, "encode") else None, _missing("encode"), which=which,
            colour=COLOURS[by])  # fmt: skip
        if image_shape is not None:
            add("manifold", (lambda: plots.latent_manifold(model, image_shape, dims=dims))
                if _has(model, "decode") else None, _missing("decode"), which=which)  # fmt: skip
    else:
        add("latent-space", None, ONE_LATENT, which="the latent", colour=".")
        if image_shape is not None:
            add("manifold", None, ONE_LATENT, which="the latent")

    collapse = _collapse(d)
    add("kl-per-dim", lambda: plots.kl_per_dim(collapse), active=d.active_units, d=latent_dim)
    add("gaps", lambda: plots.gap_waterfall(d.gaps))
    curve = [CurvePoint(p.k, p.value, p.stderr) for p in d.iwae]
    ais = (d.ais.value, d.ais.stderr) if d.ais is not None else None
    add("iwae", lambda: plots.iwae_curve(curve, log_px=(d.log_px, d.log_px_stderr), ais=ais,
                                         reference=(d.gaps.log_px, d.gaps.log_px_stderr)))  # fmt: skip
    k_hat = d.points.pareto_k
    add("pareto-k", lambda: plots.pareto_k_histogram(k_hat), threshold=KHAT_THRESHOLD, n=len(k_hat),
        over=sum(k > KHAT_THRESHOLD for k in k_hat))  # fmt: skip
    sections.append(_worst_section(d, flat, recon, image_shape))
    if disentanglement is not None:
        sections.append(_factor_section(disentanglement, model, image_shape))
    if sweep and all(p.mig is not None for p in sweep):
        add("disentanglement-beta", lambda: plots.disentanglement_vs_beta(list(sweep)))
    if sweep:
        add("rate-distortion", lambda: plots.rate_distortion(list(sweep)))
    else:
        add("rate-distortion-one", lambda: plots.rate_distortion([d.rate_distortion], log_px=float(d.log_px)),
            section="rate-distortion")  # fmt: skip
    return sections


def _worst_section(d: Diagnosis, flat: Tensor, recon: Tensor | None, image_shape: tuple[int, int] | None) -> Section:
    """The points with the lowest log p(x) and with the largest gap log p(x) − ELBO: a figure of them beside their
    reconstructions (when the model reconstructs) and a table of their figures."""
    from elbokit.report import plots

    p = d.points
    m = min(WORST if image_shape is not None else 4, d.n)
    lowest, widest = worst_points(p.log_px, p.elbo, m)
    groups = (("lowest log p(x)", lowest), ("largest log p(x) − ELBO", widest))
    table = [("", "point", "log p(x)", "ELBO", "log p(x) − ELBO", "k̂")]
    for name, chosen in groups:
        table += [(name, f"#{i}", number(p.log_px[i]), number(p.elbo[i]), number(p.log_px[i] - p.elbo[i]),
                   number(p.pareto_k[i], 2)) for i in chosen]  # fmt: skip

    def make() -> Any:
        assert recon is not None
        return plots.point_reconstructions(
            [plots.PointGroup(name, flat[chosen], recon[chosen],
                              [f"#{i}: {number(p.log_px[i] if k == 0 else p.log_px[i] - p.elbo[i], 1)}"
                               for i in chosen])
             for k, (name, chosen) in enumerate(groups)],
            image_shape=image_shape)  # fmt: skip

    if recon is None:
        how = "listed below"
    elif image_shape is not None:
        how = "each image above its reconstruction E[x | z = E_q z]"
    else:
        how = "each point's features (dots) against its reconstruction mean E[x | z = E_q z] (line)"
    title, caption = CAPTIONS["worst-points"]
    png, note = _figure(make) if recon is not None else (None, _missing("reconstruct"))
    return Section("worst-points", title, caption.format(m=m, how=how, threshold=KHAT_THRESHOLD), png, note,
                   tuple(table))  # fmt: skip


def _factor_section(r: Disentanglement, model: Any, image_shape: tuple[int, int] | None) -> Section:
    """The model's disentanglement scores, traversals of the latent that carries each factor, and a table."""
    from elbokit.report import plots

    rows = [f"{name} (z{j})" for name, j in zip(r.factor_names, r.latent_for_factor, strict=True)]
    table = [("factor", "latent", "MIG gap")]
    table += [(name, f"z{j}", number(gap)) for name, j, gap in
              zip(r.factor_names, r.latent_for_factor, r.mig_per_factor, strict=True)]  # fmt: skip
    title, caption = CAPTIONS["disentanglement"]
    caption = caption.format(n=r.n, mig=number(r.mig), d=number(r.dci_disentanglement), c=number(r.dci_completeness),
                             i=number(r.dci_informativeness), fvae=number(r.factor_vae),
                             chance=number(1 / len(r.factor_names)))  # fmt: skip
    if image_shape is None or not _has(model, "decode"):
        return Section("disentanglement", title, caption, None, _missing("decode") if image_shape else None,
                       tuple(table))  # fmt: skip
    png, note = _figure(lambda: plots.latent_traversals(model, image_shape, dims=list(r.latent_for_factor),
                                                        labels=rows))  # fmt: skip
    return Section("disentanglement", title, caption, png, note, tuple(table))
