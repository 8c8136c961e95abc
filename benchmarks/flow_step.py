r"""One optimisation step of the 784-200-200-50 VAE with a flow guide (K = 4 IAF steps, ``--guide flow:4``): what
the flow costs over the Gaussian guide, and what elbokit adds over the same flow written by hand on zuko.

The model is Burda et al. (2016)'s 784-200-200-50 (tanh, Bernoulli likelihood) on binarized MNIST, at batch 20 and
128. A step is the single-sample ELBO's forward pass, backward pass and Adam update (lr 1e-3).

- **gaussian**: elbokit's trainer step (:class:`elbokit.train.step.TrainStep`, under
  :func:`~elbokit.train.step.unvalidated`, as ``elbokit.fit`` takes it) on ``VAE.mlp`` with the diagonal Gaussian
  guide (analytic KL).
- **flow**: the same step on ``VAE.mlp(..., guide="flow", transforms=4)``: :class:`elbokit.AmortizedFlow`, the
  encoder's Gaussian pushed through 4 IAF steps conditioned on its last hidden layer; the KL is sampled (joint
  form) with log q(z|x) computed alongside the draw.
- **bare_flow_fused**: the same modules (the same initial weights) in a bare PyTorch loop written directly on
  zuko: ``NormalizingFlow(ComposedTransform(*steps(h)).inv, DiagNormal(m, s)).rsample_and_log_prob()``, the
  decoder's logits, ``binary_cross_entropy_with_logits``, log p(z) by hand, ``torch.optim.Adam(fused=True)``
  (the optimiser elbokit's trainer uses). **bare_flow** is the same with torch's default Adam.

Timing as in ``train_step.py``: per configuration an untimed warm-up round, then ``--repeats`` rounds, each running
the methods in a fresh random order for ``--steps`` steps after one warm-up step. Reported: the median per-step time
of each method and the median over rounds of each round's ratios. CPU, ``--threads`` torch threads (stated in the
output). Prints one JSON object last with ``--json``.

    python benchmarks/flow_step.py --json

Targets: flow <= 1.1 x bare_flow_fused (elbokit's overhead on a flow guide); flow / gaussian is reported, the price
of the flow itself.

References:
    Kingma et al., "Improved variational inference with inverse autoregressive flow", NeurIPS 2016.
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import zuko
from _common import elbokit_step, timed_rounds
from torch import Tensor
from zuko.distributions import DiagNormal, NormalizingFlow
from zuko.transforms import ComposedTransform

from elbokit.data import load
from elbokit.models import VAE

Step = Callable[[Tensor], None]
HIDDEN, LATENT, TRANSFORMS = (200, 200), 50, 4
METHODS = ("gaussian", "flow", "bare_flow", "bare_flow_fused")


def _bare_flow(vae: VAE, *, fused: bool) -> Step:
    guide = vae.encoder  # AmortizedFlow: encoder (x -> h), head (h -> m, raw s), flow.steps (zuko's MADE steps)
    trunk, head, steps, decoder = guide.encoder, guide.head, list(guide.flow.steps), vae.decoder
    params = list(vae.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True) if fused else torch.optim.Adam(params, lr=1e-3)
    log_2pi = math.log(2 * math.pi)

    def loss_of(x: Tensor) -> Tensor:
        h = trunk(x)
        loc, raw = head(h).chunk(2, dim=-1)
        # zuko's IAF: the data-to-base transform is the inverse of the MAF steps, so sampling is one pass.
        transform = ComposedTransform(*(step(h) for step in steps)).inv
        q = NormalizingFlow(transform, DiagNormal(loc, F.softplus(raw) + 1e-5))
        z, log_q = q.rsample_and_log_prob()
        log_pz = -0.5 * (z.square() + log_2pi).sum(-1)
        log_px_given_z = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
        return -(log_px_given_z + log_pz - log_q).mean()

    def run(x: Tensor) -> None:
        loss = loss_of(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def bench_config(batch: int, data: Tensor, *, steps: int, repeats: int, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    gaussian = VAE.mlp(784, LATENT, hidden=HIDDEN, likelihood="bernoulli").float()
    torch.manual_seed(seed)
    flow = VAE.mlp(784, LATENT, hidden=HIDDEN, likelihood="bernoulli", guide="flow", transforms=TRANSFORMS).float()
    methods: dict[str, Step] = {
        "gaussian": elbokit_step(gaussian, batch),
        "flow": elbokit_step(copy.deepcopy(flow), batch),
        "bare_flow": _bare_flow(copy.deepcopy(flow), fused=False),
        "bare_flow_fused": _bare_flow(copy.deepcopy(flow), fused=True),
    }
    times = timed_rounds(methods, data, batch, steps=steps, repeats=repeats, seed=seed)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    result: dict[str, Any] = {"arch": "784-200-200-50", "transforms": TRANSFORMS, "batch": batch}
    result.update({f"{name}_ms": statistics.median(times[name]) for name in METHODS})
    result.update({
        "flow_over_gaussian": ratio("flow", "gaussian"),
        "flow_over_bare_flow_fused": ratio("flow", "bare_flow_fused"),
        "flow_over_bare_flow": ratio("flow", "bare_flow"),
        "flow_parameters": sum(p.numel() for p in flow.encoder.parameters()),
        "gaussian_parameters": sum(p.numel() for p in gaussian.encoder.parameters()),
    })  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per method and round (default 30)")
    parser.add_argument("--repeats", type=int, default=15, help="rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--batch", type=int, nargs="*", default=[20, 128])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load("binarized-mnist").train
    rows = [bench_config(b, data, steps=args.steps, repeats=args.repeats, seed=args.seed) for b in args.batch]
    print(f"784-200-200-50 VAE, flow guide K = {TRANSFORMS}; {args.threads} torch thread(s); ms per step, medians "
          f"of {args.repeats} rounds of {args.steps} steps")  # fmt: skip
    print(f"{'batch':>6}{'gaussian':>10}{'flow':>8}{'bare':>8}{'b-fused':>9}{'flow/gauss':>12}{'flow/b-fu':>11}"
          f"{'flow/bare':>11}")  # fmt: skip
    for r in rows:
        print(f"{r['batch']:>6}{r['gaussian_ms']:10.2f}{r['flow_ms']:8.2f}{r['bare_flow_ms']:8.2f}"
              f"{r['bare_flow_fused_ms']:9.2f}{r['flow_over_gaussian']:12.2f}{r['flow_over_bare_flow_fused']:11.2f}"
              f"{r['flow_over_bare_flow']:11.2f}")  # fmt: skip
    if args.json:
        print(json.dumps({
            "configs": rows, "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
            "torch": torch.__version__, "zuko": zuko.__version__, "date": datetime.date.today().isoformat(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
