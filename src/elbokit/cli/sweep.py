"""``elbokit sweep``: one model per β with a run's configuration, and the rate-distortion curve."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from elbokit.cli._args import _number_list, _positive_int, add_device, add_nproc_flag

SWEEP = "sweep"  # DIR/sweep/beta-B run folders and DIR/sweep.json


def add_command(commands: Any) -> None:
    p = commands.add_parser(
        "sweep", help="train one model per β and print the rate-distortion curve",
        description="Train one model per β with a run's configuration (Alemi et al. 2018): each into "
        "DIR/sweep/beta-B, then rate, distortion, ELBO and log p(x) on its test points, and for data with known "
        "generative factors (dsprites) the disentanglement metrics MIG, DCI and FactorVAE; writes DIR/sweep.json.",
    )  # fmt: skip
    p.add_argument("run", type=Path, help="run directory whose configuration the sweep reuses")
    p.add_argument("--beta", type=_number_list, required=True, help="comma-separated β values, e.g. 0.25,0.5,1,2,4")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs per model (default: the run's)")
    p.add_argument("--k", type=_positive_int, default=1000, help="importance samples for log p(x) (default 1000)")
    p.add_argument("--limit", type=_positive_int, default=1000, help="test points evaluated (default 1000)")
    p.add_argument("--factor-points", type=_positive_int, default=5000, help="data with known factors (dsprites): "
                   "test points whose codes MIG, DCI and the FactorVAE score use (default 5000)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an earlier sweep")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_device(p, default=None)  # None: the run's own device setting
    add_nproc_flag(p)
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from elbokit.config import RunConfig
    from elbokit.distributed import barrier, world
    from elbokit.rundir import locked
    from elbokit.runs import CONFIG, holds_run, write_json
    from elbokit.runs.files import vae_only
    from elbokit.sweeps import sweep

    vae_only(args.run, "sweep")

    if not holds_run(args.run):
        raise ValueError(f"{args.run} holds no run whose configuration a sweep could reuse")
    config = RunConfig.load(args.run / CONFIG)
    changes = {"epochs": args.epochs, "device": args.device}
    config = RunConfig.from_dict({**config.to_dict(), "quiet": True, **{k: v for k, v in changes.items() if v}})
    out = args.run / SWEEP
    if (out.exists() or (args.run / f"{SWEEP}.json").exists()) and not args.overwrite:
        raise ValueError(f"{args.run} already holds a sweep ({SWEEP}.json, {SWEEP}/); pass --overwrite to replace it")
    barrier()  # every rank has checked the folder before rank 0 takes it
    main = world().main  # in a process group, rank 0 holds the lock and writes sweep.json
    with locked(args.run, what="elbokit sweep") if main else contextlib.nullcontext():
        points = sweep(config, args.beta, out, k=args.k, limit=args.limit, factor_points=args.factor_points,
                       overwrite=args.overwrite)  # fmt: skip
        rows = [p._asdict() | {"path": str(p.path)} for p in points]
        if main:
            write_json(args.run / f"{SWEEP}.json", rows)
    if args.json:
        print(json.dumps(rows))
        return 0
    factors = all(p.mig is not None for p in points)
    scores = f"{'MIG':>7}{'DCI D':>7}{'DCI C':>7}{'DCI I':>7}{'FVAE':>7}" if factors else ""
    print(f"{'β':>6}{'rate':>10}{'distortion':>12}{'ELBO':>11}{'log p(x)':>18}{scores}")
    for p in points:
        line = f"{p.beta:6g}{p.rate:10.3f}{p.distortion:12.3f}{p.elbo:11.3f}{p.log_px:11.3f} ± {p.log_px_stderr:.3f}"
        if factors:
            values = (p.mig, p.dci_disentanglement, p.dci_completeness, p.dci_informativeness, p.factor_vae)
            line += "".join(f"{v:7.3f}" for v in values)
        print(line)
    return 0
