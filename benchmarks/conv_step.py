r"""One optimisation step of the convolutional β-VAE (Burgess et al. 2018's network, ``VAE.conv``) on the 64×64
dsprites images: elbokit's trainer step against a bare hand-written PyTorch loop over the same modules, in one
process, and the time per epoch that follows.

- **elbokit**: :class:`elbokit.train.step.TrainStep`, the step ``elbokit.fit`` takes (argument checks off, as in
  ``fit``), β = 4.
- **bare**: the same encoder and decoder modules, the bound written out by hand: loc and softplus scale from the
  encoder, z = loc + scale ε, ``binary_cross_entropy_with_logits`` summed over pixels, the closed-form KL
  weighted by β, fused Adam (the optimiser elbokit's trainer uses).

Both train copies of the same initial weights on the same minibatches (drawn with replacement from the dsprites
training split), Adam at lr 1e-3. Timing as ``benchmarks/train_step.py``: an untimed warm-up round, then
``--repeats`` rounds, the methods in a fresh random order each round; reported are each method's median
ms per step and the median over rounds of the per-round ratio. ``epoch_seconds`` is elbokit's median step times
the steps of one epoch of the 60,000 training images. CPU, ``--threads`` torch threads; one JSON object last
with ``--json``.

    python benchmarks/conv_step.py --threads 2 --json

References:
    Burgess et al., "Understanding disentangling in β-VAE", arXiv:1804.03599, 2018.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import statistics
from typing import Any

import torch
import torch.nn.functional as F
from _common import elbokit_step, timed_rounds
from torch import Tensor

from elbokit.data import load
from elbokit.models import VAE

BETA = 4.0


def _bare(vae: VAE) -> Any:
    encoder, decoder = vae.encoder.encoder, vae.decoder  # the ConvEncoder and ConvDecoder modules
    d = vae.latent_dim
    params = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)

    def run(x: Tensor) -> None:
        out = encoder(x)
        loc, scale = out[:, :d], F.softplus(out[:, d:]) + 1e-5
        z = loc + scale * torch.randn_like(loc)
        log_px_given_z = -F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
        kl = 0.5 * (scale.square() + loc.square() - 1).sum(-1) - scale.log().sum(-1)
        loss = -(log_px_given_z - BETA * kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method and round (default 10)")
    parser.add_argument("--repeats", type=int, default=9, help="rounds (default 9)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--batch", type=int, nargs="*", default=[64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load("dsprites")
    rows = []
    for batch in args.batch:
        torch.manual_seed(args.seed)
        base = VAE.conv(data.image_shape, 10)  # type: ignore[arg-type]
        methods = {"elbokit": elbokit_step(copy.deepcopy(base), batch, beta=BETA), "bare": _bare(copy.deepcopy(base))}
        times = timed_rounds(methods, data.train, batch, steps=args.steps, repeats=args.repeats, seed=args.seed)
        ratio = statistics.median(a / b for a, b in zip(times["elbokit"], times["bare"], strict=True))
        ms = statistics.median(times["elbokit"])
        rows.append({"batch": batch, "elbokit_ms": ms, "bare_ms": statistics.median(times["bare"]),
                     "elbokit_over_bare": ratio,
                     "epoch_seconds": ms / 1e3 * math.ceil(data.train.shape[0] / batch)})  # fmt: skip
    print(f"{'batch':>6}{'elbokit ms':>12}{'bare ms':>10}{'ek/bare':>9}{'epoch s':>9}")
    for r in rows:
        print(f"{r['batch']:>6}{r['elbokit_ms']:12.1f}{r['bare_ms']:10.1f}{r['elbokit_over_bare']:9.3f}"
              f"{r['epoch_seconds']:9.0f}")  # fmt: skip
    if args.json:
        print(json.dumps({"configs": rows, "threads": args.threads, "steps": args.steps, "repeats": args.repeats,
                          "torch": torch.__version__, "date": datetime.date.today().isoformat()}))  # fmt: skip


if __name__ == "__main__":
    main()
