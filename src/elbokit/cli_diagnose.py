"""``elbokit diagnose``: the truth about a trained run's bound, as a table and ``diagnostics.json``."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from elbokit import diagnostics as dx
from elbokit.cli_args import _number_list, _positive_int
from elbokit.diagnostics.reference import ReferenceMethod
from elbokit.diagnostics.refine import as_full_gaussian
from elbokit.estimators import elbo, log_marginal
from elbokit.estimators._pareto import KHAT_THRESHOLD
from elbokit.models.base import FixedGuide
from elbokit.runs import open_run, write_json

DIAGNOSTICS = "diagnostics.json"
SWEEP = "sweep"  # DIR/sweep/beta-B run folders and DIR/sweep.json


def add_diagnose_command(commands: Any) -> None:
    p = commands.add_parser(
        "diagnose", help="how far the ELBO is from log p(x), and why",
        description="On a run's test points: ELBO, IWAE_k, log p(x) ± its standard error with the Pareto k-hat "
        "of the importance weights, AIS (with --ais), the approximation and amortization gaps, active units, "
        "per-dimension KL, I(x; z) and KL(q(z) || p(z)). Writes diagnostics.json beside the run.",
    )  # fmt: skip
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--k", type=_positive_int, default=1000, help="importance samples per point (default 1000)")
    p.add_argument("--limit", type=_positive_int, default=1000, help="first N test points (default 1000)")
    p.add_argument("--split", choices=("train", "validation", "test"), default="test", help="default test")
    p.add_argument("--refine-steps", type=_positive_int, default=300, help="most q* optimisation steps (300)")
    p.add_argument("--ais", type=_positive_int, default=None, metavar="STEPS", help="also run AIS with STEPS")
    p.add_argument("--reference", choices=("is", "ais"), default="is",
                   help="the gaps' log p(x): importance sampling from the refined full-covariance Gaussian, mixed "
                   "defensively (is, default), or AIS started there (ais; --ais STEPS temperatures, default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _mean(t: torch.Tensor) -> float:
    return float(t.double().mean())


def _se_of_mean(stderr: torch.Tensor) -> float:
    """Standard error of the mean over points of independent per-point estimates."""
    return float(stderr.double().square().sum().sqrt()) / stderr.numel()


def diagnose(run_dir: Path, *, k: int, limit: int, split: str, refine_steps: int, ais_steps: int | None,
             seed: int, reference: ReferenceMethod = "is") -> dict[str, Any]:  # fmt: skip
    run = open_run(run_dir)
    model, guide = run.model, run.model.encoder
    device = next(model.parameters()).device
    x = run.data.split(split)[:limit].to(device)
    started = time.perf_counter()
    out: dict[str, Any] = {"run": str(run_dir), "split": split, "n": int(x.shape[0]), "k": k,
                           "epoch": run.state.get("epoch"), "step": run.state.get("step")}  # fmt: skip
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.inference_mode():
            bound = elbo(model, guide, x)
            estimate = log_marginal(model, guide, x, k=k, warn=False)
            curve = dx.iwae_curve(model, guide, x, ks=tuple(kk for kk in (1, 10, 100) if kk < k), repeats=3)
        out["elbo"] = _mean(bound.value)
        out["elbo_kl"] = bound.kl_method
        out["reconstruction"] = _mean(bound.reconstruction)
        out["kl"] = _mean(bound.kl)
        out["iwae"] = [{"k": p.k, "value": p.value, "stderr": p.stderr} for p in curve]
        out["log_px"], out["log_px_stderr"] = _mean(estimate.value), _se_of_mean(estimate.stderr)
        khat = estimate.pareto_k
        assert khat is not None
        finite = khat[torch.isfinite(khat)]
        out["pareto_k_max"] = float(finite.max()) if finite.numel() else -math.inf
        out["pareto_k_over_threshold"] = int((khat > KHAT_THRESHOLD).sum())
        out["min_ess"] = float(estimate.ess.min())
        if ais_steps is not None:
            gen = torch.Generator(device=device).manual_seed(seed)
            a = dx.ais(model, x, steps=ais_steps, proposal=guide, generator=gen)
            out["ais"] = {"steps": ais_steps, "value": _mean(a.value), "stderr": _se_of_mean(a.stderr)}
        g = dx.gaps(model, guide, x, k=k, steps=refine_steps, samples=100, reference=reference,
                    ais_steps=ais_steps or 500)
        out["gaps"] = g.summary()._asdict() | {"refine_steps": g.steps}
        out["rate_distortion"] = dx.rate_distortion(model, guide, x, samples=10)._asdict()
        # Per-dimension KL and the aggregate posterior need q's marginals and density in closed form, which a
        # flow's q lacks (its density at another point's z costs d sequential passes): its Gaussian moment
        # match stands in for it there, and the results say so.
        moment_matched = g.family == "flow"
        gaussian_guide = FixedGuide(as_full_gaussian(guide(x))) if moment_matched else guide
        c = dx.collapse(model, gaussian_guide, x)
        s = dx.surgery(model, gaussian_guide, x)
    out["collapse_q"] = "gaussian moment match of the flow q" if moment_matched else "q"
    out["active_units"] = c.active_units
    out["activity_threshold"] = c.threshold
    out["latent_dim"] = int(c.kl_per_dim.numel())
    out["kl_per_dim"] = [float(v) for v in c.kl_per_dim]
    out["activity"] = [float(v) for v in c.activity]
    out["surgery"] = {name: float(getattr(s, name)) for name in
                      ("average_kl", "mutual_information", "marginal_kl", "log_n", "identity_error")}  # fmt: skip
    out["seconds"] = time.perf_counter() - started
    write_json(run_dir / DIAGNOSTICS, out)
    return out


def _table(r: dict[str, Any]) -> str:
    g, s = r["gaps"], r["surgery"]
    rows = [(f"ELBO ({'analytic' if r.get('elbo_kl', 'analytic') == 'analytic' else 'sampled'} KL)",
             f"{r['elbo']:10.3f}")]
    rows += [(f"IWAE_{p['k']}", f"{p['value']:10.3f} ± {p['stderr']:.3f}") for p in r["iwae"]]
    khat = f"k̂ max {r['pareto_k_max']:.2f}, {r['pareto_k_over_threshold']} points > {KHAT_THRESHOLD}"
    rows.append((f"log p(x), IS k={r['k']}", f"{r['log_px']:10.3f} ± {r['log_px_stderr']:.3f}   ({khat})"))
    if "ais" in r:
        a = r["ais"]
        rows.append((f"log p(x), AIS {a['steps']} steps", f"{a['value']:10.3f} ± {a['stderr']:.3f}"))
    reference = "IS" if g["reference"] == "is" else "AIS"
    matched = "; q's Gaussian moment match" if r.get("collapse_q", "q") != "q" else ""
    reliability = f"k̂ max {g['pareto_k_max']:.2f}, {g['unreliable']} points > {KHAT_THRESHOLD}"
    rows += [
        (f"log p(x), reference {reference}", f"{g['log_px']:10.3f} ± {g['log_px_stderr']:.3f}   ({reliability})"),
        ("L[q*], refined per point", f"{g['elbo_optimal']:10.3f}   ({g['family']} q*, {g['refine_steps']} steps)"),
        ("L[q], the encoder's", f"{g['elbo_amortized']:10.3f}"),
        ("approximation gap", f"{g['approximation']:10.3f}   log p(x) - L[q*]"),
        ("amortization gap", f"{g['amortization']:10.3f}   L[q*] - L[q]"),
        ("active units", f"{r['active_units']:10d}   of {r['latent_dim']} (Cov_x E_q[z_j] > 0.01{matched})"),
        ("average KL(q(z|x) || p(z))", f"{s['average_kl']:10.3f}"),
        ("  = I(x; z)", f"{s['mutual_information']:10.3f}   (at most log N = {s['log_n']:.3f})"),
        ("  + KL(q(z) || p(z))", f"{s['marginal_kl']:10.3f}   (identity error {s['identity_error']:+.3f})"),
    ]
    kl = r["kl_per_dim"]
    order = sorted(range(len(kl)), key=lambda j: -kl[j])
    top = ", ".join(f"z{j} {kl[j]:.2f}" for j in order[:8])
    lines = [f"{r['run']}: {r['split']} split, {r['n']} points, k = {r['k']} ({r['seconds']:.0f} s)",
             f"{'quantity':<30}{'nats per point':>14}"]  # fmt: skip
    lines += [f"{name:<30}{value}" for name, value in rows]
    lines.append(f"KL per dimension (largest): {top}")
    return "\n".join(lines)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from elbokit.cli_run import check_duration
    from elbokit.runs import evaluation_seconds

    run = open_run(args.run)
    n = run.data.split(args.split)[: args.limit].shape[0]
    # The log p(x) of the encoder and the gaps' reference each cost about one refined evaluation at this k.
    seconds = 2 * evaluation_seconds(run, k=args.k, n=n, refine_steps=args.refine_steps)
    check_duration(seconds, f"diagnose --k {args.k} on {n} points")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = diagnose(args.run, k=args.k, limit=args.limit, split=args.split, refine_steps=args.refine_steps,
                          ais_steps=args.ais, seed=args.seed, reference=args.reference)  # fmt: skip
    for w in caught:
        print(f"elbokit: warning: {w.message}", file=sys.stderr)
    print(json.dumps(result) if args.json else _table(result))
    return 0


def add_sweep_command(commands: Any) -> None:
    p = commands.add_parser(
        "sweep", help="train one model per β and print the rate-distortion curve",
        description="Train one model per β with a run's configuration (Alemi et al. 2018): each into "
        "DIR/sweep/beta-B, then rate, distortion, ELBO and log p(x) on its test points; writes DIR/sweep.json.",
    )  # fmt: skip
    p.add_argument("run", type=Path, help="run directory whose configuration the sweep reuses")
    p.add_argument("--beta", type=_number_list, required=True, help="comma-separated β values, e.g. 0.25,0.5,1,2,4")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs per model (default: the run's)")
    p.add_argument("--k", type=_positive_int, default=1000, help="importance samples for log p(x) (default 1000)")
    p.add_argument("--limit", type=_positive_int, default=1000, help="test points evaluated (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier sweep")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def cmd_sweep(args: argparse.Namespace) -> int:
    from elbokit.config import RunConfig
    from elbokit.diagnostics.rate_distortion import sweep
    from elbokit.rundir import locked
    from elbokit.runs import CONFIG, holds_run

    if not holds_run(args.run):
        raise ValueError(f"{args.run} holds no run whose configuration a sweep could reuse")
    config = RunConfig.load(args.run / CONFIG)
    if args.epochs is not None:
        config = RunConfig.from_dict({**config.to_dict(), "epochs": args.epochs, "quiet": True})
    out = args.run / SWEEP
    if (out.exists() or (args.run / f"{SWEEP}.json").exists()) and not args.overwrite:
        raise ValueError(f"{args.run} already holds a sweep ({SWEEP}.json, {SWEEP}/); pass --overwrite to replace it")
    with locked(args.run, what="elbokit sweep"):
        points = sweep(config, args.beta, out, k=args.k, limit=args.limit, overwrite=args.overwrite)
        rows = [p._asdict() | {"path": str(p.path)} for p in points]
        write_json(args.run / f"{SWEEP}.json", rows)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'β':>6}{'rate':>10}{'distortion':>12}{'ELBO':>11}{'log p(x)':>18}")
    for p in points:
        print(f"{p.beta:6g}{p.rate:10.3f}{p.distortion:12.3f}{p.elbo:11.3f}{p.log_px:11.3f} ± {p.log_px_stderr:.3f}")
    return 0
