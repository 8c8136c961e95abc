r"""What a trained Bayesian neural network predicts, and how honest its uncertainty is: :func:`evaluate_bnn`.

The predictive distribution is the mixture over S weight draws w_s ~ q(w),
p(y | x) ≈ (1/S) Σ_s p(y | x, w_s). On a split it gives

- the test log-likelihood, mean over points of log (1/S) Σ_s p(y_i | x_i, w_s) (the figure of the UCI protocol of
  Hernández-Lobato & Adams 2015), with its standard error over the points;
- RMSE of the predictive mean (regression) or the error rate of its most probable class (classification);
- calibration. Regression: the probability integral transform u_i = P(Y ≤ y_i | x_i) = (1/S) Σ_s F(y_i | x_i, w_s),
  exact for the mixture; the central interval of level a holds y_i exactly when |u_i − ½| ≤ a/2, so each level's
  coverage is read off the u_i, and a calibrated model covers a fraction a of the points at every level.
  Classification: the reliability of the top-class probability in ten bins, and the expected calibration error.
- the split of predictive variance into epistemic (the variance of the draws' means: what more data would remove)
  and aleatoric (the mean of the draws' noise variances) parts, and per point, for the uncertainty-vs-error plot.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor
from torch.distributions import Categorical

from elbokit.models.bnn import BNN

#: The central-interval levels whose coverage is reported.
LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
#: Bins of the top-class probability in a classifier's reliability table.
BINS = 10


@dataclass
class BNNEvaluation:
    """A BNN's predictive figures on one split (per data point; log-likelihoods in nats, y in its own units).

    ``coverage`` maps each level of :data:`LEVELS` to the fraction of points inside their central predictive
    interval (regression); ``reliability`` holds, per bin of the top-class probability, (count, mean confidence,
    accuracy) (classification). ``points`` keeps per-point arrays for the report's figures (not in
    :meth:`to_dict`)."""

    split: str
    n: int
    samples: int
    task: str
    log_likelihood: float
    log_likelihood_stderr: float
    rmse: float | None = None
    error: float | None = None
    coverage: dict[str, float] = field(default_factory=dict)
    calibration_error: float = 0.0  # mean |coverage - level| (regression) or ECE (classification)
    reliability: list[tuple[int, float, float]] = field(default_factory=list)
    epistemic: float = 0.0  # mean over points of the epistemic variance (regression) or mutual information
    aleatoric: float = 0.0  # mean of the aleatoric variance (regression) or expected entropy
    points: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("points")
        out["reliability"] = [list(row) for row in self.reliability]
        return out


@torch.no_grad()
def evaluate_bnn(model: BNN, x: Tensor, y: Tensor, *, samples: int = 100, seed: int = 0, split: str = "test",
                 batch_size: int = 500) -> BNNEvaluation:  # fmt: skip
    """The predictive figures of ``model`` on (x, y) by ``samples`` weight draws (seeded by ``seed``), computed in
    minibatches of ``batch_size`` points."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        p = model.likelihood(model.outputs(xb, samples=samples, generator=generator))
        log_p = p.log_prob(yb)  # (S, B)
        got = {"log_likelihood": torch.logsumexp(log_p, 0) - math.log(samples)}
        if model.task == "regression":
            means, variances = p.mean, p.variance  # (S, B)
            got |= {
                "mean": means.mean(0), "epistemic": means.var(0, correction=0), "aleatoric": variances.mean(0),
                "pit": p.cdf(yb.expand_as(means)).mean(0),
            }  # fmt: skip
        else:
            probs = cast(Categorical, p).probs  # (S, B, C)
            mean = probs.mean(0)
            entropy = -(mean * mean.clamp_min(1e-30).log()).sum(-1)
            expected = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean(0)
            confidence, predicted = mean.max(-1)
            got |= {"confidence": confidence, "correct": (predicted == yb).double(), "entropy": entropy,
                    "aleatoric": expected, "epistemic": (entropy - expected).clamp_min(0)}  # fmt: skip
        for name, value in got.items():
            parts.setdefault(name, []).append(value.double().cpu())
    v = {name: torch.cat(chunks) for name, chunks in parts.items()}
    n = x.shape[0]
    ll = v["log_likelihood"]
    out = BNNEvaluation(split=split, n=n, samples=samples, task=model.task, log_likelihood=float(ll.mean()),
                        log_likelihood_stderr=float(ll.std(correction=1) / math.sqrt(n)) if n > 1 else 0.0,
                        epistemic=float(v["epistemic"].mean()), aleatoric=float(v["aleatoric"].mean()))  # fmt: skip
    if model.task == "regression":
        error = v["mean"] - y.double().cpu()
        out.rmse = float(error.square().mean().sqrt())
        u = v["pit"]
        out.coverage = {f"{a:g}": float(((u - 0.5).abs() <= a / 2).double().mean()) for a in LEVELS}
        out.calibration_error = float(sum(abs(out.coverage[f"{a:g}"] - a) for a in LEVELS) / len(LEVELS))
        sd = (v["epistemic"] + v["aleatoric"]).sqrt()
        out.points = {"abs_error": error.abs().tolist(), "sd": sd.tolist(), "pit": u.tolist(),
                      "epistemic_sd": v["epistemic"].sqrt().tolist()}  # fmt: skip
    else:
        correct, confidence = v["correct"], v["confidence"]
        out.error = float(1 - correct.mean())
        edges = torch.linspace(0, 1, BINS + 1, dtype=torch.float64)
        which = torch.bucketize(confidence, edges[1:-1])  # bin i holds (edges[i], edges[i+1]]
        rows, ece = [], 0.0
        for i in range(BINS):
            inside = which == i
            count = int(inside.sum())
            if count:
                conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
                rows.append((count, conf, acc))
                ece += count / n * abs(conf - acc)
        out.reliability, out.calibration_error = rows, ece
        out.points = {"confidence": confidence.tolist(), "correct": correct.tolist(), "entropy": v["entropy"].tolist(),
                      "epistemic": v["epistemic"].tolist()}  # fmt: skip
    return out
