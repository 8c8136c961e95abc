"""``elbokit fit``'s flags, and how they become a :class:`elbokit.RunConfig` (a TOML file under the flags)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from elbokit.cli._args import UsageError, _int_list, _number, _positive_int, add_nproc_flag
from elbokit.config import ACTIVATIONS, ARCHS, LR_SCHEDULES, OBJECTIVES, RunConfig

#: Flag destinations that are RunConfig fields (everything else is an option of the command itself).
FIELDS = {
    "data", "data_dir", "layer", "binarize", "limit", "latent_dim", "hidden", "activation", "likelihood",
    "objective", "k", "gradient", "beta", "anneal", "epochs", "batch_size", "lr", "local_lr", "lr_schedule", "clip",
    "patience", "seed", "device", "quiet", "guide", "log_every", "tensorboard", "model", "target", "task", "prior",
    "estimator", "arch",
}  # fmt: skip


def add_fit_flags(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--data", help="dataset name (binarized-mnist, mnist, fashion-mnist, digits, synthetic, dsprites, pbmc) or a "
      ".npy/.npz/.csv/.h5ad/.mtx file (default binarized-mnist)")  # fmt: skip
    a("--model", choices=("vae", "bnn"), help="vae (default): a latent z per point; bnn: a Bayesian neural network "
      "(its weights the latent) predicting --target from the other columns, or an image dataset's labels")  # fmt: skip
    a("--target", help="bnn: the column of the CSV (or of diabetes, boston, concrete) to predict")
    a("--task", choices=("auto", "regression", "classification"), help="bnn: auto (default: labelled images are "
      "classification, tables regression), regression or classification")  # fmt: skip
    a("--prior", help="bnn: p(w), normal[:S] (N(0, S^2), default S 1) or mixture[:PI,S1,S2] (Blundell et al. 2015; "
      "default 0.5,1,0.0025)")  # fmt: skip
    a("--estimator", choices=("local", "weights", "flipout"), help="bnn: local (default: local reparameterization), "
      "weights (one weight draw per minibatch) or flipout")  # fmt: skip
    a("--layer", help="an .h5ad file's layer to read (e.g. counts) instead of X")
    a("--out", required=True, type=Path, help="run directory to write")
    a("--config", type=Path, help="TOML file of RunConfig settings (flags win)")
    a("--data-dir", help="folder holding the dataset's files (e.g. the four MNIST idx files)")
    a("--binarize", choices=("dynamic", "fixed"), help="binarized-mnist: dynamic (default) or fixed")
    a("--limit", type=_positive_int, help="train on the first N training points only")
    a("--epochs", type=_positive_int, help="passes over the training set (default 10)")
    a("--seed", type=int, help="random seed (default 0)")
    a("--latent-dim", type=_positive_int, help="d, dimension of z (default 50)")
    a("--arch", choices=ARCHS, help="the networks: mlp (default) or conv (images: Burgess et al. 2018's β-VAE "
      "convolutions, 4x4 of stride 2 with 32 channels, then the --hidden layers)")  # fmt: skip
    a("--hidden", type=_int_list, help="hidden sizes, comma-separated (default 200,200; with --arch conv the fully "
      "connected layers after the convolutions, default 256,256)")  # fmt: skip
    a("--activation", choices=ACTIVATIONS, help="hidden activation (default tanh; relu with --arch conv)")
    a("--likelihood", help="auto (default: follows the data), bernoulli, continuous-bernoulli, "
      "gaussian[:S|learned|decoder], laplace[:S|learned|decoder]")  # fmt: skip
    a("--guide", help="q(z|x): gaussian (diagonal, default), full (full covariance), flow[:K] (K inverse "
      "autoregressive steps on the Gaussian, default 4; needs elbokit[flows]) or local[:full] (no encoder: a "
      "Gaussian q per training point, non-amortized VI; other points' q is fitted from the prior)")  # fmt: skip
    a("--objective", choices=OBJECTIVES, help="elbo (default) or iwae")
    a("--k", type=_positive_int, help="samples per point (IWAE_k for --objective iwae; default 1)")
    a("--gradient", choices=("reparam", "score", "stl", "dreg", "vimco"),
      help="gradient estimator: reparam (default); score or stl (elbo); stl, dreg or vimco (iwae)")  # fmt: skip
    a("--beta", type=_number, help="KL weight (default 1: the ELBO)")
    a("--anneal", help="constant, linear:N, cyclical:N[:R] or freebits:LAMBDA (N steps or Nep)")
    a("--batch-size", type=_positive_int, help="points per step (default 100)")
    a("--lr", type=_number, help="Adam learning rate (default 1e-3)")
    a("--local-lr", type=_number, help="--guide local: Adam learning rate of the per-point q (default 0.1)")
    a("--lr-schedule", choices=LR_SCHEDULES, help="constant (default) or burda: Burda et al. (2016)'s 8 stages of "
      "3^i epochs at lr 10^(-i/7), scaled to --epochs")  # fmt: skip
    a("--clip", type=_number, help="clip the gradient norm to this value")
    a("--patience", type=_positive_int, help="early stopping after N epochs without improvement")
    a("--device", help="auto (default), cpu or cuda")
    a("--log-every", type=_positive_int, help="also log the bound, β and lr every N steps to steps.jsonl")
    a("--tensorboard", action="store_true", help="also write TensorBoard event files (needs elbokit[tensorboard])")
    a("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    a("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    a("--overwrite", action="store_true", help="replace the run already in --out")
    a("--report", action="store_true", help="at the end, diagnose the run and write report.html")
    add_nproc_flag(p)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    given = {name: value for name, value in vars(args).items() if name in FIELDS}
    if "hidden" in given:
        given["hidden"] = tuple(given["hidden"])
    return given


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values: dict[str, Any] = RunConfig.from_toml(args.config) if getattr(args, "config", None) else {}
    values.update(_given(args))
    return RunConfig.from_dict(values, source=str(getattr(args, "config", "command line")))


def resume_config(args: argparse.Namespace, *, is_file: Any) -> RunConfig:
    """A resumed run keeps its configuration; only the settings in RESUMABLE may change."""
    from elbokit.runs.train import resumed_config

    given = _given(args)
    for name in ("data", "data_dir"):  # compared as the absolute paths the run keeps
        if name in given and (name == "data_dir" or is_file(given[name])):
            given[name] = str(Path(given[name]).expanduser().absolute())
    try:
        return resumed_config(args.out, given)
    except ValueError as err:
        raise UsageError(str(err)) from None
