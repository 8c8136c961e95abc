r"""Burda et al. (2016)'s 784-200-200-50 tanh VAE on binarized MNIST, trained by ``elbokit.fit`` and by Pyro's
SVI for the same epochs from the same initial weights: test ELBO, test log p(x) (importance sampling, k = 5000)
and seconds per training epoch for both.

Both runs see the same data: the same seeded permutation and the same dynamic binarization (a fresh Bernoulli
draw of the training intensities) each epoch, batches of 100, Adam at lr = 1e-3 on the ELBO with an analytic
KL (elbokit's default; Pyro's ``TraceMeanField_ELBO``). The Pyro model and guide are built from the modules of
a second elbokit VAE made with the same seed, so the two start from identical weights and, after training,
that VAE holds Pyro's weights: both are evaluated by the same code (``ek.elbo`` and ``ek.log_marginal``, the
computation of ``elbokit.runs.evaluate``) on the same test points with the same Monte-Carlo seed.

The two trainings are interleaved by epoch (an elbokit epoch, then a Pyro epoch, ...) in one process with one
thread count, so load that drifts on the machine falls on both alike. By default (``--pyro-rng shared``) Pyro's
step t draws the same Monte-Carlo noise as elbokit's step t (common random numbers): the two runs then differ
only in how each library computes the same update, and any difference in the trained models is theirs.
``--pyro-rng own`` gives Pyro one continuous stream from the seed instead (the streams part after epoch 1, as
elbokit's validation pass draws too), which adds run-to-run training noise to the difference. Seconds per epoch
are training steps only (no validation, no data draw): medians over epochs, and minima (on a shared machine,
the least disturbed epoch). Prints one JSON object last with --json.

    python benchmarks/vae_vs_pyro.py --epochs 10 --json

The difference ours - Pyro in log p(x) is paired over the test points; its standard error is sd(diff) / sqrt(n),
which holds both the data's variability and the Monte-Carlo noise of each point's estimate (not the training
noise of runs with different draws). "At least as good" means ours - Pyro >= -(that standard error + 1e-4).

References:
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
    Bingham et al., "Pyro: deep universal probabilistic programming", JMLR 2019.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import elbokit as ek
from elbokit.config import RunConfig
from elbokit.data import load
from elbokit.models import VAE
from elbokit.runs import build_model
from elbokit.train.loop import fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PointEstimates, epoch_data, evaluate_points, same_weights

try:
    import pyro
    import pyro.distributions as dist
    from pyro import poutine
    from pyro.infer import SVI, TraceMeanField_ELBO
    from pyro.optim import PyroOptim
    from pyro.params import param_with_module_name
except ImportError:  # pragma: no cover
    raise SystemExit("this benchmark needs Pyro: pip install pyro-ppl (or the project's `bench` extra)") from None

PYRO_LOSS = "TraceMeanField_ELBO (analytic KL)"
#: Differences below this (nats) are float32 rounding: the check passes on them even when the paired standard
#: error is smaller still (identical trainings).
ROUNDING = 1e-4


@dataclass(frozen=True)
class Side:
    """One trainer's results: test means, and training seconds of each epoch."""

    points: PointEstimates
    epoch_seconds: list[float]
    train_elbo: float  # mean ELBO over the last epoch's training steps

    @property
    def log_px_stderr(self) -> float:
        """Monte-Carlo standard error of the mean log p(x): sqrt(sum of per-point stderr^2) / n."""
        se = self.points.log_px_stderr.double()
        return float(se.square().sum().sqrt()) / se.shape[0]

    def summary(self) -> dict[str, float]:
        return {
            "elbo": float(self.points.elbo.double().mean()),
            "log_px": float(self.points.log_px.double().mean()),
            "log_px_stderr": self.log_px_stderr,
            "seconds_per_epoch": statistics.median(self.epoch_seconds),
            "seconds_per_epoch_min": min(self.epoch_seconds),  # the least disturbed epoch on a shared machine
            "train_elbo_last_epoch": self.train_elbo,
        }


class PyroVae:
    r"""The VAE as a Pyro model and guide, on an elbokit VAE's own modules (and so its parameter tensors).

    .. math::
        z_n \sim \mathcal N(0, I_{50}), \quad x_n \mid z_n \sim \mathrm{Bernoulli}(\mathrm{logits} = \mathrm{dec}(z_n)),
        \quad q(z_n \mid x_n) = \mathcal N(m(x_n), \mathrm{softplus}(r(x_n)) + 10^{-5})

    with (m, r) the encoder's two halves, as in ``AmortizedGaussian``. ``scale`` multiplies every log-density:
    1 gives Pyro's usual loss, the sum over the batch; 1 / B the mean over the batch, elbokit's ``Bound.loss``.
    """

    def __init__(self, vae: VAE, *, scale: float) -> None:
        guide = vae.encoder
        if not isinstance(guide, ek.AmortizedGaussian) or guide.covariance != "diagonal":
            raise ValueError(f"expected a diagonal AmortizedGaussian encoder, got {type(guide).__name__}")
        self.encoder: nn.Module = guide.encoder
        self.decoder: nn.Module = vae.decoder
        self.latent_dim = vae.latent_dim
        self.min_scale = guide.min_scale
        self.scale = scale
        self.prior_loc = torch.zeros(vae.latent_dim)
        self.prior_scale = torch.ones(vae.latent_dim)

    def model(self, x: Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.scale):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))  # (B, d)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.scale):
            out = self.encoder(x)  # (B, 2d): means, then raw scales
            loc, raw = out[..., : self.latent_dim], out[..., self.latent_dim :]
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + self.min_scale).to_event(1))


def check_registered(pyro_vae: PyroVae) -> None:
    """Pyro's parameter store must hold the VAE's own parameter tensors, so that SVI trains them in place."""
    store = pyro.get_param_store()
    for prefix, module in (("encoder", pyro_vae.encoder), ("decoder", pyro_vae.decoder)):
        for name, param in module.named_parameters():
            key = param_with_module_name(prefix, name)
            if store.get_param(key) is not param:
                raise RuntimeError(f"Pyro's parameter {key} is not the module's tensor: training would "
                                   "not update the VAE that is evaluated")  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    seed, batch_size = args.seed, 100
    config = RunConfig(
        data="binarized-mnist", latent_dim=50, hidden=(200, 200), activation="tanh", likelihood="bernoulli",
        epochs=args.epochs, batch_size=batch_size, lr=1e-3, seed=seed, quiet=True, device="cpu", limit=args.limit,
    )  # fmt: skip
    data = load("binarized-mnist", seed=seed)
    if data.binarize != "dynamic":
        raise ValueError(f"expected dynamically binarized MNIST, got binarize={data.binarize!r}")
    data_mean = data.train.mean(0)
    train = data.train[: args.limit]

    # Two VAEs with identical initial weights; each trainer's RNG stream starts where building left it.
    torch.manual_seed(seed)
    ours = build_model(config, data.data_dim)
    ours.init_output_bias(data_mean)
    ours_rng = torch.get_rng_state()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    theirs = build_model(config, data.data_dim)
    theirs.init_output_bias(data_mean)
    pyro_rng = torch.get_rng_state()
    if not same_weights(ours, theirs):
        raise RuntimeError("the two VAEs do not start from the same weights")
    initial = {name: p.detach().clone() for name, p in theirs.named_parameters()}

    scale = 1.0 if args.pyro_loss_scale == "sum" else 1.0 / batch_size
    pyro_vae = PyroVae(theirs, scale=scale)
    # PyroOptim(torch.optim.Adam, ...) is what pyro.optim.Adam(...) returns (a name mypy cannot see)
    optimizer = PyroOptim(torch.optim.Adam, {"lr": config.lr})
    svi = SVI(pyro_vae.model, pyro_vae.guide, optimizer, loss=TraceMeanField_ELBO())
    steps = math.ceil(train.shape[0] / batch_size)
    pyro_seconds: list[float] = []
    pyro_train_elbo = math.nan

    ours_epoch_rng = ours_rng  # elbokit's RNG state at the start of its current epoch

    def pyro_epoch(epoch: int, rng: Tensor) -> None:
        nonlocal pyro_rng, pyro_train_elbo
        x_epoch, order = epoch_data(train, seed=seed, epoch=epoch)
        theirs.train()
        with torch.random.fork_rng(devices=[]):  # Pyro's draws; elbokit's RNG state is restored on exit
            torch.set_rng_state(rng)
            loss = 0.0
            started = time.perf_counter()
            for position in range(steps):
                loss += svi.step(x_epoch[order[position * batch_size : (position + 1) * batch_size]])
            pyro_seconds.append(time.perf_counter() - started)
            pyro_rng = torch.get_rng_state()
        pyro_train_elbo = -loss / scale / train.shape[0]
        if epoch == 0:
            check_registered(pyro_vae)
        if not args.json:
            print(f"epoch {epoch + 1:>3}  pyro     {pyro_seconds[-1]:6.2f} s  train ELBO {pyro_train_elbo:9.3f}")

    def after_ours(record: dict[str, Any]) -> None:
        nonlocal ours_epoch_rng
        if not args.json:
            print(f"epoch {record['epoch']:>3}  elbokit  {record['seconds']:6.2f} s  "
                  f"train ELBO {record['train_bound']:9.3f}")  # fmt: skip
        # "shared": Pyro's epoch starts from the state elbokit's epoch started from, so step t of both draws the
        # same eps (elbokit's validation pass between epochs draws too: without this the streams part after
        # epoch 1). "own": one continuous stream from the seed, as Pyro alone would draw.
        rng = ours_epoch_rng if args.pyro_rng == "shared" else pyro_rng
        ours_epoch_rng = torch.get_rng_state()  # where elbokit's next epoch starts
        pyro_epoch(record["epoch"] - 1, rng)

    torch.set_rng_state(ours_rng)
    result = fit(ours, ours.encoder, data, config, on_epoch=after_ours)
    if result.epochs != args.epochs or len(pyro_seconds) != args.epochs:
        raise RuntimeError(f"training stopped early ({result.stopped}) after {result.epochs} epochs")
    unchanged = [name for name, p in theirs.named_parameters() if torch.equal(p, initial[name])]
    if unchanged:
        raise RuntimeError(f"Pyro's training left these parameters unchanged: {unchanged}")

    ours.eval()
    theirs.eval()
    x_test = data.test[: args.test_points]
    started = time.perf_counter()
    ours_points = evaluate_points(ours, x_test, k=args.k, seed=args.eval_seed)
    theirs_points = evaluate_points(theirs, x_test, k=args.k, seed=args.eval_seed)
    eval_seconds = time.perf_counter() - started

    a = Side(ours_points, [r["seconds"] for r in result.history], result.history[-1]["train_bound"])
    b = Side(theirs_points, pyro_seconds, pyro_train_elbo)
    n = x_test.shape[0]
    diff = (ours_points.log_px - theirs_points.log_px).double()  # (n,), paired over points
    elbo_diff = (ours_points.elbo - theirs_points.elbo).double()
    paired_se = float(diff.std()) / math.sqrt(n)
    mc_se = math.sqrt(a.log_px_stderr**2 + b.log_px_stderr**2)
    summary_a, summary_b = a.summary(), b.summary()
    return {
        "epochs": args.epochs, "seed": seed, "k": args.k, "test_points": n, "batch_size": batch_size,
        "lr": config.lr, "eval_seed": args.eval_seed, "train_points": train.shape[0],
        "elbokit": summary_a, "pyro": summary_b,
        "log_px_difference": float(diff.mean()),
        # sd over points of the per-point difference / sqrt(n): data variability and MC noise together
        "log_px_difference_stderr": paired_se,
        # MC noise alone, the two estimates taken as independent
        "log_px_difference_mc_stderr": mc_se,
        "elbo_difference": float(elbo_diff.mean()), "elbo_difference_stderr": float(elbo_diff.std()) / math.sqrt(n),
        "at_least_as_good": float(diff.mean()) >= -(paired_se + ROUNDING),
        "check": f"log_px_difference >= -(log_px_difference_stderr + {ROUNDING}): paired sd over test points / "
        "sqrt(n), plus float32 rounding",
        "ratio_seconds_per_epoch": summary_a["seconds_per_epoch"] / summary_b["seconds_per_epoch"],
        "ratio_seconds_per_epoch_min": summary_a["seconds_per_epoch_min"] / summary_b["seconds_per_epoch_min"],
        # epochs are interleaved: the median of per-epoch ratios cancels load that drifts between epochs
        "median_ratio_per_epoch": statistics.median(
            x / y for x, y in zip(a.epoch_seconds, b.epoch_seconds, strict=True)
        ),
        "elbokit_epoch_seconds": a.epoch_seconds, "pyro_epoch_seconds": b.epoch_seconds,
        "pyro_loss": PYRO_LOSS, "pyro_optimizer": "pyro.optim.Adam (one torch.optim.Adam per parameter tensor)",
        "pyro_loss_scale": args.pyro_loss_scale,
        "pyro_rng": args.pyro_rng,
        "pyro_validation": pyro.infer.util.is_validation_enabled(),
        "order": "interleaved by epoch (elbokit, then Pyro), one process",
        "evaluation_seconds": eval_seconds,
        "pyro_version": pyro.__version__, "torch_version": torch.__version__, "threads": torch.get_num_threads(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seeds weights, data order, binarization, MC draws")
    parser.add_argument("--k", type=int, default=5000, help="importance samples per test point for log p(x)")
    parser.add_argument("--test-points", type=int, default=1000, help="the first N test images")
    parser.add_argument("--limit", type=int, default=None, help="the first N training points (quick checks)")
    parser.add_argument("--eval-seed", type=int, default=0, help="Monte-Carlo seed of the evaluation (both models)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as is)")
    parser.add_argument("--pyro-loss-scale", choices=("sum", "mean"), default="sum",
                        help="Pyro's loss over a batch: the sum (Pyro's usual plate) or the mean (elbokit's)")
    parser.add_argument("--pyro-rng", choices=("shared", "own"), default="shared",
                        help="Pyro's Monte-Carlo draws: step t draws what elbokit's step t drew (common random "
                        "numbers), or its own continuous stream from the seed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name in ("epochs", "k", "test_points"):
        if getattr(args, name) < (2 if name == "k" else 1):
            raise SystemExit(f"--{name.replace('_', '-')} must be >= {2 if name == 'k' else 1}, "
                             f"got {getattr(args, name)}")  # fmt: skip
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return
    a, b = out["elbokit"], out["pyro"]
    print(f"\n{out['epochs']} epochs, seed {out['seed']}, test log p(x) with k = {out['k']} on {out['test_points']} "
          f"points; Pyro: {out['pyro_loss']}, loss = {out['pyro_loss_scale']} over the batch, "
          f"{out['pyro_rng']} Monte-Carlo draws; {out['order']}")
    print(f"{'':<8} {'test ELBO':>10} {'log p(x)':>10} {'± MC se':>8} {'s/epoch':>8} {'min s/epoch':>12}")
    for name, side in (("elbokit", a), ("pyro", b)):
        print(f"{name:<8} {side['elbo']:>10.3f} {side['log_px']:>10.3f} {side['log_px_stderr']:>8.3f} "
              f"{side['seconds_per_epoch']:>8.2f} {side['seconds_per_epoch_min']:>12.2f}")
    print(f"ours - Pyro: log p(x) {out['log_px_difference']:+.3f} ± {out['log_px_difference_stderr']:.3f} (paired, "
          f"over points; MC alone ± {out['log_px_difference_mc_stderr']:.3f}), ELBO {out['elbo_difference']:+.3f} ± "
          f"{out['elbo_difference_stderr']:.3f}; at least as good: {out['at_least_as_good']}")
    print(f"seconds per epoch elbokit / Pyro: {out['ratio_seconds_per_epoch']:.3f} (of the fastest epochs "
          f"{out['ratio_seconds_per_epoch_min']:.3f}, median of per-epoch ratios {out['median_ratio_per_epoch']:.3f}; "
          f"{out['threads']} threads, torch {out['torch_version']}, pyro {out['pyro_version']})")


if __name__ == "__main__":
    main()
