"""Figures of the bound's diagnostics: KL per dimension, the gap waterfall, the IWAE curve, the rate-distortion
plane and mode seeking."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from elbokit.diagnostics.collapse import Collapse
from elbokit.diagnostics.evidence import CurvePoint
from elbokit.diagnostics.gaps import Gaps, GapSummary
from elbokit.diagnostics.mode_seeking import ModeSeekingResult
from elbokit.diagnostics.rate_distortion import RatePoint, SweepPoint, elbo_line
from elbokit.report.plots._base import (
    ACTIVE,
    INACTIVE,
    NATS,
    _figure,
    _numpy,
)

# -- posterior collapse ---------------------------------------------------------------------------------------


def kl_per_dim(collapse: Collapse) -> Figure:
    """Mean KL(q(z_j|x) || p(z_j)) of each latent dimension, active units in colour, inactive ones in grey.

    Look for how many dimensions carry information: an inactive unit (Burda et al. 2016's activity
    Cov_x E_q[z_j] below the threshold) has a KL near 0, its q(z_j|x) equal to the prior for every x.
    """
    kl = _numpy(collapse.kl_per_dim).reshape(-1)
    active = (_numpy(collapse.activity).reshape(-1) > collapse.threshold).tolist()
    d = len(kl)
    if d < 1 or len(active) != d:
        raise ValueError(f"kl_per_dim and activity must be (d,) with d >= 1, got {len(kl)} and {len(active)} entries")
    fig = _figure(min(9.0, max(6.0, 3.0 + 0.15 * d)), 4.0)
    ax = fig.add_subplot()
    ax.bar(np.arange(d), kl, color=[ACTIVE if a else INACTIVE for a in active], width=0.8)
    handles = [
        Patch(color=ACTIVE, label=rf"active ($\mathrm{{Cov}}_x\,E_q[z_j]$ > {collapse.threshold:g})"),
        Patch(color=INACTIVE, label="inactive"),
    ]
    ax.legend(handles=handles, fontsize="small")
    if d <= 20:
        ax.set_xticks(np.arange(d))
    ax.set(
        title=f"KL per latent dimension: {collapse.active_units} of {d} active\n"
        f"(mutual information I(x; z) = {collapse.mutual_information:.2f} nats)",
        xlabel="latent dimension j",
        ylabel=f"KL(q(z_j|x) || p(z_j)), {NATS}",
    )
    return fig


# -- the bound and the evidence --------------------------------------------------------------------------------


def gap_waterfall(gaps: Gaps | GapSummary) -> Figure:
    r"""The inference gap as a waterfall: log p̂(x), down by the approximation gap to L[q*], down by the
    amortization gap to L[q], and beside it the noise of a single-draw ELBO estimate.

    .. math::
        \log \hat p(x) - \mathcal L[q] = \underbrace{\log \hat p(x) - \mathcal L[q^*]}_{\text{approximation}}
        + \underbrace{\mathcal L[q^*] - \mathcal L[q]}_{\text{amortization}}

    Look for which gap dominates: a large amortization gap says a better encoder (or refinement) would help; a
    large approximation gap says the Gaussian family itself is too poor. Set both against the sample noise.

    References:
        Cremer, Li & Duvenaud, "Inference suboptimality in variational autoencoders", ICML 2018.
    """
    s = gaps.summary() if isinstance(gaps, Gaps) else gaps
    levels = (s.log_px, s.elbo_optimal, s.elbo_amortized)
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    half = 0.3
    ax.errorbar([0], [s.log_px], yerr=[2 * s.log_px_stderr], fmt="none", ecolor="black", capsize=4)
    ax.hlines(
        [s.log_px], -half, half, color="black", linewidth=3, label=r"$\log \hat p(x)$ (importance-sampled, ±2 se)"
    )
    ax.bar(
        [1],
        [-s.approximation],
        bottom=[s.log_px],
        width=2 * half,
        color="C1",
        label=r"approximation gap $\log \hat p(x) - \mathcal{L}[q^*]$",
    )
    ax.bar(
        [2],
        [-s.amortization],
        bottom=[s.elbo_optimal],
        width=2 * half,
        color="C2",
        label=r"amortization gap $\mathcal{L}[q^*] - \mathcal{L}[q]$",
    )
    for x0, level in ((0, s.log_px), (1, s.elbo_optimal), (2, s.elbo_amortized)):
        ax.hlines([level], x0 + half, x0 + 1 - half, color="0.4", linestyle=":", linewidth=1)  # connectors
    ax.errorbar(
        [3],
        [s.elbo_amortized],
        yerr=[s.elbo_sample_sd],
        fmt="o",
        color="C3",
        capsize=6,
        label=r"ELBO sample noise: ±1 sd of a single-draw estimate of $\mathcal{L}[q]$",
    )
    notes = (
        (0, s.log_px, f"{s.log_px:.2f}"),
        (1, s.elbo_optimal, f"−{s.approximation:.2f}" if s.approximation >= 0 else f"+{-s.approximation:.2f}"),
        (2, s.elbo_amortized, f"−{s.amortization:.2f}" if s.amortization >= 0 else f"+{-s.amortization:.2f}"),
        (3, s.elbo_amortized, f"±{s.elbo_sample_sd:.2f}"),
    )
    low = min(*levels, s.elbo_amortized - s.elbo_sample_sd, s.log_px - 2 * s.log_px_stderr)
    high = max(*levels, s.elbo_amortized + s.elbo_sample_sd, s.log_px + 2 * s.log_px_stderr)
    span = max(high - low, 1e-3)
    for x0, y0, text in notes:
        ax.annotate(text, (x0 + half, y0), xytext=(4, -2), textcoords="offset points", fontsize="small", va="top")
    ax.set_ylim(low - 0.15 * span, high + 0.35 * span)  # headroom for the legend
    ax.set_xlim(-0.6, 3.9)
    ax.set_xticks([0, 1, 2, 3], [r"$\log \hat p(x)$", r"$\mathcal{L}[q^*]$", r"$\mathcal{L}[q]$", "ELBO sample noise"])
    ax.set(title=f"Inference gap (n = {s.n}, {s.family} Gaussian q*, {s.steps} refinement steps)", ylabel=NATS)
    ax.legend(fontsize="x-small", loc="upper right")
    return fig


def iwae_curve(
    points: Sequence[CurvePoint],
    *,
    log_px: tuple[float, float] | None = None,
    ais: tuple[float, float] | None = None,
    reference: tuple[float, float] | None = None,
) -> Figure:
    """IWAE_k against k (log axis) with ±2 standard-error bars, and reference lines for log p̂(x).

    Look for the curve flattening: still climbing at the largest k, IWAE_k (and any log p(x) estimated with as
    many samples) is still biased low. The gap between the curve and the AIS line is bias IWAE_k has left.

    Args:
        points: the curve, e.g. from :func:`elbokit.diagnostics.iwae_curve`.
        log_px: (value, stderr) of an importance-sampled log p̂(x), drawn as a line with a ±2 stderr band.
        ais: (value, stderr) of an AIS estimate of log p(x), drawn likewise.
        reference: (value, stderr) of log p̂(x) importance-sampled from the refined full-covariance proposal
            (the gaps' reference, :func:`elbokit.diagnostics.refined_proposal`), drawn likewise.

    Raises:
        ValueError: for no points or a k < 1.
    """
    if not points:
        raise ValueError("points must hold at least one CurvePoint, got none")
    ordered = sorted(points, key=lambda p: p.k)
    if ordered[0].k < 1:
        raise ValueError(f"every k must be >= 1, got {ordered[0].k}")
    k = np.array([p.k for p in ordered], dtype=np.float64)
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    ax.errorbar(
        k,
        [p.value for p in ordered],
        yerr=[2 * p.stderr for p in ordered],
        fmt="o-",
        color="C0",
        capsize=3,
        label=r"IWAE$_k$ (mean over points, ±2 se)",
    )
    for level, name, colour in (
        (log_px, r"$\log \hat p(x)$, importance-sampled from q(z|x)", "C1"),
        (ais, r"$\log \hat p(x)$, AIS", "C2"),
        (reference, r"$\log \hat p(x)$, refined proposal", "C3"),
    ):
        if level is not None:
            value, stderr = level
            ax.axhline(value, color=colour, linestyle="--", label=f"{name} (±2 se band)")
            ax.axhspan(value - 2 * stderr, value + 2 * stderr, color=colour, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    if len(k) == 1:
        ax.set_xlim(k[0] / 3, k[0] * 3)
    ax.set(
        title=r"IWAE$_k$ bound against the number of samples k",
        xlabel="k (importance samples per point, log scale)",
        ylabel=NATS,
    )
    ax.legend(fontsize="small")
    return fig


def rate_distortion(points: Sequence[SweepPoint] | Sequence[RatePoint], *, log_px: float | None = None) -> Figure:
    r"""Models in the rate-distortion plane (Alemi et al. 2018), each with its line of constant ELBO.

    .. math::
        R + D = -\mathrm{ELBO}, \qquad R + D \ge -\log p(x)

    Each point is (R, D) with ±2 standard-error bars on D (R is in closed form); the dashed line through it is
    its ELBO's (slope -1): points on one line have the same bound. The dotted line R + D = -log p̂(x) is the
    lowest any guide for that model can reach. Look for the trade: a larger β moves left (less rate) and up
    (more distortion); a point at R ≈ 0 has collapsed.

    Args:
        points: SweepPoints (annotated with β; the dotted line is the best model's log p̂(x)) or RatePoints.
        log_px: log p̂(x) whose line to draw (for SweepPoints it replaces the best model's).

    Raises:
        ValueError: for no points or a mix of SweepPoints and RatePoints.

    References:
        Alemi, Poole, Fischer, Dillon, Saurous & Murphy, "Fixing a broken ELBO", ICML 2018.
    """
    items: list[SweepPoint | RatePoint] = list(points)
    if not items:
        raise ValueError("points must hold at least one SweepPoint or RatePoint, got none")
    sweep = all(isinstance(p, SweepPoint) for p in items)
    if not sweep and not all(isinstance(p, RatePoint) for p in items):
        kinds = sorted({type(p).__name__ for p in items})
        raise ValueError(f"points must be all SweepPoints or all RatePoints, got {', '.join(kinds)}")
    rates = [p.rate for p in items]
    r_max = 1.25 * max(max(rates), 0.0) + 0.5
    ends = [0.0, r_max]
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot()
    for n, p in enumerate(items):
        colour = f"C{n % 10}"
        ax.plot(
            ends,
            elbo_line(p.elbo, ends),
            "--",
            color=colour,
            linewidth=1,
            alpha=0.8,
            label="R + D = −ELBO (constant ELBO)" if n == 0 else "_nolegend_",
        )
        spread = 2 * p.distortion_stderr if math.isfinite(p.distortion_stderr) else 0.0  # inf: one point, K = 1
        ax.errorbar(
            [p.rate],
            [p.distortion],
            yerr=[spread],
            fmt="o",
            color=colour,
            capsize=3,
            label="model (R, D), ±2 se in D" if n == 0 else "_nolegend_",
        )
        if isinstance(p, SweepPoint):
            ax.annotate(
                f"β={p.beta:g}", (p.rate, p.distortion), xytext=(5, 5), textcoords="offset points", fontsize="small"
            )
    evidence: tuple[float, str] | None = None
    if log_px is not None:
        evidence = (log_px, r"R + D = $-\log \hat p(x)$")
    elif sweep:
        best = max((p for p in items if isinstance(p, SweepPoint)), key=lambda p: p.log_px)
        evidence = (best.log_px, rf"R + D = $-\log \hat p(x)$ of the best model (β={best.beta:g})")
    if evidence is not None:
        ax.plot(ends, elbo_line(evidence[0], ends), ":", color="black", linewidth=1.5, label=evidence[1])
    ax.set_xlim(0.0, r_max)
    ax.set(
        title="Rate-distortion plane (Alemi et al. 2018)",
        xlabel=rf"rate R = KL(q(z|x) || p(z)), {NATS}",
        ylabel=rf"distortion D = $-E_q \log p(x|z)$, {NATS}",
    )
    ax.legend(fontsize="small")
    return fig


def mode_seeking(result: ModeSeekingResult) -> Figure:
    """A two-mode target and the Gaussians fitted to it by the reverse KL (the ELBO's) and by the forward KL.

    Look for the reverse-KL q sitting inside one mode (mode-seeking: it avoids mass where p has none) and the
    forward-KL q spread over both and the empty valley between (mass-covering).
    """
    grid = _numpy(result.grid)
    densities = [_numpy(t) for t in (result.target_log_density, result.reverse_log_density, result.forward_log_density)]
    if any(t.shape != grid.shape for t in densities) or grid.ndim != 1:
        raise ValueError(
            f"the log densities must match the grid's shape {grid.shape}, got {[t.shape for t in densities]}"
        )
    target, reverse, forward = (np.exp(t) for t in densities)
    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot()
    ax.fill_between(grid, target, color="0.75", label="target p(z), two modes")
    r, f = result.reverse, result.forward
    ax.plot(
        grid,
        reverse,
        color="C0",
        linewidth=2,
        label=f"reverse KL(q || p), the ELBO's: mode-seeking (m = {r.loc:.2f}, s = {r.scale:.2f})",
    )
    ax.plot(
        grid,
        forward,
        color="C1",
        linewidth=2,
        linestyle="--",
        label=f"forward KL(p || q): mass-covering (m = {f.loc:.2f}, s = {f.scale:.2f})",
    )
    for n, mode in enumerate(result.modes):
        ax.axvline(mode, color="black", linestyle=":", linewidth=1, label="modes of p" if n == 0 else "_nolegend_")
    ax.set_ylim(0.0, 1.75 * float(max(target.max(), reverse.max(), forward.max())))
    ax.set(
        title="A Gaussian q fitted to two modes: reverse against forward KL", xlabel="z", ylabel="density (per unit z)"
    )
    ax.legend(fontsize="small", loc="upper left")
    return fig
