"""Overhead of the estimator engine: one forward + backward of ek.elbo / ek.iwae against a bare PyTorch
computation of the same bound on the same MLP VAE, interleaved repetitions, medians and their ratio.

The bare version is what a user would write by hand: encoder -> (mu, sigma), z = mu + sigma * eps,
Bernoulli log-likelihood from logits, analytic Gaussian KL (ELBO) or logsumexp of log weights (IWAE).
A ratio of 1.0 means the engine costs nothing over hand-written code. A second bare version computes the
Bernoulli log-likelihood through torch.distributions, separating the engine's own cost from that of
torch's Bernoulli (which negates the full (K, B, D) array where hand-written code negates after the sum).
Prints one JSON object last with --json.

    python benchmarks/engine_overhead.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

import elbokit as ek


class MlpVae:
    """p(z) = N(0, I), p(x|z) = Bernoulli(decoder(z)): the model protocol, by hand."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: int) -> None:
        self.latent_dim = latent_dim
        self.event_shape = torch.Size((data_dim,))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))

    def prior(self) -> Independent:
        return Independent(Normal(torch.zeros(self.latent_dim), torch.ones(self.latent_dim)), 1)

    def likelihood(self, z: torch.Tensor) -> Independent:
        return Independent(Bernoulli(logits=self.decoder(z), validate_args=False), 1)


def bare_bound(
    encoder: nn.Module, decoder: nn.Module, x: torch.Tensor, k: int, iwae: bool, distributions: bool = False
) -> torch.Tensor:
    out = encoder(x)
    d = out.shape[-1] // 2
    mu, sigma = out[:, :d], F.softplus(out[:, d:]) + 1e-5
    eps = torch.randn(k, *mu.shape)
    z = mu + sigma * eps  # (K, B, d)
    logits = decoder(z)
    if distributions:  # the same Bernoulli log-likelihood through torch.distributions
        log_px_given_z = Independent(Bernoulli(logits=logits, validate_args=False), 1).log_prob(x)
    else:  # negate after the sum: one (K, B) negation instead of a (K, B, D) one
        log_px_given_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    if not iwae:
        kl = 0.5 * (mu.square() + sigma.square() - 1.0 - 2.0 * sigma.log()).sum(-1)
        return (log_px_given_z.mean(0) - kl).mean()
    log_pz = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * eps.square() - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_w = log_px_given_z + log_pz - log_qz
    return (torch.logsumexp(log_w, 0) - math.log(k)).mean()


def time_once(step: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> float:
    for p in params:
        p.grad = None
    start = time.perf_counter()
    step().backward()
    return time.perf_counter() - start


def measure(objective: str, k: int, batch: int, repeats: int) -> dict[str, float | int | str]:
    """Interleaved timings of one forward + backward: elbokit, bare, bare with torch's Bernoulli."""
    data_dim, latent_dim, hidden = 784, 20, 400
    model = MlpVae(data_dim, latent_dim, hidden)
    guide = ek.AmortizedGaussian.mlp(data_dim, latent_dim, hidden=(hidden,))
    params = [*model.decoder.parameters(), *guide.parameters()]
    x = torch.bernoulli(torch.full((batch, data_dim), 0.2))
    iwae = objective == "iwae"

    def ours() -> torch.Tensor:
        return (ek.iwae(model, guide, x, k=k) if iwae else ek.elbo(model, guide, x, samples=k)).loss

    def bare() -> torch.Tensor:
        return -bare_bound(guide.encoder, model.decoder, x, k, iwae)

    def bare_dist() -> torch.Tensor:
        return -bare_bound(guide.encoder, model.decoder, x, k, iwae, distributions=True)

    steps = (ours, bare, bare_dist)
    for _ in range(3):  # warm-up
        for step in steps:
            time_once(step, params)
    times: list[list[float]] = [[], [], []]
    order = random.Random(0)
    for _ in range(repeats):  # interleaved, in a fresh random order each repetition (no position advantage)
        for i in order.sample(range(len(steps)), len(steps)):
            times[i].append(time_once(steps[i], params))
    ours_t, bare_t, dist_t = times
    return {
        "objective": objective, "k": k, "batch": batch,
        "elbokit_ms": 1e3 * statistics.median(ours_t), "bare_ms": 1e3 * statistics.median(bare_t),
        "bare_dist_ms": 1e3 * statistics.median(dist_t),
        # medians of per-repetition ratios: elbokit / bare, and elbokit / bare with torch's Bernoulli
        "median_ratio": statistics.median(a / b for a, b in zip(ours_t, bare_t, strict=True)),
        "median_ratio_vs_dist": statistics.median(a / b for a, b in zip(ours_t, dist_t, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = []
    for objective, k, batch in (("elbo", 1, 20), ("elbo", 1, 128), ("iwae", 5, 128), ("iwae", 50, 20)):
        row = measure(objective, k, batch, args.repeats)
        results.append(row)
        if not args.json:
            print(f"{objective:<5} k={k:<3} batch={batch:<4} elbokit {row['elbokit_ms']:7.2f} ms  "
                  f"bare {row['bare_ms']:7.2f} ms  bare+torch.distributions {row['bare_dist_ms']:7.2f} ms  "
                  f"ratios {row['median_ratio']:.3f} / {row['median_ratio_vs_dist']:.3f}")
    if args.json:
        print(json.dumps({"threads": args.threads, "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
