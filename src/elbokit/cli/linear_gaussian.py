"""``elbokit linear-gaussian``: bounds against the exact log p(x) on a random linear-Gaussian model."""

from __future__ import annotations

import argparse
from typing import Any

from elbokit.cli._args import UsageError, _int_list, _positive_int, check_duration, warnings_to_stderr


def add_command(commands: Any) -> None:
    p = commands.add_parser(
        "linear-gaussian", help="bounds against the exact log p(x) on a random linear-Gaussian model",
        description="Draw a random linear-Gaussian model and data from it; print the exact log p(x), the ELBO "
        "of the best mean-field q, IWAE_k for growing k and the importance-sampled log p(x), each with its "
        "standard error, averaged over the data points.",
    )  # fmt: skip
    p.add_argument("--data-dim", type=_positive_int, default=20, help="D, dimension of x (default 20)")
    p.add_argument("--latent-dim", type=_positive_int, default=5, help="d, dimension of z (default 5)")
    p.add_argument("--n", type=_positive_int, default=100, help="data points (default 100)")
    p.add_argument("--k", type=_int_list, default=[1, 10, 100, 1000], help="IWAE sample sizes (default 1,10,100,1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from elbokit.diagnostics.exact import bounds_against_exact, bounds_seconds, random_linear_gaussian
    from elbokit.runs import available_memory

    if args.latent_dim >= args.data_dim:
        raise UsageError(f"--latent-dim must be below --data-dim ({args.data_dim}), got {args.latent_dim}")
    needed = 8 * 4 * (args.n * (args.data_dim + args.latent_dim) + args.data_dim**2)  # x, z and their copies
    available = available_memory(torch.device("cpu"))
    if available is not None and needed > available:
        raise UsageError(f"--n {args.n} points of dimension {args.data_dim} need about {needed / 2**30:.3g} GiB; "
                         f"this machine has {available / 2**30:.3g} GiB available")  # fmt: skip
    torch.manual_seed(args.seed)
    model, x = random_linear_gaussian(args.data_dim, args.latent_dim, args.n, seed=args.seed)
    check_duration(bounds_seconds(model, x, args.k), f"linear-gaussian --k {max(args.k)}", smaller="--k or --n")
    with warnings_to_stderr():
        rows = bounds_against_exact(model, x, args.k)
    log_px = rows[0].value
    print(f"linear-Gaussian model: D={args.data_dim}, d={args.latent_dim}, {args.n} points, seed {args.seed}")
    print("q = best mean-field Gaussian; nats per data point, mean over points; ± one standard error")
    print(f"{'bound':<28}{'value':>12}{'± se':>10}{'gap to log p(x)':>18}")
    for name, value, se in rows:
        se_text = f"{se:10.4f}" if se > 0 else f"{'':10}"
        print(f"{name:<28}{value:12.4f}{se_text}{log_px - value:18.4f}")
    return 0
