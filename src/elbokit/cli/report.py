"""``elbokit report``: the run's self-contained ``report.html``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from elbokit.cli._args import _positive_int, add_checkpoint, add_device, warnings_to_stderr


def add_command(commands: Any) -> None:
    p = commands.add_parser(
        "report", help="write the run's self-contained report.html",
        description="Write DIR/report.html: the run's configuration and dataset, the summary of its bound (ELBO, "
        "log p(x) ± stderr, gaps, active units, I(x; z), bits/dim) and its figures, all in one file that needs "
        "no network. Uses DIR/diagnostics.json when it belongs to the run's current checkpoint; otherwise runs "
        "`elbokit diagnose` first with the flags below.",
    )  # fmt: skip
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--k", type=_positive_int, default=None, help="importance samples per point (default 1000); for "
                   "a bnn run, weight draws of the predictive distribution (default 100)")  # fmt: skip
    p.add_argument("--limit", type=_positive_int, default=1000, help="first N test points (default 1000)")
    p.add_argument("--ais", type=_positive_int, default=None, metavar="STEPS", help="also run AIS with STEPS")
    p.add_argument("--refine-steps", type=_positive_int, default=300,
                   help="most q* optimisation steps when diagnosing (default 300)")  # fmt: skip
    p.add_argument("--refresh", action="store_true", help="recompute diagnostics.json even when it is current")
    add_device(p)
    add_checkpoint(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from elbokit.runs import Run

    r = Run.open(args.run, device=args.device, checkpoint=args.checkpoint)
    if r.config.model == "bnn":  # predictive figures, calibration, uncertainty vs error: no diagnosis
        bnn: Any = r
        print(bnn.report(samples=100 if args.k is None else args.k, limit=args.limit))
        return 0
    args.k = 1000 if args.k is None else args.k

    def announce() -> None:
        print(f"report: diagnosing {r.path} ({args.limit} points, k = {args.k}) ...", flush=True)

    with warnings_to_stderr():
        print(r.report(k=args.k, limit=args.limit, ais_steps=args.ais, refine_steps=args.refine_steps,
                       refresh=args.refresh, on_diagnose=announce))
    return 0
