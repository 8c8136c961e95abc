r"""Test log-likelihood of VAEs and IWAEs trained by elbokit under Burda et al. (2016)'s protocol, beside their
Table 1, and Pyro trained identically at the shortest budget.

The protocol (Burda, Grosse & Salakhutdinov 2016, sections 5 and Appendix): MNIST dynamically binarized (a fresh
x ~ Bernoulli(pixel intensities) every epoch), the architecture with one stochastic layer, 784-200-200-50 with
tanh on both sides, a Bernoulli decoder and a diagonal Gaussian q; batches of 20; Adam with the learning rate
10^(-i/7) 10^-3 in stage i = 0..7 of 3^i epochs, 3,280 epochs in all (``--lr-schedule burda``); the test
log-likelihood estimated by importance sampling with k = 5000 on the stochastically binarized test set (elbokit's
``binarized-mnist`` test split: one fixed draw, the same for every run). Table 1 gives, as negative test
log-likelihoods in nats: VAE (k = 1) 86.76, IWAE k = 50 84.78.

``--fraction f`` trains for round(3280 f) epochs, every stage f times as long (``elbokit.train.schedules``), for
each model named by ``--models``:

- ``vae``: the ELBO with one sample (k = 1).
- ``iwae5``, ``iwae50``: the IWAE bound with k = 5, 50 (reparameterized gradient).
- ``pyro``: Pyro's ``SVI`` with ``TraceMeanField_ELBO`` (analytic KL, as elbokit's ELBO) on the same modules,
  started from the same weights, with the same batches, binarization and learning rate each epoch
  (``pyro.optim.Adam``, its rate set at every epoch's start), at ``--pyro-fraction`` (default 0.01): the peer at
  the shortest budget.

The elbokit models train through the command line, ``elbokit fit --resume``-able, into ``--out``/NAME-f (default
``benchmarks/results/quality``): a run that ``--budget-minutes`` stops is saved where it stopped, and the same
command continues it (the IWAE k = 50 schedule is long on a CPU). All models are then evaluated by the same code:
the test ELBO and log p(x) at ``--k`` = 5000 on the first ``--test-points`` test images (default all 10,000), with
its Monte-Carlo standard error, one evaluation seed for every model. Differences from the paper: Adam's epsilon is
torch's 1e-8 (Burda et al. give 1e-4); the decoder's output bias starts at the logit of the training mean, as
theirs; weights start from torch's default initialisation.

    python benchmarks/quality.py --fraction 0.1 --models vae --json
    python benchmarks/quality.py --fraction 0.01 --models vae iwae5 pyro --test-points 1000 --json

Prints a table, then one JSON object as the last line with ``--json``.

Target: at one tenth of the schedule, within 1.5 nats of Table 1; at the full schedule,
at or below it.

References:
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
    Bingham et al., "Pyro: deep universal probabilistic programming", JMLR 2019.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from elbokit.config import RunConfig
from elbokit.data import load
from elbokit.runs import build_model, new_model, open_run
from elbokit.train.schedules import BURDA_EPOCHS, lr_factor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import epoch_data, evaluate_points, same_weights

#: name -> (objective, k, Table 1's negative test log-likelihood in nats or None where not quoted here)
MODELS: dict[str, tuple[str, int, float | None]] = {
    "vae": ("elbo", 1, 86.76),
    "iwae5": ("iwae", 5, None),
    "iwae50": ("iwae", 50, 84.78),
}
TARGET_NATS = 1.5  # at a tenth of the schedule
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality"


def epochs_for(fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return max(1, round(BURDA_EPOCHS * fraction))


def config_for(objective: str, k: int, epochs: int, seed: int) -> RunConfig:
    return RunConfig(
        data="binarized-mnist", binarize="dynamic", latent_dim=50, hidden=(200, 200), activation="tanh",
        likelihood="bernoulli", objective=objective, k=k, batch_size=20, lr=1e-3, lr_schedule="burda",
        epochs=epochs, seed=seed, quiet=True, device="cpu",
    )  # fmt: skip


def fit_command(config: RunConfig, out: Path, *, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "elbokit.cli", "fit", "--out", str(out), "--data", config.data,
           "--binarize", str(config.binarize), "--latent-dim", str(config.latent_dim),
           "--hidden", ",".join(map(str, config.hidden)), "--activation", config.activation,
           "--likelihood", config.likelihood, "--objective", config.objective, "--k", str(config.k),
           "--batch-size", str(config.batch_size), "--lr", str(config.lr), "--lr-schedule", config.lr_schedule,
           "--epochs", str(config.epochs), "--seed", str(config.seed), "--device", config.device,
           "--quiet"]  # fmt: skip
    return [*cmd, "--resume"] if resume else cmd


def epochs_done(out: Path) -> int:
    state = out / "state.json"
    return int(json.loads(state.read_text())["epoch"]) if state.exists() else 0


def train_elbokit(name: str, config: RunConfig, out: Path, *, budget_s: float | None, threads: int) -> dict[str, Any]:
    """Train (or continue) one model by ``elbokit fit``; stop it by SIGINT after ``budget_s`` seconds."""
    resume = (out / "checkpoint.safetensors").exists()
    if resume:
        saved = RunConfig.load(out / "config.json")
        if saved != config:
            raise SystemExit(f"{out} holds a run with another configuration: remove it or pass another --out")
    done_before = epochs_done(out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    if done_before < config.epochs:
        proc = subprocess.Popen(fit_command(config, out, resume=resume), env=env)
        try:
            proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # elbokit fit saves a resumable checkpoint and exits
            proc.wait()
        if proc.returncode not in (0, 130):
            raise SystemExit(f"elbokit fit for {name} failed with exit status {proc.returncode}")
    seconds = time.perf_counter() - started
    done = epochs_done(out)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "epochs_done": done, "complete": done >= config.epochs, "seconds_this_call": seconds,
        "train_seconds_total": sum(m["seconds"] for m in metrics),
        "last_lr": metrics[-1]["lr"] if metrics else None,
        "validation_bound_last": metrics[-1]["validation_bound"] if metrics else None,
    }  # fmt: skip


def train_pyro(config: RunConfig, *, threads: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Pyro SVI (TraceMeanField_ELBO) on a VAE built as elbokit builds it, trained as ``elbokit fit`` trains."""
    import pyro
    from pyro.infer import SVI, TraceMeanField_ELBO
    from pyro.optim import PyroOptim
    from vae_vs_pyro import PyroVae

    torch.set_num_threads(threads)
    data = load("binarized-mnist", seed=config.seed)
    vae = new_model(config, data)  # the initial weights of `elbokit fit` with this config
    torch.manual_seed(config.seed)
    check = build_model(config, data.data_dim)
    check.init_output_bias(data.train.mean(0))
    if not same_weights(vae, check):
        raise RuntimeError("Pyro's VAE does not start from elbokit's initial weights")
    pyro.clear_param_store()
    pyro.set_rng_seed(config.seed)
    pyro_vae = PyroVae(vae, scale=1.0)
    optimizer = PyroOptim(torch.optim.Adam, {"lr": config.lr * lr_factor(config.lr_schedule, 0, config.epochs)})
    svi = SVI(pyro_vae.model, pyro_vae.guide, optimizer, loss=TraceMeanField_ELBO())
    train, b = data.train, config.batch_size
    steps = math.ceil(train.shape[0] / b)
    seconds, elbo = 0.0, math.nan
    vae.train()
    for epoch in range(config.epochs):
        lr = config.lr * lr_factor(config.lr_schedule, epoch, config.epochs)
        for opt in optimizer.optim_objs.values():  # created at the first step, one per parameter tensor
            for group in opt.param_groups:
                group["lr"] = lr
        x_epoch, order = epoch_data(train, seed=config.seed, epoch=epoch)
        started = time.perf_counter()
        loss = 0.0
        for position in range(steps):
            loss += svi.step(x_epoch[order[position * b : (position + 1) * b]])
        seconds += time.perf_counter() - started
        elbo = -loss / train.shape[0]
        print(f"pyro epoch {epoch + 1}/{config.epochs}: {time.perf_counter() - started:.1f} s, lr {lr:.2e}, "
              f"train ELBO {elbo:.3f}", file=sys.stderr)  # fmt: skip
    vae.eval()
    return vae, {"epochs_done": config.epochs, "complete": True, "train_seconds_total": seconds,
                 "train_elbo_last_epoch": elbo, "last_lr": lr}  # fmt: skip


def evaluate(model: torch.nn.Module, x_test: torch.Tensor, *, k: int, seed: int) -> dict[str, float]:
    points = evaluate_points(model, x_test, k=k, seed=seed)  # type: ignore[arg-type]
    se = points.log_px_stderr.double()
    log_px = float(points.log_px.double().mean())
    return {
        "elbo": float(points.elbo.double().mean()), "log_px": log_px, "nll": -log_px,
        "log_px_stderr": float(se.square().sum().sqrt()) / se.shape[0],
        # sd over test points / sqrt(n): how much another test set of the same size would move the mean
        "log_px_stderr_over_points": float(points.log_px.double().std()) / math.sqrt(x_test.shape[0]),
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = load("binarized-mnist", seed=args.seed)
    x_test = data.test[: args.test_points]
    rows: list[dict[str, Any]] = []
    budget = None if args.budget_minutes is None else args.budget_minutes * 60
    for name in args.models:
        if name == "pyro":
            continue
        objective, k, table = MODELS[name]
        config = config_for(objective, k, epochs_for(args.fraction), args.seed)
        out = args.out / f"{name}-{args.fraction:g}"
        row: dict[str, Any] = {"model": name, "trainer": "elbokit", "objective": objective, "k": k,
                               "fraction": args.fraction, "epochs": config.epochs, "table1_nll": table,
                               "out": str(out)}  # fmt: skip
        row.update(train_elbokit(name, config, out, budget_s=budget, threads=args.threads))
        if row["epochs_done"] > 0:
            torch.set_num_threads(args.threads)
            model = open_run(out, device="cpu").model
            row.update(evaluate(model, x_test, k=args.k, seed=args.eval_seed))
            if table is not None:
                row["nll_minus_table1"] = row["nll"] - table
        rows.append(row)
    if "pyro" in args.models:
        config = config_for("elbo", 1, epochs_for(args.pyro_fraction), args.seed)
        model, info = train_pyro(config, threads=args.threads)
        row = {"model": "vae", "trainer": "pyro", "objective": "elbo", "k": 1, "fraction": args.pyro_fraction,
               "epochs": config.epochs, "table1_nll": MODELS["vae"][2], **info,
               **evaluate(model, x_test, k=args.k, seed=args.eval_seed)}  # fmt: skip
        row["nll_minus_table1"] = row["nll"] - MODELS["vae"][2]
        rows.append(row)
    return {
        "rows": rows, "test_points": x_test.shape[0], "k": args.k, "eval_seed": args.eval_seed, "seed": args.seed,
        "schedule_epochs": BURDA_EPOCHS, "target_nats_at_tenth": TARGET_NATS, "threads": args.threads,
        "torch": torch.__version__, "date": datetime.date.today().isoformat(),
    }  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    print(f"Burda et al. (2016) protocol, k = {result['k']} on {result['test_points']} test images")
    print(f"{'model':8} {'trainer':8} {'fraction':>8} {'epochs':>10} {'-log p(x)':>10} {'± se':>6} {'ELBO':>9} "
          f"{'Table 1':>8} {'diff':>6} {'train s':>8}")  # fmt: skip
    for r in result["rows"]:
        nll = f"{r['nll']:10.2f} {r['log_px_stderr']:6.2f} {r['elbo']:9.2f}" if "nll" in r else f"{'-':>27}"
        table = f"{r['table1_nll']:8.2f}" if r.get("table1_nll") else f"{'-':>8}"
        diff = f"{r['nll_minus_table1']:+6.2f}" if "nll_minus_table1" in r else f"{'-':>6}"
        done = f"{r['epochs_done']}/{r['epochs']}"
        print(f"{r['model']:8} {r['trainer']:8} {r['fraction']:8g} {done:>10} {nll} {table} {diff} "
              f"{r['train_seconds_total']:8.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=0.1, help="fraction of the 3,280-epoch schedule")
    parser.add_argument("--models", nargs="+", choices=(*MODELS, "pyro"), default=["vae", "iwae5", "iwae50", "pyro"])
    parser.add_argument("--pyro-fraction", type=float, default=0.01, help="Pyro's (shortest) budget")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of the run directories")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop each elbokit training after this long (resumable by the same command)")
    parser.add_argument("--test-points", type=int, default=10000, help="the first N test images")
    parser.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
