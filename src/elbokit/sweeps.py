"""β sweeps: one run per β, trained and placed on the rate-distortion plane (Alemi et al. 2018).

They train runs, so they live above :mod:`elbokit.runs`; :mod:`elbokit.diagnostics` only measures.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from elbokit.config import RunConfig
from elbokit.data import Dataset
from elbokit.diagnostics.rate_distortion import SweepPoint, rate_distortion
from elbokit.distributed import alone, barrier, gather_objects, rank_device, world
from elbokit.estimators._weights import check_positive_int
from elbokit.runs import (
    EVALUATION,
    SCORES,
    Run,
    absolute_data,
    evaluate,
    factor_scores,
    holds_run,
    load_data,
    new_model,
    resolve_likelihood,
    write_json,
    writing_run,
)
from elbokit.runs.factors import check_scorable
from elbokit.train.loop import fit


def sweep(
    config: RunConfig,
    betas: Sequence[float],
    out: Path | None = None,
    *,
    k: int = 1000,
    limit: int | None = 1000,
    samples: int = 10,
    factor_points: int | None = 5000,
    overwrite: bool = False,
) -> list[SweepPoint]:
    r"""Train one model per β and place each on the rate-distortion plane, with its log p(x).

    Each model is trained as ``elbokit fit`` trains one, on ``config`` with ``beta`` replaced: the same seed,
    data and initialisation for every β. Each run goes to ``out / f"beta-{b:g}"``, an ordinary run directory
    (config.json, dataset.json, metrics.jsonl, checkpoint, evaluation.json) that ``elbokit evaluate`` reads.
    On the first ``limit`` test points it then measures

    .. math::
        R_\beta, \quad D_\beta, \quad \mathrm{ELBO}_\beta = -(R_\beta + D_\beta), \quad
        \log \hat p_\beta(x) \ (\text{importance sampling, } k \text{ draws})

    and, for data with known generative factors (the sprite datasets), the disentanglement of the codes E_q z of
    the first ``factor_points`` test points (:func:`elbokit.diagnostics.disentanglement`: MIG, DCI, FactorVAE),
    which tests the claim that a larger β finds the factors (Higgins et al. 2017).

    Args:
        config: the run's settings; its ``beta`` is replaced by each of ``betas``.
        betas: KL weights, each >= 0.
        out: parent folder of the run directories (``None``: nothing written).
        k: importance samples per point for log p(x).
        limit: evaluate on the first ``limit`` test points (``None``: all).
        samples: draws of z per point for the distortion.
        factor_points: the test points whose codes the disentanglement metrics use (``None``: all); ignored for
            data without known factors.
        overwrite: replace runs already in the run directories (otherwise they are an error).

    Returns:
        One SweepPoint per β, in the order given.

    References:
        Alemi et al. (2018). Fixing a broken ELBO. ICML.
        Higgins et al. (2017). β-VAE: learning basic visual concepts with a constrained variational framework. ICLR.
    """
    betas = [float(b) for b in betas]
    if not betas:
        raise ValueError("betas must hold at least one value, got none")
    for b in betas:
        if not (math.isfinite(b) and b >= 0):
            raise ValueError(f"every beta must be a finite number >= 0, got {b}")
    if len(set(f"{b:g}" for b in betas)) != len(betas):
        raise ValueError(f"betas must be distinct, got {betas}")
    check_positive_int("k", k)
    check_positive_int("samples", samples)
    for name, value in (("limit", limit), ("factor_points", factor_points)):
        if value is not None:
            check_positive_int(name, value)
    dirs = [None if out is None else Path(out) / f"beta-{b:g}" for b in betas]
    for d in dirs:
        if d is not None and holds_run(d) and not overwrite:
            raise ValueError(f"{d} already holds a run; pass overwrite=True to replace it")
    config = absolute_data(config)
    data = load_data(config)
    config = resolve_likelihood(config, data)
    check_scorable(data)
    # In a process group each rank trains its own contiguous share of the β values, alone, on its own device
    w = world()
    config = dataclasses.replace(config, device=rank_device(config.device))
    barrier()  # every rank has checked the folders before any writes to them
    mine = list(w.shard(len(betas)))
    points = []
    with alone():
        for i in mine:
            points.append(_sweep_point(config, data, betas[i], dirs[i], k=k, limit=limit, samples=samples,
                                       factor_points=factor_points, overwrite=overwrite))  # fmt: skip
    return [point for part in gather_objects(points) for point in part]


def _sweep_point(config: RunConfig, data: Dataset, b: float, run_dir: Path | None, *, k: int, limit: int | None,
                 samples: int, factor_points: int | None, overwrite: bool) -> SweepPoint:  # fmt: skip
    """One β of :func:`sweep`: trained, evaluated and placed on the rate-distortion plane."""
    cfg = dataclasses.replace(config, beta=b)
    model = new_model(cfg, data)
    with warnings.catch_warnings():
        # A constant β below 1 is the point of the sweep, not a mistake to warn about.
        warnings.filterwarnings("ignore", message="β is .* throughout")
        if run_dir is None:
            fit(model, model.encoder, data, cfg)
        else:
            with writing_run(run_dir, cfg, data, overwrite=overwrite) as writer:
                fit(model, model.encoder, data, cfg, out=run_dir, on_checkpoint=writer.committed)
    model.eval()
    evaluation = evaluate(
        Run(run_dir or Path("."), cfg, data, model, {}), k=k, limit=limit, seed=cfg.seed, proposal="encoder"
    )
    if run_dir is not None:
        write_json(run_dir / EVALUATION, evaluation.to_dict())
    device = next(model.parameters()).device
    x = data.test[:limit].to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        point = rate_distortion(model, model.encoder, x, samples=samples, batch_size=100)
    scores = factor_scores(model, data, "test", limit=factor_points, data_seed=cfg.seed, seed=cfg.seed)
    return SweepPoint(
        beta=b, rate=point.rate, distortion=point.distortion, elbo=point.elbo, log_px=evaluation.log_px,
        log_px_stderr=evaluation.log_px_stderr, rate_stderr=point.rate_stderr,
        distortion_stderr=point.distortion_stderr, min_ess=evaluation.min_ess, path=run_dir,
        **({} if scores is None else {name: getattr(scores, name) for name in SCORES}),
    )  # fmt: skip
