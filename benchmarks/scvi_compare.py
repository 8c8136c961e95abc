r"""scvi-tools' SCVI and elbokit's count VAE on the same UMI count matrix: held-out ELBO, held-out log p(x) by
importance sampling, and seconds per training epoch.

Both models are trained for the same epochs on exactly the train split (scvi-tools is given ``train_size=1.0``,
so it splits off no validation set of its own) and evaluated on the test split:

* SCVI (scvi-tools): ``n_hidden=128, n_latent=10, n_layers=1, dispersion="gene"``, ``gene_likelihood`` from
  ``--likelihood``, the observed library size (``use_observed_lib_size=True``), batch 128, scvi-tools' own
  ``TrainingPlan`` (Adam, lr 1e-3, weight_decay 1e-6, eps 0.01). Its encoder sees log1p(x) and, by default, both
  networks have batch norm and the encoder dropout 0.1 (``--scvi-arch plain`` turns both off: then the two
  architectures are the same MLPs). scvi-tools' KL warm-up (the KL weight epoch / 400 over the first 400 epochs)
  is off by default so that both train the ELBO itself (``--kl-warmup scvi`` keeps it, and gives elbokit the
  matching ``linear:400ep`` schedule).
* elbokit: ``VAE.mlp(D, 10, hidden=(128,), activation=nn.ReLU, likelihood=LIK)`` (observed library, θ per gene,
  encoder input log1p(x): the defaults of elbokit's ``nb`` / ``zinb``), the decoder's output bias started at the
  training mean as ``elbokit.runs.new_model`` does, trained by ``elbokit.fit`` (Adam, lr 1e-3, batch 128).

Numbers, per test cell then averaged (nats; higher is better):

* ``elbo``: one draw of z per cell, analytic KL(q(z|x) || p(z)), for both. scvi-tools' ``get_elbo`` (1.4) returns
  the ELBO itself (``-compute_elbo``, where ``compute_elbo`` sums reconstruction loss and KL: a positive loss),
  so it is used as is, not negated.
* ``log_px``: log (1/K) Σ_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x), K = ``--k``; for SCVI ``get_marginal_ll(adata,
  n_mc_samples=K, return_mean=False)``, for elbokit ``ek.log_marginal(..., k=K)``. With the observed library
  both are log p(x | library = Σ_j x_j): the library is not a latent variable, there is no library term.
  Alongside the mean over cells: its standard error over cells (sd / sqrt n), the mean Monte-Carlo standard
  error of the per-cell estimates (delta method, sd(w) / (sqrt K mean(w))) and the Pareto k-hat of each cell's
  weights (k-hat > 0.7: the estimate of that cell is unreliable). For SCVI the log weights come from a replica of
  ``VAE.marginal_ll`` run on the same random stream, checked against ``get_marginal_ll`` (``scvi_replica_max_
  abs_diff``), so that its k-hat and standard errors can be reported too.

Seconds per epoch are training steps only, no validation (neither side validates inside the timed span: scvi-
tools has no validation set with ``train_size=1.0``; elbokit's ``FitResult.history[i]["seconds"]`` excludes its
validation pass). For scvi-tools they are measured by a Lightning callback from ``on_train_epoch_start`` to
``on_train_epoch_end`` (its data loader, forward, backward, optimiser step and per-step metric updates; not the
epoch-end metric logging of the LightningModule, which runs after the callbacks). Medians over epochs; the
minima too, as on a shared machine the least disturbed epoch says most.

    /tmp/scvi-venv/bin/python benchmarks/scvi_compare.py --data pbmc --likelihood zinb --epochs 100 --json
    /tmp/scvi-venv/bin/python benchmarks/scvi_compare.py --data synthetic-counts --epochs 2 --json

The script needs scvi-tools in the interpreter that runs it; elbokit is imported from this repository's src/
(needs torch, numpy, tqdm, safetensors). Prints one JSON object last with --json.

References:
    Lopez, Regier, Cole, Jordan & Yosef, "Deep generative modeling for single-cell transcriptomics", Nature
    Methods 15, 2018.
    Gayoso et al., "A Python library for probabilistic analysis of single-cell omics data", Nature
    Biotechnology 40, 2022.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; --threads sets torch's count

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

LATENT = 10
HIDDEN = 128
KHAT_THRESHOLD = 0.7
#: elements of one (samples, cells, genes) tensor that one pass of SCVI's marginal_ll may hold
SCVI_PASS_ELEMENTS = 2**24


# ---- data -------------------------------------------------------------------------------------------------------
def synthetic_counts(seed: int, cells: int = 2000, genes: int = 500, rank: int = 5) -> dict[str, Tensor]:
    """A ZINB count matrix from a small random linear model: z ~ N(0, I_rank), ρ = softmax(z W + b),
    library ~ LogNormal(log 2000, 0.3), x ~ ZINB(library ρ, θ_j, π_j); split 80 / 10 / 10 % at random."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((cells, rank))
    w = rng.standard_normal((rank, genes)) * 0.8
    b = rng.standard_normal(genes)
    logits = z @ w + b
    rho = np.exp(logits - logits.max(1, keepdims=True))
    rho /= rho.sum(1, keepdims=True)
    library = np.exp(rng.normal(math.log(2000.0), 0.3, size=(cells, 1)))
    mu = library * rho
    theta = np.exp(rng.normal(math.log(5.0), 0.5, size=genes))
    pi = 1.0 / (1.0 + np.exp(-rng.normal(-2.0, 1.0, size=genes)))
    rate = rng.gamma(shape=theta, scale=mu / theta)  # NB(mu, theta) as a gamma-Poisson mixture
    x = rng.poisson(rate) * (rng.random((cells, genes)) >= pi)
    x[x.sum(1) == 0, 0] = 1  # no empty cell: its observed log library would be -inf
    order = rng.permutation(cells)
    n_train, n_val = int(0.8 * cells), int(0.1 * cells)
    parts = np.split(order, [n_train, n_train + n_val])
    return {
        name: torch.from_numpy(x[idx].astype(np.float32))
        for name, idx in zip(("train", "validation", "test"), parts, strict=True)
    }


def load_data(args: argparse.Namespace) -> tuple[Any, dict[str, Tensor], str]:
    """(an elbokit Dataset or None, the three splits, a description of the source)."""
    if args.data == "synthetic-counts":
        splits = synthetic_counts(args.seed)
        dataset = None
        try:
            from elbokit.data.base import Dataset

            dataset = Dataset(
                name="synthetic-counts",
                train=splits["train"],
                validation=splits["validation"],
                test=splits["test"],
                train_labels=None,
                validation_labels=None,
                test_labels=None,
                image_shape=None,
                binarize="none",
                support="count",
                source="scvi_compare.py",
            )
        except Exception as err:  # an older elbokit without the "count" support: elbokit side only
            print(f"note: no elbokit Dataset for the synthetic counts ({type(err).__name__}: {err})", file=sys.stderr)
        return dataset, splits, f"synthetic ZINB, seed {args.seed}"
    import elbokit as ek

    data_dirs: list[str | None] = [args.data_dir]
    if args.data_dir is None:  # `make pbmc` puts it into the repository's .venv, which this interpreter is not
        beside = REPO / ".venv" / "share" / "elbokit" / "pbmc"
        if beside.is_dir():
            data_dirs.append(str(beside))
    errors: list[str] = []
    for data_dir in data_dirs:
        try:
            dataset = ek.data.load(args.data, seed=args.seed, data_dir=data_dir)
            break
        except Exception as err:  # try the next folder; report every failure
            errors.append(f"data_dir={data_dir}: {type(err).__name__}: {err}")
    else:
        raise SystemExit(f"cannot load {args.data!r} (pip install rdata for pbmc):\n  " + "\n  ".join(errors))
    splits = {name: getattr(dataset, name).float() for name in ("train", "validation", "test")}
    return dataset, splits, str(getattr(dataset, "source", args.data))


def describe(splits: dict[str, Tensor]) -> dict[str, Any]:
    train = splits["train"]
    return {
        "sizes": {k: int(v.shape[0]) for k, v in splits.items()},
        "genes": int(train.shape[1]),
        "train_mean_library": float(train.sum(1).mean()),
        "train_zero_fraction": float((train == 0).float().mean()),
        "integer_counts": bool(all(torch.equal(v, v.round()) for v in splits.values())),
    }


# ---- shared statistics ------------------------------------------------------------------------------------------
def log_px_summary(values: Tensor, stderr: Tensor | None, khat: Tensor | None) -> dict[str, Any]:
    v = values.double()
    out: dict[str, Any] = {
        "mean": float(v.mean()),
        "sem_over_cells": float(v.std() / math.sqrt(v.numel())) if v.numel() > 1 else None,
        "cells": int(v.numel()),
        "finite": bool(torch.isfinite(v).all()),
    }
    if stderr is not None:
        out["mean_mc_stderr"] = float(stderr.double().mean())
        out["max_mc_stderr"] = float(stderr.double().max())
    if khat is not None:
        bad = khat > KHAT_THRESHOLD
        out["khat_max"] = float(khat.max())
        out["khat_median"] = float(khat.median())
        out["cells_khat_gt_0.7"] = int(bad.sum())
        out["fraction_khat_gt_0.7"] = float(bad.float().mean())
        out["mean_where_khat_le_0.7"] = float(v[~bad].mean()) if bool((~bad).any()) else None
    return out


def mc_stderr(log_w: Tensor) -> Tensor:
    """Delta-method standard error of log mean w per column: sd(w) / (sqrt K mean(w)), unbiased sd. (K, B)."""
    w = (log_w - log_w.max(0).values).exp().double()
    k = w.shape[0]
    return (w.var(0, unbiased=True) / (k * w.mean(0).square())).sqrt().float()


def khat_of(log_w: Tensor) -> Tensor | None:
    try:
        from elbokit.estimators._pareto import pareto_khat
    except ImportError:
        return None
    return pareto_khat(log_w.double()).float()


def median_min(seconds: list[float]) -> dict[str, Any]:
    return {
        "per_epoch": seconds,
        "median": statistics.median(seconds) if seconds else None,
        "min": min(seconds) if seconds else None,
    }


# ---- scvi-tools -------------------------------------------------------------------------------------------------
def _divisor_at_most(k: int, cap: int) -> int:
    """The largest divisor of k that is <= cap (>= 1): marginal_ll divides by n_mc_samples, but draws
    ceil(K / per_pass) * per_pass samples, so per_pass must divide K for the estimate to be the plain IS mean."""
    return max(d for d in range(1, min(k, max(1, cap)) + 1) if k % d == 0)


@torch.inference_mode()
def scvi_log_weights(module: Any, tensors: dict[str, Tensor], k: int, per_pass: int) -> Tensor:
    """(K, B) log p(z) + log p(x | z, l) - log q(z | x): ``scvi.module.VAE.marginal_ll`` before its logsumexp
    (observed library only: then there is no library term), drawing the same random numbers in the same order."""
    from torch.distributions import Normal

    chunks = []
    for _ in range(math.ceil(k / per_pass)):
        inference, _, losses = module.forward(
            tensors, inference_kwargs={"n_samples": per_pass}, get_inference_input_kwargs={"full_forward_pass": True}
        )
        qz, z = inference["qz"], inference["z"]
        log_px_z = -losses.dict_sum(losses.reconstruction_loss)
        log_pz = Normal(torch.zeros_like(qz.loc), torch.ones_like(qz.scale)).log_prob(z).sum(-1)
        log_w = log_pz + log_px_z - qz.log_prob(z).sum(-1)
        chunks.append(log_w.unsqueeze(0) if per_pass == 1 else log_w)
    return torch.cat(chunks).cpu()


class _ScviLikelihood(torch.distributions.Distribution):
    """p(x | z) of a trained scvi-tools module at the observed library of the x it is evaluated at (as scvi-tools'
    own marginal_ll), summed over genes: z (..., B, d) -> batch (..., B), event (D,)."""

    arg_constraints: dict[str, Any] = {}  # noqa: RUF012

    def __init__(self, module: Any, z: Tensor, genes: int) -> None:
        self.module, self.z = module, z
        super().__init__(z.shape[:-1], torch.Size([genes]), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        library = torch.log(value.sum(-1, keepdim=True)).expand(*self.z.shape[:-1], 1)
        batch = torch.zeros(*self.z.shape[:-1], 1, dtype=torch.long)
        px = self.module.generative(self.z, library, batch)["px"]
        return px.log_prob(value).sum(-1)


class ScviModel(torch.nn.Module):
    """A trained scvi-tools SCVI module (observed library, one batch) as an elbokit model and guide: p(z) = N(0, I),
    p(x | z) its decoder's, q(z | x) its encoder's. With it, elbokit's estimators and diagnostics run on
    scvi-tools' own model (here: log p(x) by importance sampling from elbokit's refined proposal)."""

    def __init__(self, module: Any, genes: int) -> None:
        super().__init__()
        self.module, self.genes = module, genes

    def prior(self) -> torch.distributions.Distribution:
        d = self.module.n_latent
        return torch.distributions.Independent(torch.distributions.Normal(torch.zeros(d), torch.ones(d)), 1)

    def likelihood(self, z: Tensor) -> torch.distributions.Distribution:
        return _ScviLikelihood(self.module, z, self.genes)

    def guide(self, x: Tensor) -> torch.distributions.Distribution:
        qz = self.module.inference(x, torch.zeros(x.shape[0], 1, dtype=torch.long))["qz"]
        return torch.distributions.Independent(torch.distributions.Normal(qz.loc, qz.scale), 1)


def refined_log_px(model: Any, guide: Any, x_test: Tensor, args: argparse.Namespace) -> dict[str, Any]:
    """log p(x) per test cell by ek.log_marginal from dx.refined_proposal (``elbokit evaluate``'s default): q
    refined per cell in the full-covariance Gaussian family, mixed defensively with a widened copy."""
    import elbokit as ek
    from elbokit.diagnostics import refined_proposal

    values, errors, khats = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.eval_seed)
        for start in range(0, x_test.shape[0], args.batch_size):
            x = x_test[start : start + args.batch_size]
            proposal = ek.FixedGuide(refined_proposal(model, guide, x, steps=300))
            with torch.inference_mode():
                estimate = ek.log_marginal(model, proposal, x, k=args.k, warn=False)
            values.append(estimate.value)
            errors.append(estimate.stderr)
            if estimate.pareto_k is not None:
                khats.append(estimate.pareto_k)
    out = log_px_summary(torch.cat(values), torch.cat(errors), torch.cat(khats) if khats else None)
    out["note"] = "ek.log_marginal with dx.refined_proposal (elbokit evaluate's default)"
    out["_values"] = torch.cat(values).double()
    return out


def run_scvi(args: argparse.Namespace, splits: dict[str, Tensor]) -> dict[str, Any]:
    import anndata
    import lightning.pytorch as pl
    import scvi

    scvi.settings.seed = args.seed  # seeds torch, numpy and random (lightning's seed_everything)
    scvi.settings.dl_num_workers = 0
    torch.set_num_threads(args.threads)  # scvi.settings.seed does not touch it; set again in case

    def adata_of(x: Tensor, prefix: str) -> Any:
        ad = anndata.AnnData(x.numpy().copy())
        ad.obs_names = [f"{prefix}{i}" for i in range(x.shape[0])]
        ad.var_names = [f"g{j}" for j in range(x.shape[1])]
        return ad

    train, test = adata_of(splits["train"], "train"), adata_of(splits["test"], "test")
    scvi.model.SCVI.setup_anndata(train)
    model_kwargs: dict[str, Any] = {
        "n_hidden": HIDDEN,
        "n_latent": LATENT,
        "n_layers": 1,
        "dispersion": "gene",
        "gene_likelihood": args.likelihood,
        "use_observed_lib_size": True,
    }
    if args.scvi_arch == "plain":
        model_kwargs.update(dropout_rate=0.0, use_batch_norm="none", use_layer_norm="none")
    model = scvi.model.SCVI(train, **model_kwargs)
    plan_kwargs: dict[str, Any] = {"lr": args.lr}
    if args.kl_warmup == "none":
        plan_kwargs["n_epochs_kl_warmup"] = None  # and n_steps_kl_warmup is None: the KL weight is max_kl_weight = 1

    class EpochTimer(pl.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.seconds.append(time.perf_counter() - self._start)

    timer = EpochTimer()
    n_train = splits["train"].shape[0]
    # a last batch of 1 cell breaks batch norm in training mode; elbokit would take it, scvi-tools cannot
    drop_last = n_train % args.batch_size == 1 and args.scvi_arch == "default"
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=args.epochs,
            accelerator="cpu",
            devices=1,
            train_size=1.0,
            batch_size=args.batch_size,
            early_stopping=False,
            plan_kwargs=plan_kwargs,
            callbacks=[timer],
            enable_progress_bar=False,
            datasplitter_kwargs={"drop_last": drop_last},
            enable_model_summary=False,
        )
    train_wall = time.perf_counter() - started
    assert len(model.validation_indices) == 0 and len(model.train_indices) == n_train, "scvi split the data"
    module = model.module
    module.eval()
    params = sum(p.numel() for p in module.parameters())
    # built but unused with these settings: the library encoder (observed library), the per-cell dispersion head
    # (dispersion "gene") and, for nb, the dropout head
    unused = ("l_encoder.", "decoder.px_r_decoder.") + (
        ("decoder.px_dropout_decoder.",) if args.likelihood == "nb" else ()
    )
    used = sum(p.numel() for n, p in module.named_parameters() if not n.startswith(unused))
    out: dict[str, Any] = {
        "versions": {"scvi-tools": scvi.__version__, "lightning": pl.__version__, "anndata": _version("anndata")},
        "model_kwargs": model_kwargs,
        "plan_kwargs": plan_kwargs,
        "optimizer": _scvi_optimizer(model),
        "drop_last": drop_last,
        "parameters": params,
        "parameters_used": used,
        "epochs": len(timer.seconds),
        "seconds": median_min(timer.seconds),
        "seconds_timer": "lightning Callback on_train_epoch_start -> on_train_epoch_end, time.perf_counter",
        "train_wall_seconds": train_wall,
        "train_loss_last_epoch": _last(model.history.get("train_loss")),  # loss (with the KL weight) per cell
        "elbo_train_last_epoch": _last(model.history.get("elbo_train")),  # its reconstruction + KL: a positive loss
        "threads_after_training": torch.get_num_threads(),
    }

    torch.manual_seed(args.eval_seed)
    elbo = model.get_elbo(test, return_mean=False, batch_size=args.batch_size)
    out["elbo"] = {
        "mean": float(elbo.double().mean()),
        "sem_over_cells": float(elbo.double().std() / math.sqrt(elbo.numel())),
        "note": "get_elbo: -(reconstruction + KL_z) per cell, 1 draw of z, analytic KL; already the ELBO",
    }

    genes = splits["test"].shape[1]
    per_pass = _divisor_at_most(args.k, SCVI_PASS_ELEMENTS // (args.batch_size * genes))
    started = time.perf_counter()
    torch.manual_seed(args.eval_seed)
    official = model.get_marginal_ll(
        test, n_mc_samples=args.k, return_mean=False, batch_size=args.batch_size, n_mc_samples_per_pass=per_pass
    )
    out["log_px_seconds"] = time.perf_counter() - started
    # the replica: same loader order (no shuffle), same seed, same passes -> the same draws
    torch.manual_seed(args.eval_seed)
    loader = model._make_data_loader(adata=model._validate_anndata(test), batch_size=args.batch_size)
    log_w = torch.cat([scvi_log_weights(module, tensors, args.k, per_pass) for tensors in loader], dim=1)
    replica = torch.logsumexp(log_w, 0) - math.log(args.k)
    out["log_px"] = log_px_summary(official.float(), mc_stderr(log_w), khat_of(log_w))
    out["log_px"]["k"] = args.k
    out["log_px"]["n_mc_samples_per_pass"] = per_pass
    out["log_px"]["note"] = (
        "get_marginal_ll: logsumexp_k[log p(z_k) + log p(x|z_k, l_obs) - log q(z_k|x)] - log K, "
        "z_k ~ q(z|x); mc stderr and k-hat from the replica's weights"
    )
    out["scvi_replica_max_abs_diff"] = float((replica - official.float()).abs().max())
    out["elbo_le_log_px_fraction"] = float((elbo.float() <= official.float() + 1e-3).float().mean())
    # scvi-tools' own model, its log p(x) estimated by elbokit from the refined proposal
    scvi_model = ScviModel(module, genes)
    for p in scvi_model.parameters():
        p.requires_grad_(False)
    out["log_px_refined"] = refined_log_px(scvi_model, scvi_model.guide, splits["test"], args)
    refined_values = out["log_px_refined"].pop("_values")
    out["_cells"] = {"elbo": elbo.double(), "log_px": official.double(), "khat": khat_of(log_w),
                     "log_px_refined": refined_values}  # fmt: skip
    return out


def _scvi_optimizer(model: Any) -> dict[str, Any]:
    plan = getattr(getattr(model, "trainer", None), "lightning_module", None)
    if plan is None:
        return {}
    return {
        "name": plan.optimizer_name,
        "lr": plan.lr,
        "weight_decay": plan.weight_decay,
        "eps": plan.eps,
        "n_epochs_kl_warmup": plan.n_epochs_kl_warmup,
        "n_steps_kl_warmup": plan.n_steps_kl_warmup,
        "max_kl_weight": plan.max_kl_weight,
    }


def _paired_sem(a: Tensor, b: Tensor) -> float | None:
    diff = (a - b).double()
    return float(diff.std() / math.sqrt(diff.numel())) if diff.numel() > 1 else None


def _last(frame: Any) -> float | None:
    try:
        return float(frame.iloc[-1, 0])
    except Exception:
        return None


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ---- elbokit ----------------------------------------------------------------------------------------------------
class ElbokitMissing(RuntimeError):
    """elbokit lacks what this comparison needs (count likelihoods, the API)."""


def build_elbokit_model(data_dim: int, likelihood: str, train: Tensor, seed: int) -> Any:  # an elbokit VAE
    try:
        from elbokit.models import VAE
    except ImportError as err:
        raise ElbokitMissing(f"cannot import elbokit.models.VAE: {err}") from err
    torch.manual_seed(seed)
    try:
        model = VAE.mlp(data_dim, LATENT, hidden=(HIDDEN,), activation=nn.ReLU, likelihood=likelihood)
    except (ValueError, KeyError, TypeError, ImportError, NotImplementedError) as err:
        raise ElbokitMissing(
            f"elbokit cannot build VAE.mlp(..., likelihood={likelihood!r}): {type(err).__name__}: {err} "
            f"(the count likelihoods nb / zinb are not in this elbokit yet?)"
        ) from err
    # as elbokit.runs.new_model: the decoder starts at the training mean, generation's library at the median total
    init = getattr(model, "init_output_bias", None)
    if callable(init):
        init(train.mean(0))
    set_library = getattr(getattr(model, "observation", None), "set_library", None)
    if callable(set_library):
        set_library(float(train.sum(1).median()))
    return model


def run_elbokit(args: argparse.Namespace, dataset: Any, splits: dict[str, Tensor]) -> dict[str, Any]:
    import elbokit as ek

    if dataset is None:
        raise ElbokitMissing("no elbokit Dataset for these data (elbokit.data.base.Dataset lacks support='count'?)")
    torch.set_num_threads(args.threads)
    train = splits["train"]
    model = build_elbokit_model(train.shape[1], args.likelihood, train, args.seed)
    anneal = "constant" if args.kl_warmup == "none" else "linear:400ep"
    cfg = ek.RunConfig(
        data=args.data,
        latent_dim=LATENT,
        hidden=(HIDDEN,),
        activation="relu",
        likelihood=args.likelihood,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        anneal=anneal,
        quiet=True,
        device="cpu",
        seed=args.seed,
    )
    started = time.perf_counter()
    result = ek.fit(model, model.encoder, dataset, cfg)
    train_wall = time.perf_counter() - started
    seconds = [float(r["seconds"]) for r in result.history]
    out: dict[str, Any] = {
        "versions": {"elbokit": getattr(ek, "__version__", None)},
        "config": {
            "latent_dim": LATENT,
            "hidden": [HIDDEN],
            "activation": "relu",
            "likelihood": args.likelihood,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "anneal": anneal,
            "seed": args.seed,
            "optimizer": "Adam (elbokit.fit; torch defaults eps 1e-8, no weight decay)",
        },
        "likelihood": repr(getattr(model, "observation", None)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": result.epochs,
        "stopped": result.stopped,
        "seconds": median_min(seconds),
        "seconds_timer": "FitResult.history[i]['seconds']: training steps only, no validation",
        "train_wall_seconds": train_wall,
        "train_bound_last_epoch": result.history[-1].get("train_bound") if result.history else None,
        "validation_elbo_last_epoch": result.history[-1].get("validation_elbo") if result.history else None,
        "threads_after_training": torch.get_num_threads(),
    }
    model.eval()
    x_test = splits["test"]
    elbos, values, errors, khats = [], [], [], []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(args.eval_seed)
        for start in range(0, x_test.shape[0], args.batch_size):
            x = x_test[start : start + args.batch_size]
            elbos.append(ek.elbo(model, model.encoder, x, samples=1).value)
        torch.manual_seed(args.eval_seed)
        for start in range(0, x_test.shape[0], args.batch_size):
            x = x_test[start : start + args.batch_size]
            estimate = ek.log_marginal(model, model.encoder, x, k=args.k, warn=False)
            values.append(estimate.value)
            errors.append(estimate.stderr)
            if estimate.pareto_k is not None:
                khats.append(estimate.pareto_k)
    elbo = torch.cat(elbos).double()
    out["log_px_seconds"] = time.perf_counter() - started
    out["elbo"] = {
        "mean": float(elbo.mean()),
        "sem_over_cells": float(elbo.std() / math.sqrt(elbo.numel())),
        "note": "ek.elbo(samples=1): 1 draw of z per cell, analytic KL",
    }
    value = torch.cat(values)
    out["log_px"] = log_px_summary(value, torch.cat(errors), torch.cat(khats) if khats else None)
    out["log_px"]["k"] = args.k
    out["log_px"]["note"] = "ek.log_marginal(k=K): q(z|x) as proposal, log p(x | l_obs)"
    out["elbo_le_log_px_fraction"] = float((elbo.float() <= value + 1e-3).float().mean())
    out["log_px_refined"] = refined_log_px(model, model.encoder, x_test, args)
    refined_values = out["log_px_refined"].pop("_values")
    out["_cells"] = {"elbo": elbo, "log_px": value.double(), "khat": torch.cat(khats) if khats else None,
                     "log_px_refined": refined_values}  # fmt: skip
    return out


# ---- main -------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    dataset, splits, source = load_data(args)
    if args.test_points is not None:
        splits["test"] = splits["test"][: args.test_points]
    out: dict[str, Any] = {
        "benchmark": "scvi_compare",
        "data": {"name": args.data, "source": source, **describe(splits)},
        "likelihood": args.likelihood,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "k": args.k,
        "kl_warmup": args.kl_warmup,
        "scvi_arch": args.scvi_arch,
        "seed": args.seed,
        "eval_seed": args.eval_seed,
        "threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "errors": {},
    }
    sides = [s for s in ("scvi", "elbokit") if s not in args.skip]
    for side in sides:
        if not args.json:
            print(f"training {side} ...", file=sys.stderr)
        try:
            out[side] = run_scvi(args, splits) if side == "scvi" else run_elbokit(args, dataset, splits)
        except ElbokitMissing as err:
            out["errors"][side] = f"{type(err).__name__}: {err}"
            print(f"{side} side failed: {err}", file=sys.stderr)
        except Exception as err:  # report the other side all the same
            out["errors"][side] = f"{type(err).__name__}: {err}"
            print(f"{side} side failed:\n{traceback.format_exc()}", file=sys.stderr)
    cells = {side: out[side].pop("_cells") for side in sides if side in out}
    if "scvi" in out and "elbokit" in out:
        ours, theirs = out["elbokit"], out["scvi"]
        med_o, med_t = ours["seconds"]["median"], theirs["seconds"]["median"]
        min_o, min_t = ours["seconds"]["min"], theirs["seconds"]["min"]
        out["compare"] = {
            "epoch_seconds_ratio_elbokit_over_scvi_median": med_o / med_t if med_o and med_t else None,
            "epoch_seconds_ratio_elbokit_over_scvi_min": min_o / min_t if min_o and min_t else None,
            "elbo_elbokit_minus_scvi": ours["elbo"]["mean"] - theirs["elbo"]["mean"],
            "log_px_elbokit_minus_scvi": ours["log_px"]["mean"] - theirs["log_px"]["mean"],
            # the same test cells in the same order: paired over cells, sd(diff) / sqrt(n)
            "elbo_difference_paired_sem": _paired_sem(cells["elbokit"]["elbo"], cells["scvi"]["elbo"]),
            "log_px_difference_paired_sem": _paired_sem(cells["elbokit"]["log_px"], cells["scvi"]["log_px"]),
            "log_px_elbokit_better_fraction": float(
                (cells["elbokit"]["log_px"] > cells["scvi"]["log_px"]).double().mean()
            ),
        }
        # Both models' log p(x) from elbokit's refined proposal: the comparison the k-hat check can vouch for
        ro, rt = cells["elbokit"]["log_px_refined"], cells["scvi"]["log_px_refined"]
        out["compare"]["log_px_refined_elbokit_minus_scvi"] = float((ro - rt).mean())
        out["compare"]["log_px_refined_difference_paired_sem"] = _paired_sem(ro, rt)
        # How far each model's q(z|x)-proposal estimate (scvi-tools' get_marginal_ll) falls below the refined one
        out["compare"]["encoder_proposal_shortfall"] = {
            "elbokit": float((ro - cells["elbokit"]["log_px"]).mean()),
            "scvi": float((rt - cells["scvi"]["log_px"]).mean()),
        }
        k_ours, k_theirs = cells["elbokit"]["khat"], cells["scvi"]["khat"]
        if k_ours is not None and k_theirs is not None:
            both = (k_ours <= KHAT_THRESHOLD) & (k_theirs <= KHAT_THRESHOLD)
            diff = (cells["elbokit"]["log_px"] - cells["scvi"]["log_px"])[both]
            out["compare"]["where_both_khat_le_0.7"] = {
                "cells": int(both.sum()),
                "log_px_elbokit_minus_scvi": float(diff.mean()) if diff.numel() else None,
                "paired_sem": float(diff.std() / math.sqrt(diff.numel())) if diff.numel() > 1 else None,
            }
        if "cells_khat_gt_0.7" in ours["log_px"] and "cells_khat_gt_0.7" in theirs["log_px"]:
            out["compare"]["cells_khat_gt_0.7"] = {
                "elbokit": ours["log_px"]["cells_khat_gt_0.7"],
                "scvi": theirs["log_px"]["cells_khat_gt_0.7"],
            }
    out["threads_end"] = torch.get_num_threads()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("pbmc", "synthetic-counts"), default="pbmc")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder holding the pbmc data (default: elbokit's places, then <repo>/.venv/share/elbokit/pbmc)",
    )
    parser.add_argument("--likelihood", choices=("nb", "zinb"), default="zinb")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--k", type=int, default=1000, help="importance samples per test cell for log p(x)")
    parser.add_argument("--test-points", type=int, default=None, help="only the first N test cells")
    parser.add_argument(
        "--kl-warmup",
        choices=("none", "scvi"),
        default="none",
        help="none: KL weight 1 throughout, both sides; scvi: scvi-tools' default warm-up over 400 "
        "epochs and elbokit's anneal linear:400ep",
    )
    parser.add_argument(
        "--scvi-arch",
        choices=("default", "plain"),
        default="default",
        help="default: SCVI's batch norm (both networks) and encoder dropout 0.1; plain: neither",
    )
    parser.add_argument("--skip", action="append", choices=("scvi", "elbokit"), default=[])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if args.k < 2:
        parser.error("--k must be >= 2")
    out = run(args)
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
