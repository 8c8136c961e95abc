r"""Figures of a run and of its diagnostics, as ``matplotlib.figure.Figure`` objects.

Each function here takes one of the library's typed results (a :class:`~elbokit.train.FitResult`, a
:class:`~elbokit.models.VAE`, :class:`~elbokit.diagnostics.Collapse`, :class:`~elbokit.diagnostics.GapSummary`,
IWAE curve points, rate-distortion points, :class:`~elbokit.diagnostics.ModeSeekingResult`, per-point k̂, points
with their reconstructions, draws from the model) and returns a new Figure, built without pyplot: no backend is
selected, no global figure registry is touched, and nothing is shown or saved (``fig.savefig(buffer,
format="png")`` renders one, as the HTML report does). Values are in nats per data point. This package
(``plots.training``; ``plots.latent``: images and the latent space; ``plots.bounds``: the bound's diagnostics;
``plots.points``: single points and single features) is the only part of elbokit that imports matplotlib, so the
rest of the library, the training loop and the diagnostics included, runs without it.
"""

from __future__ import annotations

from elbokit.report.plots.bounds import (
    gap_waterfall,
    iwae_curve,
    kl_per_dim,
    mode_seeking,
    rate_distortion,
)
from elbokit.report.plots.counts import gene_mean_variance
from elbokit.report.plots.factors import disentanglement_vs_beta
from elbokit.report.plots.latent import (
    latent_manifold,
    latent_scatter,
    latent_traversals,
    reconstructions,
    sample_grid,
)
from elbokit.report.plots.points import (
    PointGroup,
    feature_marginals,
    feature_reconstructions,
    pareto_k_histogram,
    point_reconstructions,
)
from elbokit.report.plots.training import training_curves

__all__ = [
    "PointGroup",
    "disentanglement_vs_beta",
    "feature_marginals",
    "feature_reconstructions",
    "gap_waterfall",
    "gene_mean_variance",
    "iwae_curve",
    "kl_per_dim",
    "latent_manifold",
    "latent_scatter",
    "latent_traversals",
    "mode_seeking",
    "pareto_k_histogram",
    "point_reconstructions",
    "rate_distortion",
    "reconstructions",
    "sample_grid",
    "training_curves",
]
