"""``elbokit fit``: train a VAE into a run directory (the flags are in :mod:`elbokit.cli.fit_flags`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from elbokit.cli._args import warnings_to_stderr
from elbokit.cli.fit_flags import add_fit_flags, config_from_args, resume_config

if TYPE_CHECKING:
    from elbokit.config import RunConfig


def add_command(commands: Any) -> None:
    p = commands.add_parser("fit", help="train a VAE; writes a run directory", argument_default=argparse.SUPPRESS,
                            description="Train a VAE by the ELBO (or IWAE_k) and write a run directory.")  # fmt: skip
    add_fit_flags(p)  # only flags actually given reach the namespace, so a config file can fill the rest
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    from elbokit.runs import Run, holds_run, is_data_file
    from elbokit.runs.train import train_run

    out, resume = args.out, getattr(args, "resume", False)
    config: RunConfig | None
    if resume and holds_run(out) and not getattr(args, "overwrite", False):
        config = resume_config(args, is_file=is_data_file)
    else:
        config = None if resume else config_from_args(args)
    quiet = config.quiet if config is not None else getattr(args, "quiet", False)
    say = (lambda _text: None) if quiet else (lambda text: print(text, flush=True))

    epochs = [0]

    def on_start(config: Any, data: Any) -> None:
        epochs[0] = config.epochs
        if config.model == "bnn":
            say(f"fit: a bnn on {data.name} ({data.x_train[: config.limit].shape[0]} training points, "
                f"{data.in_features} features, {data.task} of {data.target}) -> {out}")  # fmt: skip
            return
        say(f"fit: {data.name} ({data.train[: config.limit].shape[0]} training points, D={data.data_dim}, "
            f"{config.likelihood} likelihood) -> {out}")  # fmt: skip

    def on_epoch(m: dict[str, Any]) -> None:
        if "validation_log_likelihood" in m:  # a bnn
            fit_figure = (f"RMSE {m['validation_rmse']:8.4g}" if "validation_rmse" in m
                          else f"error {m['validation_error']:6.2%}")  # fmt: skip
            say(f"epoch {m['epoch']:>3}/{epochs[0]}  ELBO/N {m['train_bound']:9.4f}  KL/N {m['train_kl']:8.4f}  "
                f"validation log-lik {m['validation_log_likelihood']:8.4f}  {fit_figure}  {m['seconds']:6.1f} s")
            return
        say(f"epoch {m['epoch']:>3}/{epochs[0]}  train {m['train_bound']:9.3f}  validation "
            f"{m['validation_bound']:9.3f}  KL {m['validation_kl']:7.3f}  β {m['beta']:.3g}  "
            f"{m['seconds']:6.1f} s  {m['examples_per_second']:7.0f} points/s")  # fmt: skip

    trained = train_run(out, config, resume=resume, overwrite=getattr(args, "overwrite", False), on_start=on_start,
                        on_epoch=on_epoch, note=lambda text: print(f"elbokit: {text}", file=sys.stderr))  # fmt: skip
    result, pictures = trained.result, trained.pictures
    if result.stopped == "interrupted":
        print(f"elbokit: interrupted at epoch {result.epochs + 1}, step {result.steps}; the checkpoint is saved: "
              f"resume with `elbokit fit --out {out} --resume`", file=sys.stderr)  # fmt: skip
        return 130
    best = "log-likelihood" if getattr(trained.run.config, "model", "vae") == "bnn" else "bound"
    say(f"done: {result.epochs} epochs ({result.stopped}), best validation {best} {result.best_validation:.3f}"
        + (f"; wrote {', '.join(p.name for p in pictures)}" if pictures else ""))  # fmt: skip
    if getattr(args, "report", False):
        with warnings_to_stderr():
            opened = Run.open(out)
            print(opened.report() if best == "log-likelihood" else
                  opened.report(on_diagnose=lambda: say(f"report: diagnosing {out} ...")))  # fmt: skip
    return 0
