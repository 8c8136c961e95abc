"""``elbokit evaluate``: ELBO and log p(x) ± its standard error on a run's split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from elbokit.cli._args import _positive_int, add_checkpoint, add_device, add_nproc_flag, check_duration
from elbokit.config import PROPOSALS


def add_command(commands: Any) -> None:
    p = commands.add_parser(
        "evaluate", help="ELBO and log p(x) with its standard error on a run's test set",
        description="Evaluate a trained run: ELBO, importance-sampled log p(x) ± its standard error, KL and "
        "reconstruction, in nats per point (and bits/dim for discrete images).",
    )  # fmt: skip
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--k", type=_positive_int, default=None, help="importance samples per point (default 1000); "
                   "for a bnn run, weight draws of the predictive distribution (default 100)")  # fmt: skip
    p.add_argument("--split", choices=("train", "validation", "test"), default="test", help="default test")
    p.add_argument("--limit", type=_positive_int, default=None, help="first N points of the split only")
    p.add_argument("--proposal", choices=PROPOSALS, default="refined",
                   help="importance-sampling proposal: refined (the encoder's q refined per point in the "
                   "full-covariance family, mixed defensively; default) or encoder (q(z|x) as it is)")  # fmt: skip
    p.add_argument("--refine-steps", type=_positive_int, default=300,
                   help="most refinement steps of the refined proposal (default 300)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_device(p)
    add_checkpoint(p)
    add_nproc_flag(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from elbokit.runs import Run, evaluation_seconds

    r = Run.open(args.run, device=args.device, checkpoint=args.checkpoint)
    if r.config.model == "bnn":
        return _evaluate_bnn(r, args)
    args.k = 1000 if args.k is None else args.k
    n = r.data.split(args.split)[: args.limit].shape[0]
    seconds = evaluation_seconds(r, k=args.k, n=n, proposal=args.proposal, refine_steps=args.refine_steps)
    check_duration(seconds, f"evaluate --k {args.k} on {n} points")
    result = r.evaluate(k=args.k, split=args.split, limit=args.limit, seed=args.seed, proposal=args.proposal,
                        refine_steps=args.refine_steps, progress=sys.stderr.isatty())  # fmt: skip
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"{r.path}: {r.config.data}, {result.split} split, {result.n} points, k = {result.k} "
          f"({r.checkpoint} checkpoint, epoch {r.state.get('epoch')})")  # fmt: skip
    print(f"{'quantity':<34}{'nats':>12}")
    rows = [
        (f"ELBO ({'analytic' if result.kl_method == 'analytic' else 'sampled'} KL)", f"{result.elbo:12.3f}"),
        ("log p(x), importance sampled", f"{result.log_px:12.3f} ± {result.log_px_stderr:.3f}   "
                                         f"({result.proposal} q as proposal)"),
        ("gap log p(x) - ELBO", f"{result.log_px - result.elbo:12.3f}"),
        ("reconstruction E_q log p(x|z)", f"{result.reconstruction:12.3f}"),
        ("KL(q(z|x) || p(z))", f"{result.kl:12.3f}"),
        ("smallest ESS of the weights", f"{result.min_ess:12.1f}"),
        ("largest Pareto k-hat", f"{result.pareto_k_max:12.2f}   ({result.pareto_k_over_threshold} points > 0.7: "
                                 "unreliable there)"),
    ]  # fmt: skip
    if result.bits_per_dim is not None:
        rows.append(("bits/dim, -log p(x) / (D ln 2)", f"{result.bits_per_dim:12.4f}"))
    for name, value in rows:
        print(f"{name:<34}{value}")
    return 0


def _evaluate_bnn(r: Any, args: argparse.Namespace) -> int:
    """A bnn run: test log-likelihood, RMSE or error rate, and calibration, by --k weight draws."""
    from elbokit.distributed import world

    if world().distributed:
        raise ValueError("a bnn run evaluates in one process (drop --nproc)")
    result = r.evaluate(samples=100 if args.k is None else args.k, split=args.split, limit=args.limit, seed=args.seed)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"{r.path}: a bnn on {r.config.data}, {result.split} split, {result.n} points, {result.samples} weight "
          f"draws ({r.checkpoint} checkpoint, epoch {r.state.get('epoch')})")  # fmt: skip
    rows = [("log-likelihood per point", f"{result.log_likelihood:10.4f} ± {result.log_likelihood_stderr:.4f}")]
    if result.rmse is not None:
        rows.append(("RMSE", f"{result.rmse:10.4g}"))
        rows += [(f"coverage of the {level} interval", f"{float(level):10.0%} -> {cov:.1%}")
                 for level, cov in result.coverage.items() if level in ("0.5", "0.9", "0.95")]  # fmt: skip
        rows.append(("mean |coverage - level|", f"{result.calibration_error:10.4f}"))
        rows.append(("epistemic / aleatoric variance", f"{result.epistemic:10.4g} / {result.aleatoric:.4g}"))
    else:
        rows.append(("error rate", f"{result.error:10.2%}"))
        rows.append(("expected calibration error", f"{result.calibration_error:10.4f}"))
        rows.append(("mutual information / expected entropy", f"{result.epistemic:10.4f} / {result.aleatoric:.4f}"))
    for name, value in rows:
        print(f"{name:<40}{value}")
    return 0
