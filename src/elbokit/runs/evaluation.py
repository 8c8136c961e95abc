"""A run's evaluation: ELBO and log p(x) with its standard error on a split, and how long that takes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from elbokit._json import count, is_real
from elbokit.config import PROPOSALS
from elbokit.distributed import gather_objects, world
from elbokit.estimators import elbo, log_marginal
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.guides.nonamortized import NonAmortizedGaussian, fitted_once
from elbokit.models import Guide
from elbokit.models.base import FixedGuide

if TYPE_CHECKING:
    from elbokit.runs.run import Run


@dataclass(frozen=True)
class Evaluation:
    """Test-set numbers of a run, in nats per data point (means over the n points)."""

    elbo: float
    log_px: float
    log_px_stderr: float  # Monte-Carlo standard error of the mean log p(x) estimate
    kl: float
    reconstruction: float
    n: int
    k: int
    split: str
    bits_per_dim: float | None  # -log p(x) / (D log 2), for discrete (binary) data only
    min_ess: float  # smallest effective sample size of the importance weights over the points
    pareto_k_max: float  # largest Pareto k-hat of the weights' tail over the points
    pareto_k_over_threshold: int  # points whose k-hat exceeds 0.7: their estimate and stderr are unreliable
    # the importance-sampling proposal: "encoder" (q(z|x)) or "refined" (q refined per point in the
    # full-covariance family and mixed defensively with a widened copy: elbokit.diagnostics.refined_proposal)
    proposal: str = "encoder"
    kl_method: str = "analytic"  # how the ELBO's KL was computed: "analytic" (closed form) or "mc" (a flow's q)
    checkpoint: str | None = None  # the run's checkpoint evaluated: "last" or "best"
    epoch: int | None = None  # ... and its epoch and step
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the layout of ``evaluation.json``)."""
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "evaluation") -> Evaluation:
        """Build from :meth:`to_dict`'s layout, checking each value's type (ValueError, one line)."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(d).__name__}")
        for name, (check, optional) in _FIELDS.items():
            if d.get(name) is None and optional:
                continue
            if name not in d or not check(d[name]):
                raise ValueError(f"{source}: {name!r} is missing or of the wrong type")
        unknown = sorted(set(d) - set(_FIELDS))
        if unknown:
            raise ValueError(f"{source}: unknown key {unknown[0]!r}")
        return cls(**d)


def _text(value: Any) -> bool:
    return isinstance(value, str)


#: Evaluation's fields: the check of each value, and whether it may be null or absent.
_FIELDS: dict[str, tuple[Callable[[Any], bool], bool]] = {
    **dict.fromkeys(("elbo", "log_px", "log_px_stderr", "kl", "reconstruction", "min_ess", "pareto_k_max"),
                    (is_real, False)),
    "n": (count(), False), "k": (count(), False), "pareto_k_over_threshold": (count(), False),
    "split": (_text, False), "bits_per_dim": (is_real, True), "proposal": (_text, True),
    "kl_method": (_text, True), "checkpoint": (_text, True), "epoch": (count(), True),
    "step": (count(), True),
}  # fmt: skip


def evaluate(run: Run, *, k: int = 1000, split: str = "test", limit: int | None = None, batch_size: int = 100,
             seed: int = 0, proposal: str = "refined", refine_steps: int = 300,
             progress: bool = False) -> Evaluation:  # fmt: skip
    """ELBO (analytic KL where registered) and importance-sampled log p(x) with its standard error on a split.

    ``proposal="refined"`` draws the importance samples from the encoder's q refined per point in the
    full-covariance Gaussian family (``refine_steps`` steps) and mixed defensively with a widened copy
    (:func:`elbokit.diagnostics.refined_proposal`): on a mean-field VAE its weights are far lighter-tailed than
    the encoder's own (see the Pareto k-hat count). ``"encoder"`` uses q(z|x) as it is. ``progress``: a progress
    bar over the batches on stderr.
    """
    from elbokit.diagnostics.reference import refined_proposal

    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {', '.join(PROPOSALS)}, got {proposal!r}")
    x_all = run.data.split(split)[:limit]
    device = next(run.model.parameters()).device
    starts = list(range(0, x_all.shape[0], batch_size))
    mine = [starts[i] for i in world().shard(len(starts))]  # in a process group: whole batches per rank
    records: list[tuple[float, ...]] = []  # per batch: elbo, kl, reconstruction, log p(x), variance sums; ESS,
    kl_method = "analytic"  # k-hat max (or -inf), k-hat count
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        bar = tqdm(mine, desc="evaluate", unit="batch", leave=False, disable=not (progress and len(mine) > 1))
        for start in bar:
            # Each batch's draws follow (seed, its first point) alone: the same numbers on any number of ranks
            torch.manual_seed(seed * 1_000_003 + start)
            x = x_all[start : start + batch_size].to(device)
            encoder = fitted_once(run.model.encoder, x)
            guide: Guide = encoder
            if proposal == "refined":  # an optimisation per point: autograd on, outside inference mode
                r = refined_proposal(run.model, encoder, x, steps=refine_steps)
                guide = FixedGuide(r)
            with torch.inference_mode():
                bound = elbo(run.model, encoder, x)
                kl_method = bound.kl_method
                estimate = log_marginal(run.model, guide, x, k=k, warn=False)
            assert estimate.pareto_k is not None
            khat = estimate.pareto_k[torch.isfinite(estimate.pareto_k)]
            records.append((
                float(bound.value.sum()), float(bound.kl.sum()), float(bound.reconstruction.sum()),
                float(estimate.value.sum()), float(estimate.stderr.square().sum()), float(estimate.ess.min()),
                float(khat.max()) if khat.numel() else -math.inf, float((estimate.pareto_k > KHAT_THRESHOLD).sum()),
            ))  # fmt: skip
    gathered = gather_objects((records, kl_method))
    records = [record for part, _ in gathered for record in part]  # in batch order: summed as one process does
    kl_method = next((method for part, method in gathered if part), kl_method)
    totals = {"elbo": 0.0, "kl": 0.0, "reconstruction": 0.0, "log_px": 0.0, "var": 0.0}
    min_ess, khat_max, khat_over = math.inf, -math.inf, 0
    for record in records:
        for name, value in zip(totals, record[:5], strict=True):
            totals[name] += value
        min_ess, khat_max, khat_over = min(min_ess, record[5]), max(khat_max, record[6]), khat_over + int(record[7])
    n = x_all.shape[0]
    log_px = totals["log_px"] / n
    # Bits per dimension are a code length, meaningful for discrete data only (for continuous x, log p(x) is a
    # density and -log p(x) / (D log 2) can be any real number).
    bits = -log_px / (run.data.data_dim * math.log(2)) if run.data.support == "binary" else None
    return Evaluation(
        elbo=totals["elbo"] / n, log_px=log_px, log_px_stderr=math.sqrt(totals["var"]) / n, kl=totals["kl"] / n,
        reconstruction=totals["reconstruction"] / n, n=n, k=k, split=split, bits_per_dim=bits, min_ess=min_ess,
        pareto_k_max=khat_max, pareto_k_over_threshold=khat_over, proposal=proposal, kl_method=kl_method,
        checkpoint=getattr(run, "checkpoint", None), epoch=run.state.get("epoch"), step=run.state.get("step"),
    )  # fmt: skip


def evaluation_seconds(run: Run, *, k: int, n: int, batch_size: int = 100, proposal: str = "refined",
                       refine_steps: int = 300) -> float:  # fmt: skip
    """About how long :func:`evaluate` takes here: one batch is timed at a small k (and a few refinement steps)
    and scaled to ``k``, ``refine_steps`` and the number of batches. The draws do not disturb the seeded ones."""
    from elbokit.diagnostics.reference import refined_proposal

    device = next(run.model.parameters()).device
    x = run.data.test[: min(batch_size, n)].to(device)
    batches = math.ceil(n / x.shape[0])
    fit_seconds = 0.0
    encoder: Guide = run.model.encoder
    if isinstance(encoder, NonAmortizedGaussian):  # q fitted per point: timed once, as evaluate fits it once
        started = time.perf_counter()
        encoder = fitted_once(encoder, x)
        fit_seconds = time.perf_counter() - started

    def timed(work: Callable[[], object]) -> float:
        started = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    def draws(count: int) -> Callable[[], object]:
        return lambda: log_marginal(run.model, encoder, x, k=count, warn=False)

    def refinement(steps: int) -> Callable[[], object]:
        return lambda: refined_proposal(run.model, encoder, x, steps=steps)

    # Two pilots each (the faster of two runs), so that the fixed cost of a call is not scaled with k or the steps.
    # On a small model the two pilots differ by less than the clock's noise, and their difference can be 0 or
    # negative: the marginal cost is then floored at 1/FIXED_SHARE of the larger pilot's average, never 0 (a zero
    # estimate once let a k = 10**12 evaluation start).
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with torch.inference_mode():
            small, large = (min(timed(draws(count)), timed(draws(count))) for count in (16, 256))
        per_draw = max((large - small) / 240, large / 256 / _FIXED_SHARE)
        seconds = large + per_draw * max(k - 256, 0)
        if proposal == "refined":
            small, large = timed(refinement(2)), timed(refinement(8))
            per_step = max((large - small) / 6, large / 8 / _FIXED_SHARE)
            seconds += large + per_step * max(refine_steps - 8, 0)
    return (seconds + fit_seconds) * batches


#: At most this share of a pilot's time is taken for a call's fixed cost when its marginal cost is not measurable.
_FIXED_SHARE = 16

