r"""Bayes by Backprop on MNIST with elbokit's trainer, for a stated budget: test error, test log-likelihood, speed.

Blundell et al. (2015) report 1.34 % test error for a 784-1200-1200-10 ReLU network with the scale-mixture prior
(the figure as quoted; not re-checked against the paper's table), after hundreds of epochs of
SGD. Here the same network is trained by :func:`elbokit.train.bnn.fit_bnn` for a budget far shorter, so the
figure is where the library stands after N epochs (or M minutes) on this machine, not a replication:

- data: ``load_table("mnist")``: grey values in [0, 1] (Blundell et al. divide by 126 instead), the dataset's own
  50000 / 10000 / 10000 train / validation / test split; inputs standardized on the training split
  (:meth:`BNN.standardize`, as ``elbokit fit --model bnn`` does).
- model: :class:`elbokit.models.bnn.BNN`, hidden (1200, 1200), ReLU, the scale-mixture prior
  p(w) = π N(0, σ1²) + (1 − π) N(0, σ2²) with π = 0.5, σ1 = e^0 = 1, σ2 = e^-6 (one of the settings of the paper's
  grid, π ∈ {1/4, 1/2}, −log σ1 ∈ {0, 1, 2}, −log σ2 ∈ {6, 7, 8}; ``--prior`` changes it), whose KL is a one-draw
  Monte-Carlo estimate; the local reparameterization estimator (Kingma et al. 2015); q's initial standard
  deviations 1e-3 (the library's default).
- training: ``fit_bnn`` (Adam, lr ``--lr`` = 1e-3, batch 128, one weight draw per step, full KL weight each step:
  the ELBO with the data term scaled by N / B). ``--epochs N`` runs N epochs; ``--minutes M`` stops after the
  first epoch that ends past M minutes of training (whichever comes first when both are given).
- test: :func:`elbokit.runs.bnn_evaluation.evaluate_bnn` with ``--samples`` (10) weight draws: the error of the
  predictive mean's most probable class and the mean log predictive density log (1/S) Σ_s p(y | x, w_s).

Reported: test error, test log-likelihood, seconds per epoch (median over epochs, from fit_bnn's records),
epochs run, torch threads. Prints one JSON object last with ``--json``.

    python benchmarks/bnn_mnist.py --minutes 60 --json
    python benchmarks/bnn_mnist.py --limit 2000 --epochs 1      # smoke test

References:
    Blundell, Cornebise, Kavukcuoglu & Wierstra, "Weight Uncertainty in Neural Networks", ICML 2015.
    Kingma, Salimans & Welling, "Variational Dropout and the Local Reparameterization Trick", NeurIPS 2015.
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
from torch import nn

from elbokit.config import RunConfig
from elbokit.data.tables import load_table
from elbokit.models.bnn import BNN, parse_prior
from elbokit.runs.bnn_evaluation import evaluate_bnn
from elbokit.train.bnn import fit_bnn

HIDDEN = (1200, 1200)
PRIOR = f"mixture:0.5,1,{math.exp(-6):.8g}"  # π, σ1 = e^0, σ2 = e^-6
PUBLISHED_ERROR = 0.0134  # Blundell et al. 2015, as given


class _BudgetSpent(Exception):
    """Raised from fit_bnn's per-epoch callback once the time budget is spent (fit_bnn has no budget of its own)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--epochs", type=int, default=None, help="epochs to run (default 10 without --minutes)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after the first epoch that ends past this many minutes of training")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training points (smoke tests)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--prior", default=PRIOR, help=f"the prior's text form (default {PRIOR})")
    parser.add_argument("--estimator", default="local", choices=("local", "weights", "flipout"))
    parser.add_argument("--samples", type=int, default=10, help="weight draws for the test figures (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.minutes is not None and args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")
    epochs = args.epochs if args.epochs is not None else (10_000 if args.minutes is not None else 10)

    table = load_table("mnist")
    config = RunConfig(data="mnist", model="bnn", task="classification", prior=args.prior, estimator=args.estimator,
                       hidden=HIDDEN, activation="relu", epochs=epochs, batch_size=args.batch, lr=args.lr,
                       seed=args.seed, limit=args.limit)  # fmt: skip
    torch.manual_seed(args.seed)
    model = BNN(table.in_features, HIDDEN, int(table.classes or 10), task="classification", activation=nn.ReLU,
                prior=parse_prior(args.prior), estimator=args.estimator)  # fmt: skip
    model.standardize(table.x_train[: args.limit])

    history: list[dict[str, Any]] = []
    started = time.perf_counter()

    def on_epoch(record: dict[str, Any]) -> None:
        history.append(record)
        print(f"epoch {record['epoch']:>4}  train bound/N {record['train_bound']:9.4f}  "
              f"validation error {record['validation_error']:.4f}  LL {record['validation_log_likelihood']:.4f}  "
              f"{record['seconds']:.1f} s", flush=True)  # fmt: skip
        if args.minutes is not None and time.perf_counter() - started > 60 * args.minutes:
            raise _BudgetSpent

    stopped = "completed"
    try:
        fit_bnn(model, table, config, on_epoch=on_epoch)
    except _BudgetSpent:
        stopped = "time budget"
    wall = time.perf_counter() - started
    model.eval()
    evaluation = evaluate_bnn(model, table.x_test, table.y_test, samples=args.samples, seed=args.seed)
    per_epoch = statistics.median(r["seconds"] for r in history) if history else float("nan")
    result = {
        "test_error": evaluation.error, "test_log_likelihood": evaluation.log_likelihood,
        "test_log_likelihood_stderr": evaluation.log_likelihood_stderr, "test_samples": args.samples,
        "epochs_run": len(history), "stopped": stopped, "seconds_per_epoch": per_epoch, "wall_seconds": wall,
        "threads": torch.get_num_threads(), "train_points": int(table.x_train[: args.limit].shape[0]),
        "hidden": list(HIDDEN), "prior": args.prior, "estimator": args.estimator, "batch": args.batch, "lr": args.lr,
        "minutes": args.minutes, "published_error": PUBLISHED_ERROR, "history": history,
        "torch": torch.__version__, "date": datetime.date.today().isoformat(),
    }  # fmt: skip
    print(f"test error {100 * evaluation.error:.2f} % (Blundell et al. 2015: {100 * PUBLISHED_ERROR:.2f} % after "
          f"hundreds of epochs), test LL {evaluation.log_likelihood:.4f} ± {evaluation.log_likelihood_stderr:.4f} "
          f"nats ({args.samples} draws)")  # fmt: skip
    print(f"{len(history)} epochs on {result['train_points']} points ({stopped}), {per_epoch:.1f} s per epoch, "
          f"{torch.get_num_threads()} torch threads, {wall:.0f} s in all")  # fmt: skip
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
