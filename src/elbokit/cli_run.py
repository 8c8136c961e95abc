"""The run commands of the ``elbokit`` CLI: ``fit``, ``evaluate``, ``sample`` and ``data``.

Flags map onto :class:`elbokit.config.RunConfig` fields; ``--config run.toml`` supplies the same fields, and a
flag given on the command line wins over the file.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elbokit._io import atomic_write
from elbokit.cli_args import UsageError, _int_list, _number, _Parser, _positive_int
from elbokit.cli_diagnose import add_diagnose_command, add_sweep_command, cmd_diagnose, cmd_sweep
from elbokit.cli_report import add_report_command, cmd_report, report
from elbokit.config import ACTIVATIONS, LR_SCHEDULES, OBJECTIVES, RunConfig
from elbokit.data import Dataset, available, download
from elbokit.models import VAE
from elbokit.runs import (
    CONFIG,
    EVALUATION,
    MAX_EVALUATION_SECONDS,
    PROPOSALS,
    Run,
    absolute_data,
    check_data_file,
    check_sample_size,
    duration,
    evaluate,
    evaluation_seconds,
    holds_run,
    image_shape,
    is_data_file,
    load_data,
    new_model,
    open_run,
    write_images,
    write_json,
    write_pictures,
    writing_run,
)
from elbokit.train import fit, resolve_device
from elbokit.train.checkpoint import CHECKPOINT
from elbokit.train.loop import check_resume

#: Flag destinations that are RunConfig fields (everything else is an option of the command itself).
_FIELDS = {
    "data", "data_dir", "binarize", "limit", "latent_dim", "hidden", "activation", "likelihood", "objective", "k",
    "gradient", "beta", "anneal", "epochs", "batch_size", "lr", "lr_schedule", "clip", "patience", "seed", "device",
    "quiet", "guide",
}  # fmt: skip


def _add_run_commands(commands: Any) -> None:
    S = argparse.SUPPRESS  # only flags actually given reach the namespace, so a config file can fill the rest
    fit_ = commands.add_parser(
        "fit", help="train a VAE; writes a run directory", argument_default=S,
        description="Train a VAE by the ELBO (or IWAE_k) and write a run directory.",
    )  # fmt: skip
    fit_.add_argument("--data", help="dataset name or a .npy/.npz/.csv file (default binarized-mnist)")
    fit_.add_argument("--out", required=True, type=Path, help="run directory to write")
    fit_.add_argument("--config", type=Path, help="TOML file of RunConfig settings (flags win)")
    fit_.add_argument("--data-dir", help="folder holding the dataset's files (e.g. the four MNIST idx files)")
    fit_.add_argument("--binarize", choices=("dynamic", "fixed"), help="binarized-mnist: dynamic (default) or fixed")
    fit_.add_argument("--limit", type=_positive_int, help="train on the first N training points only")
    fit_.add_argument("--epochs", type=_positive_int, help="passes over the training set (default 10)")
    fit_.add_argument("--seed", type=int, help="random seed (default 0)")
    fit_.add_argument("--latent-dim", type=_positive_int, help="d, dimension of z (default 50)")
    fit_.add_argument("--hidden", type=_int_list, help="hidden sizes, comma-separated (default 200,200)")
    fit_.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation (default tanh)")
    fit_.add_argument("--likelihood", help="bernoulli (default), continuous-bernoulli, gaussian[:S|learned|decoder], "
                      "laplace[:S|learned|decoder]")  # fmt: skip
    fit_.add_argument("--guide", help="q(z|x): gaussian (diagonal, default), full (full covariance) or flow[:K] "
                      "(K inverse autoregressive steps on the Gaussian, default 4; needs elbokit[flows])")  # fmt: skip
    fit_.add_argument("--objective", choices=OBJECTIVES, help="elbo (default) or iwae")
    fit_.add_argument("--k", type=_positive_int, help="samples per point (IWAE_k for --objective iwae; default 1)")
    fit_.add_argument("--gradient", choices=("reparam", "score", "stl", "dreg"),
                      help="gradient estimator: reparam (default); score or stl (elbo); stl or dreg (iwae)")
    fit_.add_argument("--beta", type=_number, help="KL weight (default 1: the ELBO)")
    fit_.add_argument("--anneal", help="constant, linear:N, cyclical:N[:R] or freebits:LAMBDA (N steps or Nep)")
    fit_.add_argument("--batch-size", type=_positive_int, help="points per step (default 100)")
    fit_.add_argument("--lr", type=_number, help="Adam learning rate (default 1e-3)")
    fit_.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                      help="constant (default) or burda: Burda et al. (2016)'s 8 stages of 3^i epochs at "
                      "lr 10^(-i/7), scaled to --epochs")  # fmt: skip
    fit_.add_argument("--clip", type=_number, help="clip the gradient norm to this value")
    fit_.add_argument("--patience", type=_positive_int, help="early stopping after N epochs without improvement")
    fit_.add_argument("--device", help="auto (default), cpu or cuda")
    fit_.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    fit_.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    fit_.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    fit_.add_argument("--report", action="store_true", help="at the end, diagnose the run and write report.html")

    ev = commands.add_parser(
        "evaluate", help="ELBO and log p(x) with its standard error on a run's test set",
        description="Evaluate a trained run: ELBO, importance-sampled log p(x) ± its standard error, KL and "
        "reconstruction, in nats per point (and bits/dim for images).",
    )  # fmt: skip
    ev.add_argument("run", type=Path, help="run directory")
    ev.add_argument("--k", type=_positive_int, default=1000, help="importance samples per point (default 1000)")
    ev.add_argument("--split", choices=("train", "validation", "test"), default="test", help="default test")
    ev.add_argument("--limit", type=_positive_int, default=None, help="first N points of the split only")
    ev.add_argument("--proposal", choices=PROPOSALS, default="refined",
                    help="importance-sampling proposal: refined (the encoder's q refined per point in the "
                    "full-covariance family, mixed defensively; default) or encoder (q(z|x) as it is)")
    ev.add_argument("--refine-steps", type=_positive_int, default=300,
                    help="most refinement steps of the refined proposal (default 300)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo draws (default 0)")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    sa = commands.add_parser("sample", help="decode z ~ p(z) into a PNG grid (or a .npy array)")
    sa.add_argument("run", type=Path, help="run directory")
    sa.add_argument("--n", type=_positive_int, default=64, help="number of samples (default 64)")
    sa.add_argument("--out", type=Path, default=None, help="output .png or .npy (default RUN/samples.png)")
    sa.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sa.add_argument("--draw", action="store_true", help="draw x ~ p(x|z) instead of showing its mean")
    sa.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    add_diagnose_command(commands)
    add_sweep_command(commands)
    add_report_command(commands)

    da = commands.add_parser("data", help="list datasets or download one")
    da_commands = da.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    da_commands.add_parser("list", help="registered dataset names")
    dl = da_commands.add_parser("download", help="fetch a dataset's files into the cache (md5-checked)")
    dl.add_argument("name", help="dataset (mnist)")
    dl.add_argument(
        "--cache-dir", type=Path, default=None, help="cache folder (default: $ELBOKIT_DATA, else ~/.cache/elbokit)",
    )
    dl.add_argument("--url", default=None, help="mirror to fetch from")


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    values: dict[str, Any] = RunConfig.from_toml(args.config) if getattr(args, "config", None) else {}
    given = {name: value for name, value in vars(args).items() if name in _FIELDS}
    if "hidden" in given:
        given["hidden"] = tuple(given["hidden"])
    values.update(given)
    return RunConfig.from_dict(values, source=str(getattr(args, "config", "command line")))


def _resume_config(args: argparse.Namespace, out: Path) -> RunConfig:
    """A resumed run keeps its configuration; only --epochs (to train longer) and --quiet may change."""
    saved = RunConfig.load(out / CONFIG)
    given = {name: value for name, value in vars(args).items() if name in _FIELDS}
    if "hidden" in given:
        given["hidden"] = tuple(given["hidden"])
    for name in ("data", "data_dir"):  # compared as the absolute paths the run keeps
        if name in given and (name == "data_dir" or is_data_file(given[name])):
            given[name] = str(Path(given[name]).expanduser().absolute())
    for name, value in given.items():
        if name not in ("epochs", "quiet", "device") and getattr(saved, name) != value:
            raise UsageError(f"--{name.replace('_', '-')} {value} differs from the run's {getattr(saved, name)!r}; "
                             "a resumed run keeps its configuration")  # fmt: skip
    values = saved.to_dict()
    values.update({name: given[name] for name in ("epochs", "quiet", "device") if name in given})
    return RunConfig.from_dict(values, source=str(out / CONFIG))


def cmd_fit(args: argparse.Namespace) -> int:
    out: Path = args.out
    resume, overwrite = getattr(args, "resume", False), getattr(args, "overwrite", False)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if resume and not holds_run(out):
        raise UsageError(f"--resume: {out} holds no run to resume")
    if holds_run(out) and not (resume or overwrite):
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    config = _resume_config(args, out) if resume else absolute_data(_config_from_args(args))
    # Everything that can fail on bad input happens before anything in --out is touched.
    resolve_device(config.device)
    if resume:
        check_data_file(out, config)
    data = load_data(config)
    model = new_model(config, data)
    if resume:
        check_resume(out, model, model.encoder, config)
    say = (lambda _text: None) if config.quiet else (lambda text: print(text, flush=True))
    with writing_run(out, config, data, resume=resume, overwrite=overwrite) as writer:
        if writer.aside is not None:
            print(f"elbokit: the run {'replaced' if overwrite else 'an --overwrite replaced'} is kept in "
                  f"{writer.aside} until this run writes its first checkpoint", file=sys.stderr)  # fmt: skip
        if resume and not (out / CHECKPOINT).exists():
            print(f"elbokit: {out} has no checkpoint yet (stopped before its first): starting from the beginning",
                  file=sys.stderr)  # fmt: skip
        return _train(args, out, config, data, model, resume=resume, on_checkpoint=writer.committed, say=say)


def _train(args: argparse.Namespace, out: Path, config: RunConfig, data: Dataset, model: VAE, *, resume: bool,
           on_checkpoint: Callable[[], None], say: Callable[[str], None]) -> int:  # fmt: skip
    say(f"fit: {data.name} ({data.train[: config.limit].shape[0]} training points, D={data.data_dim}) -> {out}")

    def on_epoch(m: dict[str, Any]) -> None:
        say(f"epoch {m['epoch']:>3}/{config.epochs}  train {m['train_bound']:9.3f}  validation "
            f"{m['validation_bound']:9.3f}  KL {m['validation_kl']:7.3f}  β {m['beta']:.3g}  "
            f"{m['seconds']:6.1f} s  {m['examples_per_second']:7.0f} points/s")  # fmt: skip

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(model, model.encoder, data, config, out=out, resume=resume, on_epoch=on_epoch,
                     on_checkpoint=on_checkpoint)  # fmt: skip
    for w in caught:
        print(f"elbokit: warning: {w.message}", file=sys.stderr)
    if result.stopped == "interrupted":
        print(f"elbokit: interrupted at epoch {result.epochs + 1}, step {result.steps}; the checkpoint is saved: "
              f"resume with `elbokit fit --out {out} --resume`", file=sys.stderr)  # fmt: skip
        return 130
    run = Run(out, config, data, model.eval(), {})
    pictures = write_pictures(run, seed=config.seed)
    say(f"done: {result.epochs} epochs ({result.stopped}), best validation bound {result.best_validation:.3f}"
        + (f"; wrote {', '.join(p.name for p in pictures)}" if pictures else ""))  # fmt: skip
    if getattr(args, "report", False):
        print(report(out, say=say))
    return 0


def check_duration(seconds: float, what: str, *, smaller: str = "--k or --limit") -> None:
    """Refuse a computation estimated beyond :data:`MAX_EVALUATION_SECONDS`; announce one longer than a minute."""
    if seconds > MAX_EVALUATION_SECONDS:
        raise UsageError(f"{what} would take about {duration(seconds)} here (over the "
                         f"{duration(MAX_EVALUATION_SECONDS)} the command line starts); give a smaller {smaller}")
    if seconds > 60:
        print(f"elbokit: {what} will take about {duration(seconds)}", file=sys.stderr, flush=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    n = run.data.split(args.split)[: args.limit].shape[0]
    seconds = evaluation_seconds(run, k=args.k, n=n, proposal=args.proposal, refine_steps=args.refine_steps)
    check_duration(seconds, f"evaluate --k {args.k} on {n} points")
    result = evaluate(run, k=args.k, split=args.split, limit=args.limit, seed=args.seed, proposal=args.proposal,
                      refine_steps=args.refine_steps, progress=sys.stderr.isatty())  # fmt: skip
    write_json(run.path / EVALUATION, result.to_dict())
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"{run.path}: {run.config.data}, {result.split} split, {result.n} points, k = {result.k}")
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
    ]
    if result.bits_per_dim is not None:
        rows.append(("bits/dim, -log p(x) / (D ln 2)", f"{result.bits_per_dim:12.4f}"))
    for name, value in rows:
        print(f"{name:<34}{value}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    run = open_run(args.run)
    own = run.path / "samples.png"  # the run's own picture, which `fit` wrote: replaced freely
    out = args.out if args.out is not None else own
    if out.suffix not in (".png", ".npy"):
        raise UsageError(f"--out must end in .png or .npy, got {out}")
    shape = image_shape(run.path)
    if out.suffix == ".png" and shape is None:
        raise UsageError(f"{run.config.data} is not image data: write samples with --out FILE.npy")
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder")
    if out.exists() and not args.overwrite and out.resolve() != own.resolve():
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
    check_sample_size(run, args.n, image=out.suffix == ".png")
    device = next(run.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = run.model.sample(args.n, generator=gen, mean=not args.draw)
    if out.suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, x.cpu().numpy())
        atomic_write(out, buffer.getvalue())
    elif shape is not None:
        write_images(out, x, shape, columns=max(1, math.isqrt(args.n)))
    print(out)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        print("\n".join(available()))
        return 0
    kwargs: dict[str, Any] = {"cache_dir": args.cache_dir}
    if args.url is not None:
        kwargs["base_url"] = args.url
    print(download(args.name, **kwargs))
    return 0


RUN_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "fit": cmd_fit, "evaluate": cmd_evaluate, "sample": cmd_sample, "data": cmd_data, "diagnose": cmd_diagnose,
    "sweep": cmd_sweep, "report": cmd_report,
}  # fmt: skip
