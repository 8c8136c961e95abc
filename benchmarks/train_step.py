r"""One optimisation step of the same VAE, five ways in one process: elbokit's trainer step, a bare hand-written
PyTorch loop (with torch's default Adam, and with its fused Adam), Pyro's SVI with
``Trace_ELBO`` and with ``TraceMeanField_ELBO``, and the FLOP floor.

Configurations: the 784-400-20 VAE of Kingma & Welling (2014) (tanh, one hidden layer each way) and the
784-200-200-50 of Burda et al. (2016) (tanh), both with a Bernoulli likelihood on binarized MNIST, at batch 20
and 128. Every method trains its own copy of the same initial weights on the same batches; a step is the
single-sample ELBO's forward pass, backward pass and Adam update (lr 1e-3), with the analytic Gaussian KL
everywhere except Pyro's ``Trace_ELBO``, which samples it.

- **elbokit**: :class:`elbokit.train.step.TrainStep`, the step ``elbokit.fit`` takes (under
  :func:`~elbokit.train.step.unvalidated`, as in ``fit``), on ``VAE.mlp``.
- **bare**: the bound written out by hand: encoder -> (loc, softplus scale), z = loc + scale ε, the decoder's
  logits, ``binary_cross_entropy_with_logits`` summed over pixels, the closed-form KL, ``torch.optim.Adam``
  with its defaults (what a hand-written loop uses). **bare-fused** is the same with ``fused=True``, the
  optimiser elbokit's trainer uses (:func:`elbokit.train.step.make_optimizer`).
- **pyro-trace / pyro-meanfield**: ``pyro.infer.SVI`` over a model and guide built from the same modules,
  ``pyro.optim.Adam``.
- **floor**: the step's FLOPs (forward 2·B·Σ in·out over the Linear layers; backward twice that, less the
  input gradient of the first layer) divided by the rate of a large float32 GEMM measured in the same run.
- **bare-compiled** (``--compile``): the bare fused-Adam loop with its loss (forward and, through AOTAutograd,
  backward) compiled by ``torch.compile(fullgraph=True)``; compilation happens in the warm-up round. elbokit's
  own step goes through torch.distributions objects, which ``torch._dynamo`` traces only with graph breaks.
- **matmuls**: those matrix products alone, at the step's shapes, on preallocated operands, timed in the same
  rounds: small products run below the large GEMM's rate, so ``matmuls_floor_fraction`` is the most of the
  floor any implementation of the step reaches on the machine.

Timing: for each configuration, an untimed warm-up round, then ``--repeats`` rounds; in each round the methods
run in a fresh random order, each for ``--steps`` steps after one warm-up step, and the per-step time of each is
recorded. Reported: the median per-step time of each method and the median over rounds of each round's ratios
(so drifting machine load falls on both sides of a ratio alike). CPU, ``--threads`` torch threads. Prints one
JSON object last with ``--json``.

    python benchmarks/train_step.py --json

Targets: elbokit <= 1.0 x the bare loop at both batch sizes (so <= 0.5 x Pyro
``TraceMeanField_ELBO`` at batch 20 and <= 0.7 x at batch 128), and at batch 128 at least 50 % of the FLOP
floor's rate.

References:
    Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014.
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
    Bingham et al., "Pyro: deep universal probabilistic programming", JMLR 2019.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _common import elbokit_step, timed_rounds
from torch import Tensor, nn

from elbokit.data import load
from elbokit.models import VAE

try:
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
    from pyro.optim import Adam as PyroAdam
except ImportError:  # pragma: no cover
    pyro = None

ARCHITECTURES = {"784-400-20": ((400,), 20), "784-200-200-50": ((200, 200), 50)}
Step = Callable[[Tensor], None]


def _bare(vae: VAE, *, fused: bool, compiled: bool = False) -> Step:
    encoder, decoder = vae.encoder.encoder, vae.decoder  # the plain nn.Sequential networks
    d = vae.latent_dim
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True) if fused else torch.optim.Adam(params, lr=1e-3)

    def loss_of(x: Tensor, eps: Tensor) -> Tensor:
        out = encoder(x)
        loc, scale = out[:, :d], F.softplus(out[:, d:]) + 1e-5
        z = loc + scale * eps
        log_px_given_z = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
        kl = 0.5 * (scale.square() + loc.square() - 1).sum(-1) - scale.log().sum(-1)
        return -(log_px_given_z - kl).mean()

    loss_fn = torch.compile(loss_of, fullgraph=True) if compiled else loss_of

    def run(x: Tensor) -> None:
        loss = loss_fn(x, torch.randn(x.shape[0], d))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def _pyro(vae: VAE, *, meanfield: bool) -> Step:
    assert pyro is not None
    encoder, decoder = vae.encoder.encoder, vae.decoder
    d = vae.latent_dim

    def model(x: Tensor) -> None:
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(d), x.new_ones(d)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1), obs=x)

    def guide(x: Tensor) -> None:
        pyro.module("encoder", encoder)
        out = encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(out[:, :d], F.softplus(out[:, d:]) + 1e-5).to_event(1))

    loss = TraceMeanField_ELBO() if meanfield else Trace_ELBO()
    svi = SVI(model, guide, PyroAdam({"lr": 1e-3}), loss=loss)

    def run(x: Tensor) -> None:
        svi.step(x)

    return run


def _matmuls(vae: VAE, batch: int) -> Step:
    """The step's matrix products alone, on preallocated operands of the step's shapes: forward h W^T + b per
    Linear layer, and backward the weight gradient g^T h and the input gradient g W (not for the first layer).
    What any implementation of the step must spend: its time bounds the floor fraction a step can reach."""
    gen = torch.Generator().manual_seed(0)
    ops = []
    for i, (fan_in, fan_out) in enumerate(_linear_sizes(vae)):
        h, w = torch.randn(batch, fan_in, generator=gen), torch.randn(fan_out, fan_in, generator=gen)
        b, g = torch.randn(fan_out, generator=gen), torch.randn(batch, fan_out, generator=gen)
        ops.append((h, w, b, g, i > 0))

    def run(_x: Tensor) -> None:
        for h, w, b, g, input_grad in ops:
            torch.addmm(b, h, w.t())
            torch.mm(g.t(), h)
            if input_grad:
                torch.mm(g, w)

    return run


def _forward_flops(sizes: list[tuple[int, int]], batch: int) -> float:
    return 2.0 * batch * sum(i * o for i, o in sizes)


def _linear_sizes(vae: VAE) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in vae.modules() if isinstance(m, nn.Linear)]


def step_flops(vae: VAE, batch: int) -> float:
    """FLOPs of one step: forward, plus backward (weight and input gradients) less the first layer's input
    gradient (x needs none). Elementwise work and the optimiser are left out: the floor is the matmuls'."""
    sizes = _linear_sizes(vae)
    forward = _forward_flops(sizes, batch)
    first_encoder = sizes[0]
    return 3 * forward - 2.0 * batch * first_encoder[0] * first_encoder[1]


def gemm_gflops(n: int = 2048, repeats: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e9


def bench_config(
    arch: str, batch: int, data: Tensor, *, steps: int, repeats: int, seed: int, compiled: bool = False
) -> dict[str, Any]:
    hidden, latent = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    base = VAE.mlp(784, latent, hidden=hidden, likelihood="bernoulli").float()
    methods: dict[str, Step] = {
        "elbokit": elbokit_step(copy.deepcopy(base), batch),
        "bare": _bare(copy.deepcopy(base), fused=False),
        "bare_fused": _bare(copy.deepcopy(base), fused=True),
        "matmuls": _matmuls(base, batch),
    }
    if compiled:
        methods["bare_compiled"] = _bare(copy.deepcopy(base), fused=True, compiled=True)
    if pyro is not None:
        pyro.clear_param_store()
        methods["pyro_trace"] = _pyro(copy.deepcopy(base), meanfield=False)
        methods["pyro_meanfield"] = _pyro(copy.deepcopy(base), meanfield=True)
    times = timed_rounds(methods, data, batch, steps=steps, repeats=repeats, seed=seed)
    if os.environ.get("TRAIN_STEP_ROUNDS"):
        print(arch, batch, {n: [round(t, 2) for t in v] for n, v in times.items()}, file=sys.stderr)
    rate = gemm_gflops()
    flop = step_flops(base, batch)
    floor_ms = flop / (rate * 1e9) * 1e3

    def ratio(a: str, b: str) -> float | None:
        if a not in times or b not in times:
            return None
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    result: dict[str, Any] = {"arch": arch, "batch": batch}
    for name in ("elbokit", "bare", "bare_fused", "bare_compiled", "matmuls", "pyro_trace", "pyro_meanfield"):
        result[f"{name}_ms"] = statistics.median(times[name]) if name in times else None
    result.update({
        "gemm_gflops": rate, "model_gflop_per_step": flop / 1e9, "floor_ms": floor_ms,
        "elbokit_over_bare": ratio("elbokit", "bare"), "elbokit_over_bare_fused": ratio("elbokit", "bare_fused"),
        "elbokit_over_pyro_trace": ratio("elbokit", "pyro_trace"),
        "elbokit_over_pyro_meanfield": ratio("elbokit", "pyro_meanfield"),
        "pyro_meanfield_over_bare": ratio("pyro_meanfield", "bare"),
        "bare_floor_fraction": floor_ms / result["bare_ms"],
        "elbokit_floor_fraction": floor_ms / result["elbokit_ms"],
        # the step's matmuls alone against the floor: what the best step could reach at these shapes
        "matmuls_floor_fraction": floor_ms / result["matmuls_ms"],
        "elbokit_over_matmuls": ratio("elbokit", "matmuls"),
        "bare_compiled_over_bare_fused": ratio("bare_compiled", "bare_fused"),
    })  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method and round (default 30)")
    parser.add_argument("--repeats", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--arch", choices=(*ARCHITECTURES, "all"), default="all")
    parser.add_argument("--batch", type=int, nargs="*", default=[20, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="add bare-compiled: the bare fused-Adam loop's loss through torch.compile (inductor)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load("binarized-mnist").train
    archs = list(ARCHITECTURES) if args.arch == "all" else [args.arch]
    rows = [bench_config(a, b, data, steps=args.steps, repeats=args.repeats, seed=args.seed, compiled=args.compile)
            for a in archs for b in args.batch]  # fmt: skip
    print(f"{'arch':<16}{'batch':>6}{'elbokit':>9}{'bare':>8}{'b-fu':>8}{'trace':>8}{'meanf':>8}{'floor':>8}"
          f"{'ek/bare':>9}{'ek/b-fu':>9}{'ek/mf':>7}{'mf/bare':>8}{'ek%fl':>7}{'mm%fl':>7}")  # fmt: skip

    def cell(v: float | None, width: int, digits: int = 2) -> str:
        return f"{v:{width}.{digits}f}" if v is not None else f"{'-':>{width}}"

    for r in rows:
        print(f"{r['arch']:<16}{r['batch']:>6}" + cell(r["elbokit_ms"], 9) + cell(r["bare_ms"], 8)
              + cell(r["bare_fused_ms"], 8) + cell(r["pyro_trace_ms"], 8) + cell(r["pyro_meanfield_ms"], 8)
              + cell(r["floor_ms"], 8, 3) + cell(r["elbokit_over_bare"], 9) + cell(r["elbokit_over_bare_fused"], 9)
              + cell(r["elbokit_over_pyro_meanfield"], 7) + cell(r["pyro_meanfield_over_bare"], 8)
              + cell(100 * r["elbokit_floor_fraction"], 7, 0)
              + cell(100 * r["matmuls_floor_fraction"], 7, 0))  # fmt: skip
    for r in rows:
        if r["bare_compiled_ms"] is not None:
            print(f"{r['arch']:<16}{r['batch']:>6}  bare-compiled {r['bare_compiled_ms']:.2f} ms, "
                  f"{r['bare_compiled_over_bare_fused']:.2f} x bare-fused")  # fmt: skip
    if args.json:
        print(json.dumps({
            "configs": rows, "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
            "torch": torch.__version__, "pyro": getattr(pyro, "__version__", None),
            "date": datetime.date.today().isoformat(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
