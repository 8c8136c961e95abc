"""``elbokit report``: the run's ``report.html``, with the diagnostics it needs computed when missing or stale."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, get_args

from elbokit.cli_args import _positive_int
from elbokit.cli_diagnose import DIAGNOSTICS, diagnose
from elbokit.diagnostics.reference import ReferenceMethod
from elbokit.diagnostics.refine import Family
from elbokit.runs import open_run
from elbokit.types import KLMethod

_Check = Callable[[Any], bool]


def _real(value: Any) -> bool:
    """An int or float that converts to float: not a bool, a string or an int too large for a float."""
    return isinstance(value, float) or (type(value) is int and abs(value) <= sys.float_info.max)


def _finite(value: Any) -> bool:
    return _real(value) and math.isfinite(value)


def _count(low: int) -> _Check:
    return lambda value: type(value) is int and value >= low


def _one_of(*choices: str) -> _Check:
    return lambda value: isinstance(value, str) and value in choices


def _list_of(check: _Check) -> _Check:
    return lambda value: isinstance(value, list) and all(check(item) for item in value)


def _record(checks: Mapping[str, _Check], *, exact: bool = False) -> _Check:
    """A JSON object holding each key of ``checks`` with a value that passes it (and no other key, if ``exact``)."""
    return lambda value: (isinstance(value, dict) and (not exact or set(value) == set(checks))
                          and all(key in value and check(value[key]) for key, check in checks.items()))  # fmt: skip


#: What each value of a ``diagnostics.json`` must be for the report to draw from it (the types ``diagnose``
#: writes): a file that lacks one, or holds a value of another type, is stale and is recomputed. Estimates are
#: finite; standard errors and k-hat may be infinite (k-hat is -inf where no point has a finite one).
_GAPS: dict[str, _Check] = {
    **dict.fromkeys(("log_px", "elbo_optimal", "elbo_amortized", "approximation", "amortization"), _finite),
    **dict.fromkeys(("log_px_stderr", "elbo_optimal_stderr", "elbo_amortized_stderr", "elbo_sample_sd",
                     "pareto_k_max"), _real),
    "n": _count(1), "steps": _count(0), "unreliable": _count(0),
    "family": _one_of(*get_args(Family)), "reference": _one_of(*get_args(ReferenceMethod)),
}  # fmt: skip
_RATE: dict[str, _Check] = {
    **dict.fromkeys(("rate", "distortion", "elbo"), _finite),
    **dict.fromkeys(("rate_stderr", "distortion_stderr", "elbo_stderr"), _real),  # inf with one draw per point
    "n": _count(1), "samples": _count(1),
}  # fmt: skip
_CHECKS: dict[str, _Check] = {
    "n": _count(1), "k": _count(1), "step": _count(0), "split": _one_of("train", "validation", "test"),
    "elbo": _finite, "log_px": _finite, "log_px_stderr": _real, "pareto_k_max": _real,
    "pareto_k_over_threshold": _count(0),
    "iwae": _list_of(_record({"k": _count(1), "value": _finite, "stderr": _real})),
    "gaps": _record(_GAPS),
    "rate_distortion": _record(_RATE, exact=True),  # the report builds RatePoint(**it): no other key
    "kl_per_dim": _list_of(_finite), "activity": _list_of(_finite), "active_units": _count(0), "latent_dim": _count(1),
    "surgery": _record(dict.fromkeys(("average_kl", "mutual_information", "marginal_kl", "log_n", "identity_error"),
                                     _finite)),
}  # fmt: skip
#: Keys a ``diagnostics.json`` may lack (older files, or no AIS run), checked where present.
_OPTIONAL: dict[str, _Check] = {
    "ais": _record({"steps": _count(1), "value": _finite, "stderr": _real}),
    "activity_threshold": _finite,
    "elbo_kl": _one_of(*get_args(KLMethod)),
}


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
    """``diagnostics.json`` when every value the report draws from has its type (:data:`_CHECKS`) and it was
    computed on the checkpoint at ``step``; else None, and ``diagnose`` recomputes it: a stale, partial or crafted
    file is never rendered."""
    try:
        d = json.loads((run_dir / DIAGNOSTICS).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's depth
        return None
    if not isinstance(d, dict) or not all(key in d and check(d[key]) for key, check in _CHECKS.items()):
        return None
    if not all(check(d[key]) for key, check in _OPTIONAL.items() if key in d):
        return None
    if not len(d["kl_per_dim"]) == len(d["activity"]) == d["latent_dim"] >= d["active_units"]:
        return None
    return d if _count(0)(step) and d["step"] == step else None


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
