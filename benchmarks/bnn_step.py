r"""One training step of the same Bayesian neural network, several ways in one process, with each way's gradient
variance beside its speed.

Configurations: the UCI regression network 13-50-1 (ReLU, Gaussian likelihood with a learned noise) at batch 32
on Boston housing (``load_table("boston").pooled()``, standardized once), and the MNIST classifier 784-400-400-10
(ReLU, Categorical likelihood) at batch 128 on ``load_table("mnist")``'s training split. A step is the
single-draw ELBO's forward pass, backward pass and Adam update (lr 1e-3; elbokit's trainer uses torch's fused
Adam, :func:`elbokit.train.step.make_optimizer`, the other ways torch's default Adam) of the per-point
loss -(N/B Σ_i log p(y_i | x_i, w) - KL(q ‖ p)) / N, with a N(0, 1) prior and its closed-form KL everywhere.
Every way trains its own copy of the same initial q (means as ``nn.Linear``, standard deviations
softplus(-3) ≈ 0.049, bayesian-torch's default) on the same minibatches.

- **elbokit-local / -flipout / -weights**: :meth:`elbokit.models.bnn.BNN.bound` with that estimator, then Adam:
  the step :func:`elbokit.train.bnn.fit_bnn` takes (the step's generator reseeded by
  :func:`elbokit.distributed.step_seed`, torch.distributions' argument checks off, as there: the data are
  checked once when training starts).
- **bare**: Bayes by Backprop with local reparameterization written by hand: (μ, ρ) parameters, σ = softplus(ρ),
  the pre-activations' mean h μᵀ + μ_b and variance h² σᵀ² + σ_b² by two matmuls, one normal draw per
  pre-activation, the Gaussian or softmax log-likelihood, the closed-form Gaussian KL, ``torch.optim.Adam``.
- **bt-reparam / bt-flipout**: bayesian-torch's ``LinearReparameterization`` (one weight matrix drawn per
  forward, shared by the minibatch: elbokit's ``"weights"``) and ``LinearFlipout`` (elbokit's ``"flipout"``),
  called with ``return_kl=False``: their own KL is a *mean* over a layer's entries (a different objective), so
  the KL summed over entries is computed by hand on their parameters, the same closed form as bare's. Skipped,
  with a note, when ``bayesian_torch`` is not importable (``pip install --no-deps bayesian-torch==0.5.0``: its
  metadata would pull torchvision and tensorboard, and with them another torch).

Timing (as ``train_step.py``): for each configuration an untimed warm-up round, then ``--repeats`` rounds; in
each round the ways run in a fresh random order, each ``--steps`` steps after one warm-up step, on the same fresh
minibatches. Reported: the median per-step time of each way and the medians over rounds of the per-round ratios
elbokit / bare (local), elbokit-weights / bt-reparam and elbokit-flipout / bt-flipout.

Gradient variance, at the initial q and equal settings: ``--grad-repeats`` (200) independent draws of the
gradient of the per-point bound w.r.t. the first layer's weight means on one fixed minibatch; reported: the median
over coordinates of the per-coordinate variance (divisor R - 1) of each way (elbokit's through
:meth:`BNN.gradient_variance`), so a speed ratio is read beside what the step's noise costs.

CPU, ``--threads`` torch threads. Prints one JSON object last with ``--json``.

    python benchmarks/bnn_step.py --json
    python benchmarks/bnn_step.py --steps 3 --repeats 2 --grad-repeats 10     # smoke test

References:
    Blundell, Cornebise, Kavukcuoglu & Wierstra, "Weight Uncertainty in Neural Networks", ICML 2015.
    Kingma, Salimans & Welling, "Variational Dropout and the Local Reparameterization Trick", NeurIPS 2015.
    Wen, Vicol, Ba, Tran & Grosse, "Flipout", ICLR 2018.
    Krishnan, Esposito & Subedar, "Bayesian-Torch: Bayesian neural network layers for uncertainty estimation",
    2022 (github.com/IntelLabs/bayesian-torch).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import random
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from elbokit.data.tables import load_table
from elbokit.distributed import step_seed
from elbokit.distributions._validate import unvalidated
from elbokit.models.bnn import BNN, BayesianLinear, GaussianPrior
from elbokit.train.step import make_optimizer

try:
    from bayesian_torch.layers import LinearFlipout, LinearReparameterization
except ImportError as error:  # pragma: no cover
    LinearFlipout = LinearReparameterization = None
    BAYESIAN_TORCH_MISSING: str | None = f"bayesian-torch not importable ({error}); its ways are skipped"
else:
    BAYESIAN_TORCH_MISSING = None

CONFIGS = {  # name -> (hidden, task, batch)
    "13-50-1": ((50,), "regression", 32),
    "784-400-400-10": ((400, 400), "classification", 128),
}
INIT_RHO = -3.0  # q's initial ρ: σ = softplus(-3) ≈ 0.049, bayesian-torch's default
PRIOR_SCALE = 1.0
LR = 1e-3
Step = Callable[[Tensor, Tensor], None]
Gradient = Callable[[Tensor, Tensor], Tensor]  # one draw of the first layer's weight-mean gradient, flattened


def _data(task: str) -> tuple[Tensor, Tensor]:
    """Training inputs and targets, standardized once (regression) so every way sees the same numbers."""
    if task == "regression":
        x, y = load_table("boston").pooled()
        x = (x - x.mean(0)) / x.std(0)
        return x, (y - y.mean()) / y.std()
    table = load_table("mnist")
    return table.x_train, table.y_train


def _gaussian_kl(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, s²)) summed over entries, s = PRIOR_SCALE."""
    return (math.log(PRIOR_SCALE) - sigma.log() + (sigma.square() + mu.square()) / (2 * PRIOR_SCALE**2) - 0.5).sum()


def _log_lik(outputs: Tensor, y: Tensor, log_noise: Tensor | None) -> Tensor:
    """log p(y_i | x_i, w) per point, (B,): Gaussian with σ = exp(log_noise), or softmax."""
    if log_noise is None:
        return -F.cross_entropy(outputs, y, reduction="none")
    f = outputs.squeeze(-1)
    return -0.5 * ((y - f) / log_noise.exp()).square() - log_noise - 0.5 * math.log(2 * math.pi)


class _Bare(nn.Module):
    """Bayes by Backprop with local reparameterization, by hand: (μ, ρ) per layer."""

    def __init__(self, model: BNN) -> None:
        super().__init__()
        layers = [cast(BayesianLinear, layer) for layer in model.layers]
        self.mus = nn.ParameterList(nn.Parameter(layer.weight_mu.detach().clone()) for layer in layers)
        self.rhos = nn.ParameterList(nn.Parameter(layer.weight_rho.detach().clone()) for layer in layers)
        self.bias_mus = nn.ParameterList(nn.Parameter(layer.bias_mu.detach().clone()) for layer in layers)
        self.bias_rhos = nn.ParameterList(nn.Parameter(layer.bias_rho.detach().clone()) for layer in layers)
        self.log_noise = nn.Parameter(model.log_noise.detach().clone()) if model.task == "regression" else None

    def loss(self, x: Tensor, y: Tensor, num_data: int) -> Tensor:
        h, kl = x, x.new_zeros(())
        for i, (mu, rho, b_mu, b_rho) in enumerate(zip(self.mus, self.rhos, self.bias_mus, self.bias_rhos,
                                                       strict=True)):  # fmt: skip
            if i > 0:
                h = F.relu(h)
            sigma, b_sigma = F.softplus(rho), F.softplus(b_rho)
            mean = F.linear(h, mu, b_mu)  # (B, out)
            variance = F.linear(h.square(), sigma.square(), b_sigma.square())  # (B, out)
            h = mean + variance.sqrt() * torch.randn_like(mean)
            kl = kl + _gaussian_kl(mu, sigma) + _gaussian_kl(b_mu, b_sigma)
        log_lik = _log_lik(h, y, self.log_noise)  # (B,)
        return -(num_data / x.shape[0] * log_lik.sum() - kl) / num_data


class _BayesianTorch(nn.Module):
    """The same network from bayesian-torch's layers, q copied from ``model``; the summed KL by hand."""

    def __init__(self, model: BNN, *, flipout: bool) -> None:
        super().__init__()
        assert LinearFlipout is not None and LinearReparameterization is not None
        kind = LinearFlipout if flipout else LinearReparameterization
        self.layers = nn.ModuleList()
        for source in model.layers:
            source = cast(BayesianLinear, source)
            layer = kind(source.in_features, source.out_features, prior_mean=0.0, prior_variance=PRIOR_SCALE,
                         posterior_rho_init=INIT_RHO)  # fmt: skip
            with torch.no_grad():
                layer.mu_weight.copy_(source.weight_mu)
                layer.rho_weight.copy_(source.weight_rho)
                layer.mu_bias.copy_(source.bias_mu)
                layer.rho_bias.copy_(source.bias_rho)
            self.layers.append(layer)
        self.log_noise = nn.Parameter(model.log_noise.detach().clone()) if model.task == "regression" else None

    def first_weight_mu(self) -> Tensor:
        return cast(Tensor, self.layers[0].mu_weight)

    def loss(self, x: Tensor, y: Tensor, num_data: int) -> Tensor:
        h, kl = x, x.new_zeros(())
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = F.relu(h)
            h = layer(h, return_kl=False)
            kl = kl + _gaussian_kl(layer.mu_weight, F.softplus(layer.rho_weight))
            kl = kl + _gaussian_kl(layer.mu_bias, F.softplus(layer.rho_bias))
        log_lik = _log_lik(h, y, self.log_noise)
        return -(num_data / x.shape[0] * log_lik.sum() - kl) / num_data


def _module_step(module: _Bare | _BayesianTorch, num_data: int) -> Step:
    optimizer = torch.optim.Adam(module.parameters(), lr=LR)

    def run(x: Tensor, y: Tensor) -> None:
        loss = module.loss(x, y, num_data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def _elbokit_step(model: BNN, num_data: int, estimator: str) -> Step:
    """fit_bnn's step: the step's generator reseeded, the bound (unvalidated), -bound / N, fused Adam."""
    optimizer = make_optimizer(list(model.parameters()), LR)
    generator = torch.Generator()
    step = [0]

    def run(x: Tensor, y: Tensor) -> None:
        generator.manual_seed(step_seed(0, step[0]))
        with unvalidated():  # as in fit_bnn, which checks its data once
            bound = model.bound(x, y, num_data=num_data, estimator=estimator, generator=generator)
        loss = -(bound.reconstruction_total - bound.kl) / num_data
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step[0] += 1

    return run


def _module_gradient(module: _Bare | _BayesianTorch, weight_mu: Tensor, num_data: int) -> Gradient:
    def draw(x: Tensor, y: Tensor) -> Tensor:
        (grad,) = torch.autograd.grad(-module.loss(x, y, num_data), [weight_mu])  # the per-point bound's gradient
        return grad.flatten()

    return draw


def median_variance(draw: Gradient, x: Tensor, y: Tensor, *, repeats: int, seed: int) -> float:
    """Median over coordinates of the per-coordinate variance (divisor R - 1) of ``repeats`` gradient draws."""
    torch.manual_seed(seed)  # bare and bayesian-torch draw from torch's global generator
    draws = torch.stack([draw(x, y) for _ in range(repeats)])  # (R, P)
    return float(draws.var(0, correction=1).median())


def timed_rounds(methods: dict[str, Step], x_all: Tensor, y_all: Tensor, batch: int, *, steps: int, repeats: int,
                 seed: int) -> dict[str, list[float]]:  # fmt: skip
    """Milliseconds per step of each way in each of ``repeats`` rounds, after an untimed warm-up round; each round
    runs the ways in a fresh random order, ``steps`` timed steps after one warm-up step each, on the same fresh
    minibatches (drawn with replacement)."""
    gen = torch.Generator().manual_seed(seed)
    times: dict[str, list[float]] = {name: [] for name in methods}
    order = list(methods)
    shuffle = random.Random(seed)
    for round_ in range(repeats + 1):  # round 0 is an untimed warm-up of every way
        shuffle.shuffle(order)
        index = torch.randint(0, x_all.shape[0], (steps + 1, batch), generator=gen)
        batches = [(x_all[i], y_all[i]) for i in index]
        for name in order:
            run = methods[name]
            run(*batches[0])
            started = time.perf_counter()
            for x, y in batches[1:]:
                run(x, y)
            if round_ > 0:
                times[name].append((time.perf_counter() - started) / steps * 1e3)
    return times


def bench_config(name: str, *, steps: int, repeats: int, grad_repeats: int, seed: int) -> dict[str, Any]:
    hidden, task, batch = CONFIGS[name]
    x_all, y_all = _data(task)
    num_data = x_all.shape[0]
    out = 1 if task == "regression" else 10
    torch.manual_seed(seed)
    init_scale = F.softplus(torch.tensor(INIT_RHO)).item()
    base = BNN(x_all.shape[1], hidden, out, task=task, activation=nn.ReLU, prior=GaussianPrior(PRIOR_SCALE),
               init_scale=init_scale)  # fmt: skip

    methods: dict[str, Step] = {
        f"elbokit_{e}": _elbokit_step(copy.deepcopy(base), num_data, e) for e in ("local", "flipout", "weights")
    }
    methods["bare"] = _module_step(_Bare(base), num_data)
    if BAYESIAN_TORCH_MISSING is None:
        methods["bt_reparam"] = _module_step(_BayesianTorch(base, flipout=False), num_data)
        methods["bt_flipout"] = _module_step(_BayesianTorch(base, flipout=True), num_data)
    times = timed_rounds(methods, x_all, y_all, batch, steps=steps, repeats=repeats, seed=seed)

    # gradient variance at the initial q, on one fixed minibatch
    index = torch.randperm(num_data, generator=torch.Generator().manual_seed(seed + 1))[:batch]
    xb, yb = x_all[index], y_all[index]
    first = cast(BayesianLinear, base.layers[0])
    stats = base.gradient_variance(xb, yb, num_data=num_data, estimators=("local", "flipout", "weights"),
                                   repeats=grad_repeats, params=[first.weight_mu],
                                   generator=torch.Generator().manual_seed(seed + 2))  # fmt: skip
    variance = {f"elbokit_{e}": float(s.variance.median()) for e, s in stats.items()}
    bare = _Bare(base)
    variance["bare"] = median_variance(_module_gradient(bare, bare.mus[0], num_data), xb, yb, repeats=grad_repeats,
                                       seed=seed + 3)  # fmt: skip
    if BAYESIAN_TORCH_MISSING is None:
        for way, flipout in (("bt_reparam", False), ("bt_flipout", True)):
            module = _BayesianTorch(base, flipout=flipout)
            variance[way] = median_variance(_module_gradient(module, module.first_weight_mu(), num_data), xb, yb,
                                            repeats=grad_repeats, seed=seed + 4)  # fmt: skip

    def ratio(a: str, b: str) -> float | None:
        if a not in times or b not in times:
            return None
        return statistics.median(p / q for p, q in zip(times[a], times[b], strict=True))

    result: dict[str, Any] = {"config": name, "task": task, "batch": batch, "num_data": num_data}
    for way in ("elbokit_local", "elbokit_flipout", "elbokit_weights", "bare", "bt_reparam", "bt_flipout"):
        result[f"{way}_ms"] = statistics.median(times[way]) if way in times else None
        result[f"{way}_grad_variance"] = variance.get(way)
    result.update({
        "elbokit_local_over_bare": ratio("elbokit_local", "bare"),
        "elbokit_weights_over_bt_reparam": ratio("elbokit_weights", "bt_reparam"),
        "elbokit_flipout_over_bt_flipout": ratio("elbokit_flipout", "bt_flipout"),
        "elbokit_local_over_bt_reparam": ratio("elbokit_local", "bt_reparam"),
    })  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per way and round (default 30)")
    parser.add_argument("--repeats", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--grad-repeats", type=int, default=200, help="gradient draws per way (default 200)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if BAYESIAN_TORCH_MISSING is not None:
        print(f"note: {BAYESIAN_TORCH_MISSING}")
    names = list(CONFIGS) if args.config == "all" else [args.config]
    rows = [bench_config(n, steps=args.steps, repeats=args.repeats, grad_repeats=args.grad_repeats, seed=args.seed)
            for n in names]  # fmt: skip

    def cell(v: float | None, width: int, spec: str = ".2f") -> str:
        return f"{v:{width}{spec}}" if v is not None else f"{'-':>{width}}"

    ways = ("elbokit_local", "elbokit_flipout", "elbokit_weights", "bare", "bt_reparam", "bt_flipout")
    print(f"{'config':<16}{'batch':>6}  " + "".join(f"{w:>17}" for w in ways))
    for r in rows:
        print(f"{r['config']:<16}{r['batch']:>6}  ms  " + "".join(cell(r[f"{w}_ms"], 17) for w in ways)[2:])
        print(f"{'':<16}{'':>6}  var " + "".join(cell(r[f"{w}_grad_variance"], 17, ".3e") for w in ways)[2:])
    print()
    print(f"{'config':<16}{'ek-local/bare':>15}{'ek-weights/bt-reparam':>23}{'ek-flipout/bt-flipout':>23}"
          f"{'ek-local/bt-reparam':>21}")  # fmt: skip
    for r in rows:
        print(f"{r['config']:<16}" + cell(r["elbokit_local_over_bare"], 15)
              + cell(r["elbokit_weights_over_bt_reparam"], 23) + cell(r["elbokit_flipout_over_bt_flipout"], 23)
              + cell(r["elbokit_local_over_bt_reparam"], 21))  # fmt: skip
    print("(ms: median per step; var: median per-coordinate variance of the first layer's weight-mean gradient at "
          "the initial q)")  # fmt: skip
    if args.json:
        try:
            bt_version: str | None = metadata.version("bayesian-torch")
        except metadata.PackageNotFoundError:
            bt_version = None
        print(json.dumps({
            "configs": rows, "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
            "grad_repeats": args.grad_repeats, "torch": torch.__version__, "bayesian_torch": bt_version,
            "note": BAYESIAN_TORCH_MISSING, "date": datetime.date.today().isoformat(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
