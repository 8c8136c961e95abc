r"""elbokit's Bayesian neural network on the UCI regression protocol, beside the published figures.

The protocol of Hernández-Lobato & Adams (2015), as used by Gal & Ghahramani (2016): for each dataset
(``boston``, ``concrete``: ``load_table(name).pooled()``), ``--splits`` (20) random 90/10 train/test splits,
split i drawn by ``torch.randperm`` from a generator seeded by i; one hidden layer of 50 ReLU units; 40 epochs;
inputs and target standardized on the training part (:meth:`BNN.standardize`); trained by
:func:`elbokit.train.bnn.fit_bnn` (Adam, one weight draw per step, each step's noise keyed by
:func:`elbokit.distributed.step_seed`), the ELBO with local reparameterization, a Gaussian likelihood whose noise
is learned. Per split: the test RMSE of the predictive mean and the test log-likelihood
(log (1/S) Σ_s p(y | x, w_s), S = ``--samples`` = 1000 weight draws,
:func:`elbokit.runs.bnn_evaluation.evaluate_bnn`), both in y's original units. Reported: mean ± standard error
(sd / √splits) over the splits.

Settings, as a user would choose them: prior N(0, 1) on every weight and bias (the standardized scale), q's initial
standard deviations 1e-3 (BayesianLinear's default: a network that starts nearly deterministic), the noise's
initial value 1 standardized unit (the target's own spread), one weight draw per step. Batch size and learning
rate are picked per dataset by a small grid (batch {32, 128} × lr {1e-3, 3e-3, 1e-2}) on split 0's *training*
part alone: 80 % of it trains for the same epochs, the other 20 % scores by log predictive density (100 draws);
the test points are never seen. ``--batch`` and ``--lr`` skip the grid.

The numbers here are not timings: they are what the library's BNN reaches on the protocol. Published figures
(test RMSE and log-likelihood, mean ± standard error over 20 splits):

==========  ==================  ==================  ==================  ==================
dataset     PBP RMSE            PBP LL              MC dropout RMSE     MC dropout LL
==========  ==================  ==================  ==================  ==================
boston      3.01 ± 0.18         -2.57 ± 0.09        2.97 ± 0.85         -2.46 ± 0.25
concrete    5.67 ± 0.09         -3.16 ± 0.02        5.23 ± 0.53         -3.04 ± 0.09
==========  ==================  ==================  ==================  ==================

(PBP from Hernández-Lobato & Adams 2015; MC dropout from Gal & Ghahramani 2016; as quoted, not re-checked
against the papers' tables.)

Also, per dataset, the gradient variance of the three estimators (:meth:`BNN.gradient_variance`, 200 draws of
the gradient of the per-point bound w.r.t. every layer's weight means and ρ, on one training minibatch of the
chosen size) at initialization and after training, on split 0: the median over coordinates of each estimator's
per-coordinate variance, and the ratios local / weights and flipout / weights (Kingma, Salimans & Welling 2015:
local reparameterization has a far lower variance than one weight draw shared by the minibatch).

    python benchmarks/bnn_uci.py --json

References:
    Hernández-Lobato & Adams, "Probabilistic Backpropagation for Scalable Learning of Bayesian Neural Networks",
    ICML 2015.
    Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016.
    Kingma, Salimans & Welling, "Variational Dropout and the Local Reparameterization Trick", NeurIPS 2015.
    Wen et al., "Flipout", ICLR 2018.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time
from typing import Any

import torch
from torch import Tensor, nn

from elbokit.config import RunConfig
from elbokit.data.tables import Table, load_table
from elbokit.models.bnn import BNN, ESTIMATORS, parse_prior
from elbokit.runs.bnn_evaluation import evaluate_bnn
from elbokit.train.bnn import fit_bnn

PUBLISHED = {  # dataset -> method -> (RMSE, its stderr, LL, its stderr)
    "boston": {"PBP": (3.01, 0.18, -2.57, 0.09), "MC dropout": (2.97, 0.85, -2.46, 0.25)},
    "concrete": {"PBP": (5.67, 0.09, -3.16, 0.02), "MC dropout": (5.23, 0.53, -3.04, 0.09)},
}
HIDDEN = (50,)
PRIOR = "normal:1"
NOISE_SCALE = 1.0  # σ's initial value, standardized units
INIT_SCALE = 1e-3  # q's initial standard deviations
GRID = {"batch": (32, 128), "lr": (1e-3, 3e-3, 1e-2)}
GRADIENT_REPEATS = 200


def split_indices(n: int, split: int, train_fraction: float = 0.9) -> tuple[Tensor, Tensor]:
    """The train and test rows of split ``split``: a permutation seeded by ``split``, its first 90 % train."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split))
    n_train = round(train_fraction * n)
    return order[:n_train], order[n_train:]


def make_table(name: str, x_train: Tensor, y_train: Tensor, x_valid: Tensor, y_valid: Tensor) -> Table:
    """A regression Table for ``fit_bnn``; it reads only the train and validation splits (test repeats valid)."""
    return Table(name=name, x_train=x_train, y_train=y_train, x_validation=x_valid, y_validation=y_valid,
                 x_test=x_valid, y_test=y_valid, task="regression", feature_names=None, target="y", classes=None,
                 source=f"{name} (UCI split)")  # fmt: skip


def new_model(x_train: Tensor, y_train: Tensor, *, seed: int) -> BNN:
    torch.manual_seed(seed)
    model = BNN(x_train.shape[1], HIDDEN, 1, task="regression", activation=nn.ReLU, prior=parse_prior(PRIOR),
                estimator="local", noise_scale=NOISE_SCALE, init_scale=INIT_SCALE)  # fmt: skip
    model.standardize(x_train, y_train)
    return model


def train(model: BNN, table: Table, *, batch: int, lr: float, epochs: int, seed: int) -> None:
    config = RunConfig(data=table.name, model="bnn", task="regression", prior=PRIOR, estimator="local",
                       hidden=HIDDEN, activation="relu", epochs=epochs, batch_size=batch, lr=lr, seed=seed)  # fmt: skip
    fit_bnn(model, table, config)


def choose_settings(name: str, x: Tensor, y: Tensor, *, epochs: int) -> tuple[int, float, list[dict[str, Any]]]:
    """Batch size and learning rate by validation log predictive density on split 0's training part (80/20)."""
    train_rows, _ = split_indices(x.shape[0], 0)
    inner = train_rows[torch.randperm(train_rows.shape[0], generator=torch.Generator().manual_seed(12345))]
    cut = round(0.8 * inner.shape[0])
    fit_rows, valid_rows = inner[:cut], inner[cut:]
    table = make_table(name, x[fit_rows], y[fit_rows], x[valid_rows], y[valid_rows])
    scores = []
    for batch in GRID["batch"]:
        for lr in GRID["lr"]:
            model = new_model(table.x_train, table.y_train, seed=0)
            train(model, table, batch=batch, lr=lr, epochs=epochs, seed=0)
            ev = evaluate_bnn(model, table.x_validation, table.y_validation, samples=100, seed=0, split="validation")
            scores.append({"batch": batch, "lr": lr, "validation_ll": ev.log_likelihood, "validation_rmse": ev.rmse})
    best = max(scores, key=lambda s: s["validation_ll"] if math.isfinite(s["validation_ll"]) else -math.inf)
    return int(best["batch"]), float(best["lr"]), scores


def gradient_medians(model: BNN, x: Tensor, y: Tensor, *, num_data: int, seed: int) -> dict[str, float]:
    """Median per-coordinate variance of each estimator's gradient (weight means and ρ of every layer)."""
    stats = model.gradient_variance(x, y, num_data=num_data, estimators=ESTIMATORS, repeats=GRADIENT_REPEATS,
                                    generator=torch.Generator().manual_seed(seed))  # fmt: skip
    medians = {name: float(s.variance.median()) for name, s in stats.items()}
    medians["local_over_weights"] = medians["local"] / medians["weights"]
    medians["flipout_over_weights"] = medians["flipout"] / medians["weights"]
    return medians


def mean_stderr(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], float("nan")
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def run_dataset(name: str, *, splits: int, epochs: int, samples: int, batch: int | None,
                lr: float | None) -> dict[str, Any]:  # fmt: skip
    x, y = load_table(name).pooled()
    started = time.perf_counter()
    grid: list[dict[str, Any]] = []
    if batch is None or lr is None:
        chosen_batch, chosen_lr, grid = choose_settings(name, x, y, epochs=epochs)
        batch = chosen_batch if batch is None else batch
        lr = chosen_lr if lr is None else lr
    rows = []
    gradients: dict[str, dict[str, float]] = {}
    for split in range(splits):
        train_rows, test_rows = split_indices(x.shape[0], split)
        x_train, y_train, x_test, y_test = x[train_rows], y[train_rows], x[test_rows], y[test_rows]
        # fit_bnn's per-epoch validation figures (unused here) are computed on the training part
        table = make_table(name, x_train, y_train, x_train, y_train)
        model = new_model(x_train, y_train, seed=split)
        if split == 0:
            minibatch = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(1))[:batch]
            xb, yb = x_train[minibatch], y_train[minibatch]
            gradients["initial"] = gradient_medians(model, xb, yb, num_data=x_train.shape[0], seed=2)
        train(model, table, batch=batch, lr=lr, epochs=epochs, seed=split)
        if split == 0:
            gradients["trained"] = gradient_medians(model, xb, yb, num_data=x_train.shape[0], seed=3)
        ev = evaluate_bnn(model, x_test, y_test, samples=samples, seed=split)
        rows.append({"split": split, "rmse": ev.rmse, "log_likelihood": ev.log_likelihood,
                     "noise": float(model.noise.detach() * model.y_std)})  # fmt: skip
    rmse = mean_stderr([r["rmse"] for r in rows])
    ll = mean_stderr([r["log_likelihood"] for r in rows])
    return {"dataset": name, "n": x.shape[0], "in_features": x.shape[1], "splits": splits, "epochs": epochs,
            "samples": samples, "batch": batch, "lr": lr, "grid": grid, "rmse_mean": rmse[0], "rmse_stderr": rmse[1],
            "ll_mean": ll[0], "ll_stderr": ll[1], "per_split": rows, "gradient_variance": gradients,
            "published": {k: dict(zip(("rmse", "rmse_stderr", "ll", "ll_stderr"), v, strict=True))
                          for k, v in PUBLISHED.get(name, {}).items()},
            "seconds": time.perf_counter() - started}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--datasets", nargs="+", default=["boston", "concrete"])
    parser.add_argument("--splits", type=int, default=20, help="random 90/10 splits (default 20)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per training run (default 40)")
    parser.add_argument("--samples", type=int, default=1000, help="weight draws for the test figures (default 1000)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: chosen by the grid)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: chosen by the grid)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [run_dataset(name, splits=args.splits, epochs=args.epochs, samples=args.samples, batch=args.batch,
                           lr=args.lr) for name in args.datasets]  # fmt: skip

    print(f"{'dataset':<10}{'method':<22}{'test RMSE':>16}{'test LL':>18}")
    for r in results:
        print(f"{r['dataset']:<10}{'elbokit BNN (local)':<22}{r['rmse_mean']:>9.2f} ± {r['rmse_stderr']:<4.2f}"
              f"{r['ll_mean']:>11.2f} ± {r['ll_stderr']:<4.2f}")  # fmt: skip
        for method, p in r["published"].items():
            print(f"{'':<10}{method + ' (published)':<22}{p['rmse']:>9.2f} ± {p['rmse_stderr']:<4.2f}"
                  f"{p['ll']:>11.2f} ± {p['ll_stderr']:<4.2f}")  # fmt: skip
    print()
    for r in results:
        print(f"{r['dataset']}: batch {r['batch']}, lr {r['lr']:g}, {r['epochs']} epochs, {r['splits']} splits, "
              f"{r['samples']} test draws, {r['seconds']:.0f} s")  # fmt: skip
        for g in r["grid"]:
            print(f"  grid batch {g['batch']:>4} lr {g['lr']:<7g} validation LL {g['validation_ll']:8.3f} "
                  f"RMSE {g['validation_rmse']:6.3f}")  # fmt: skip
    print()
    print("gradient variance on split 0 (median per-coordinate variance of the per-point bound's gradient, "
          f"{GRADIENT_REPEATS} draws; weight means and rho of every layer)")  # fmt: skip
    print(f"{'dataset':<10}{'when':<9}{'weights':>11}{'local':>11}{'flipout':>11}{'local/w':>9}{'flipout/w':>10}")
    for r in results:
        for when, g in r["gradient_variance"].items():
            print(f"{r['dataset']:<10}{when:<9}{g['weights']:>11.3e}{g['local']:>11.3e}{g['flipout']:>11.3e}"
                  f"{g['local_over_weights']:>9.3f}{g['flipout_over_weights']:>10.3f}")  # fmt: skip
    if args.json:
        print(json.dumps({"datasets": results, "threads": args.threads, "torch": torch.__version__,
                          "date": datetime.date.today().isoformat()}))  # fmt: skip


if __name__ == "__main__":
    main()
