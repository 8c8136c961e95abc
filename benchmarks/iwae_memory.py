"""Peak memory of IWAE_k / log p(x) at large k: elbokit's chunked estimators against a bare unchunked loop.

Each measurement runs in a fresh subprocess and reports its peak resident set size (ru_maxrss), so the
numbers do not mix. The model is an MNIST-sized VAE (784-200-20, Bernoulli decoder) with random weights:
memory does not depend on training. Prints one JSON object last with --json.

    python benchmarks/iwae_memory.py --json                     # the figures in BENCHMARKS.md
    python benchmarks/iwae_memory.py --batch 100 --k 500        # a quick run
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _worker(mode: str, batch: int, k: int) -> None:
    import torch
    from torch import nn
    from torch.distributions import Bernoulli, Independent, Normal

    import elbokit as ek

    torch.manual_seed(0)
    torch.set_num_threads(2)
    data_dim, latent_dim, hidden = 784, 20, 200
    encoder = ek.AmortizedGaussian.mlp(data_dim, latent_dim, hidden=(hidden,))
    decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim))

    class Model:
        event_shape = torch.Size((data_dim,))

        def prior(self) -> Independent:
            return Independent(Normal(torch.zeros(latent_dim), torch.ones(latent_dim)), 1)

        def likelihood(self, z: torch.Tensor) -> Independent:
            return Independent(Bernoulli(logits=decoder(z)), 1)

    model = Model()
    x = torch.bernoulli(torch.full((batch, data_dim), 0.2))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if mode == "log_marginal":
        ek.log_marginal(model, encoder, x, k=k)
    elif mode == "iwae_backward":
        ek.iwae(model, encoder, x, k=k).loss.backward()
    elif mode == "bare_log_marginal":  # the textbook one-shot version: all K samples at once
        with torch.no_grad():
            q = encoder(x)
            z = q.sample((k,))  # (K, B, d)
            log_w = model.likelihood(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)
            torch.logsumexp(log_w, 0)
    elif mode == "bare_iwae_backward":
        q = encoder(x)
        z = q.rsample((k,))
        log_w = model.likelihood(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)
        (-torch.logsumexp(log_w, 0).mean()).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": peak / 1024, "baseline_mb": baseline / 1024, "seconds": seconds}))


def _measure(mode: str, batch: int, k: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", mode, "--batch", str(batch), "--k", str(k)],
        capture_output=True, text=True, check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1000, help="data points for elbokit (default 1000)")
    parser.add_argument("--k", type=int, default=5000, help="importance samples (default 5000)")
    parser.add_argument("--bare-batch", type=int, default=100, help="data points for the bare loop (default 100)")
    parser.add_argument("--backward-batch", type=int, default=100, help="data points for the backward runs")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.batch, args.k)
        return
    result: dict[str, object] = {"k": args.k}
    runs = {
        "elbokit_log_marginal": ("log_marginal", args.batch),
        "elbokit_log_marginal_small": ("log_marginal", args.bare_batch),
        "bare_log_marginal": ("bare_log_marginal", args.bare_batch),
        "elbokit_iwae_backward": ("iwae_backward", args.backward_batch),
        "bare_iwae_backward": ("bare_iwae_backward", args.backward_batch),
    }
    for name, (mode, batch) in runs.items():
        m = _measure(mode, batch, args.k)
        result[name] = {"batch": batch, **m}
        if not args.json:
            print(f"{name:<28} batch {batch:>5}  peak {m['peak_mb']:9.1f} MB  {m['seconds']:7.1f} s")
    for kind in ("log_marginal", "iwae_backward"):
        elbokit = result[f"elbokit_{kind}" if kind == "iwae_backward" else "elbokit_log_marginal_small"]
        bare = result[f"bare_{kind}"]
        assert isinstance(elbokit, dict) and isinstance(bare, dict)
        result[f"{kind}_peak_ratio"] = elbokit["peak_mb"] / bare["peak_mb"]
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps({k: v for k, v in result.items() if k.endswith("ratio")}))


if __name__ == "__main__":
    main()
