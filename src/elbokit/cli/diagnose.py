"""``elbokit diagnose``: the truth about a run's bound, as a table and ``diagnostics.json``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elbokit.cli._args import (
    _positive_int,
    add_checkpoint,
    add_device,
    add_nproc_flag,
    check_duration,
    warnings_to_stderr,
)

if TYPE_CHECKING:
    from elbokit.diagnostics import Diagnosis


def add_command(commands: Any) -> None:
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
    add_device(p)
    add_checkpoint(p)
    add_nproc_flag(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from elbokit.runs import Run, evaluation_seconds
    from elbokit.runs.files import vae_only

    vae_only(args.run, "diagnose")
    r = Run.open(args.run, device=args.device, checkpoint=args.checkpoint)
    n = r.data.split(args.split)[: args.limit].shape[0]
    # The log p(x) of the encoder and the gaps' reference each cost about one refined evaluation at this k.
    check_duration(2 * evaluation_seconds(r, k=args.k, n=n, refine_steps=args.refine_steps),
                   f"diagnose --k {args.k} on {n} points")  # fmt: skip
    with warnings_to_stderr():
        d = r.diagnose(k=args.k, limit=args.limit, split=args.split, refine_steps=args.refine_steps,
                       ais_steps=args.ais, reference=args.reference, seed=args.seed)  # fmt: skip
    print(json.dumps(d.to_dict()) if args.json else table(d))
    return 0


def table(d: Diagnosis) -> str:
    """The diagnosis as the table ``elbokit diagnose`` prints."""
    g, s, threshold = d.gaps, d.surgery, 0.7
    rows = [(f"ELBO ({'analytic' if d.elbo_kl == 'analytic' else 'sampled'} KL)", f"{d.elbo:10.3f}")]
    rows += [(f"IWAE_{p.k}", f"{p.value:10.3f} ± {p.stderr:.3f}") for p in d.iwae]
    khat = f"k̂ max {d.pareto_k_max:.2f}, {d.pareto_k_over_threshold} points > {threshold}"
    rows.append((f"log p(x), IS k={d.k}", f"{d.log_px:10.3f} ± {d.log_px_stderr:.3f}   ({khat})"))
    if d.ais is not None:
        rows.append((f"log p(x), AIS {d.ais.steps} steps", f"{d.ais.value:10.3f} ± {d.ais.stderr:.3f}"))
    matched = "; q's Gaussian moment match" if d.collapse_q != "q" else ""
    reliability = f"k̂ max {g.pareto_k_max:.2f}, {g.unreliable} points > {threshold}"
    rows += [
        (f"log p(x), reference {g.reference.upper()}", f"{g.log_px:10.3f} ± {g.log_px_stderr:.3f}   ({reliability})"),
        ("L[q*], refined per point", f"{g.elbo_optimal:10.3f}   ({g.family} q*, {d.refine_steps} steps)"),
        ("L[q], the encoder's", f"{g.elbo_amortized:10.3f}"),
        ("approximation gap", f"{g.approximation:10.3f}   log p(x) - L[q*]"),
        ("amortization gap", f"{g.amortization:10.3f}   L[q*] - L[q]"),
        ("active units", f"{d.active_units:10d}   of {d.latent_dim} (Cov_x E_q[z_j] > 0.01{matched})"),
        ("average KL(q(z|x) || p(z))", f"{s.average_kl:10.3f}"),
        ("  = I(x; z)", f"{s.mutual_information:10.3f}   (at most log N = {s.log_n:.3f})"),
        ("  + KL(q(z) || p(z))", f"{s.marginal_kl:10.3f}   (identity error {s.identity_error:+.3f})"),
    ]  # fmt: skip
    order = sorted(range(len(d.kl_per_dim)), key=lambda j: -d.kl_per_dim[j])
    top = ", ".join(f"z{j} {d.kl_per_dim[j]:.2f}" for j in order[:8])
    lines = [f"{d.run}: {d.split} split, {d.n} points, k = {d.k} ({d.seconds:.0f} s)",
             f"{'quantity':<30}{'nats per point':>14}"]  # fmt: skip
    lines += [f"{name:<30}{value}" for name, value in rows]
    lines.append(f"KL per dimension (largest): {top}")
    return "\n".join(lines)
