"""``elbokit report``: the run's ``report.html``, with the diagnostics it needs computed when missing or stale."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from elbokit.cli_args import _positive_int
from elbokit.cli_diagnose import DIAGNOSTICS, diagnose
from elbokit.diagnostics import GapSummary
from elbokit.runs import open_run

#: Keys a ``diagnostics.json`` must hold for the report to draw from it; an older or partial file is recomputed.
_NEEDED = ("n", "k", "split", "step", "elbo", "iwae", "log_px", "log_px_stderr", "pareto_k_max",
           "pareto_k_over_threshold", "gaps", "rate_distortion", "kl_per_dim", "activity", "active_units",
           "latent_dim", "surgery")  # fmt: skip


def add_report_command(commands: Any) -> None:
    p = commands.add_parser(
        "report", help="write the run's self-contained report.html",
        description="Write DIR/report.html: the run's configuration and dataset, the summary of its bound (ELBO, "
        "log p(x) ± stderr, gaps, active units, I(x; z), bits/dim) and its figures, all in one file that needs "
        "no network. Uses DIR/diagnostics.json when it belongs to the run's current checkpoint; otherwise runs "
        "`elbokit diagnose` first with the flags below.",
    )  # fmt: skip
    p.add_argument("run", type=Path, help="run directory")
    p.add_argument("--k", type=_positive_int, default=1000, help="importance samples per point (default 1000)")
    p.add_argument("--limit", type=_positive_int, default=1000, help="first N test points (default 1000)")
    p.add_argument("--ais", type=_positive_int, default=None, metavar="STEPS", help="also run AIS with STEPS")
    p.add_argument("--refresh", action="store_true", help="recompute diagnostics.json even when it is current")


def current_diagnostics(run_dir: Path, step: Any) -> dict[str, Any] | None:
    """``diagnostics.json`` when it is complete and was computed on the checkpoint at ``step``, else None."""
    try:
        d = json.loads((run_dir / DIAGNOSTICS).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(d, dict) or any(key not in d for key in _NEEDED) or d["step"] != step:
        return None
    if not isinstance(d["gaps"], dict) or any(name not in d["gaps"] for name in GapSummary._fields):
        return None
    return d


def report(run_dir: Path, *, k: int = 1000, limit: int = 1000, ais_steps: int | None = None, refresh: bool = False,
           say: Any = print) -> Path:  # fmt: skip
    """Write ``run_dir / report.html`` and return its path, running ``diagnose`` first when needed."""
    from elbokit.report.html import write_report  # matplotlib loads only when a report is asked for

    run = open_run(run_dir)
    d = None if refresh else current_diagnostics(run_dir, run.state.get("step"))
    if d is None:
        say(f"report: diagnosing {run_dir} ({limit} points, k = {k}) ...")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            d = diagnose(run_dir, k=k, limit=limit, split="test", refine_steps=300, ais_steps=ais_steps, seed=0)
        for w in caught:
            print(f"elbokit: warning: {w.message}", file=sys.stderr)
    return write_report(run, d)


def cmd_report(args: argparse.Namespace) -> int:
    print(report(args.run, k=args.k, limit=args.limit, ais_steps=args.ais, refresh=args.refresh))
    return 0
