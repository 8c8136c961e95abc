"""The ``elbokit`` command line.

Exit status: 0 done, 2 bad input or usage (a one-line message, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from elbokit import __version__
from elbokit.cli_args import UsageError, _int_list, _Parser, _positive_int
from elbokit.cli_run import RUN_COMMANDS, _add_run_commands, check_duration
from elbokit.estimators import elbo, iwae, log_marginal
from elbokit.models import LinearGaussian
from elbokit.runs import available_memory
from elbokit.train import TrainingDiverged


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="elbokit", description="Latent-variable models by the ELBO, and the truth about the bound.")
    parser.add_argument("--version", action="version", version=f"elbokit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    lg = commands.add_parser(
        "linear-gaussian",
        help="bounds against the exact log p(x) on a random linear-Gaussian model",
        description="Draw a random linear-Gaussian model and data from it; print the exact log p(x), the ELBO "
        "of the best mean-field q, IWAE_k for growing k and the importance-sampled log p(x), each with its "
        "standard error, averaged over the data points.",
    )
    lg.add_argument("--data-dim", type=_positive_int, default=20, help="D, dimension of x (default 20)")
    lg.add_argument("--latent-dim", type=_positive_int, default=5, help="d, dimension of z (default 5)")
    lg.add_argument("--n", type=_positive_int, default=100, help="data points (default 100)")
    lg.add_argument("--k", type=_int_list, default=[1, 10, 100, 1000], help="IWAE sample sizes (default 1,10,100,1000)")
    lg.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_run_commands(commands)
    return parser


def _mean_and_stderr(values: torch.Tensor) -> tuple[float, float]:
    """Mean over data points, and the Monte-Carlo standard error of that mean (values: (R, B) repeats)."""
    per_repeat = values.mean(1)  # (R,)
    return float(per_repeat.mean()), float(per_repeat.std() / math.sqrt(per_repeat.numel()))


def _check_linear_gaussian_time(model: LinearGaussian, guide: Any, x: torch.Tensor, ks: list[int]) -> None:
    """Time IWAE at a small k and refuse (or announce) the table's 20 repeats per k and the final log p(x)."""
    pilot = min(max(ks), 10)
    with torch.random.fork_rng():
        started = time.perf_counter()
        iwae(model, guide, x, k=pilot)
        per_sample = (time.perf_counter() - started) / pilot
    check_duration(
        per_sample * (20 * sum(ks) + 10 * max(2, max(ks))), f"linear-gaussian --k {max(ks)}", smaller="--k or --n"
    )


def linear_gaussian(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    if args.latent_dim >= args.data_dim:
        raise UsageError(f"--latent-dim must be below --data-dim ({args.data_dim}), got {args.latent_dim}")
    needed = 8 * 4 * (args.n * (args.data_dim + args.latent_dim) + args.data_dim**2)  # x, z and their copies
    available = available_memory(torch.device("cpu"))
    if available is not None and needed > available:
        raise UsageError(f"--n {args.n} points of dimension {args.data_dim} need about {needed / 2**30:.3g} GiB; "
                         f"this machine has {available / 2**30:.3g} GiB available")  # fmt: skip
    dtype = torch.float64
    weight = torch.randn(args.data_dim, args.latent_dim, generator=gen, dtype=dtype)
    noise = 0.5 + torch.rand(args.data_dim, generator=gen, dtype=dtype)
    model = LinearGaussian(weight, torch.zeros(args.data_dim, dtype=dtype), noise)
    x = model.sample(args.n, generator=gen).x
    with torch.no_grad():
        posterior = model.posterior(x)
        # The best mean-field q: the posterior mean and variances 1 / diag(precision) (the coordinate-wise optimum).
        scale = model.posterior_precision().diagonal().rsqrt().expand_as(posterior.loc)
        q = torch.distributions.Independent(torch.distributions.Normal(posterior.loc, scale), 1)
        guide = lambda _x: q  # noqa: E731
        _check_linear_gaussian_time(model, guide, x, args.k)
        log_px = float(model.log_evidence(x).mean())
        rows = [("exact log p(x)", log_px, 0.0), ("exact ELBO(q)", float(model.exact_elbo(x, q).mean()), 0.0)]
        repeats = 20
        draws = torch.stack([elbo(model, guide, x, samples=1).value for _ in range(repeats)])
        rows.append(("ELBO, analytic KL, K=1", *_mean_and_stderr(draws)))
        for k in args.k:
            draws = torch.stack([iwae(model, guide, x, k=k).value for _ in range(repeats)])
            rows.append((f"IWAE_{k}" + (" (joint-form ELBO)" if k == 1 else ""), *_mean_and_stderr(draws)))
        estimate = log_marginal(model, guide, x, k=max(2, max(args.k)) * 10)
        stderr = float(estimate.stderr.square().sum().sqrt()) / args.n
        rows.append((f"log p(x), IS k={estimate.samples}", float(estimate.value.mean()), stderr))
    print(f"linear-Gaussian model: D={args.data_dim}, d={args.latent_dim}, {args.n} points, seed {args.seed}")
    print("q = best mean-field Gaussian; nats per data point, mean over points; ± one standard error")
    print(f"{'bound':<28}{'value':>12}{'± se':>10}{'gap to log p(x)':>18}")
    for name, value, se in rows:
        se_text = f"{se:10.4f}" if se > 0 else f"{'':10}"
        print(f"{name:<28}{value:12.4f}{se_text}{log_px - value:18.4f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "linear-gaussian":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                linear_gaussian(args)
            for w in caught:
                print(f"elbokit: warning: {w.message}", file=sys.stderr)
            return 0
        return int(RUN_COMMANDS[args.command](args))
    except TrainingDiverged as err:
        print(f"elbokit: training stopped: {err}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, OSError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"elbokit: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("elbokit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: say so in one line, keep status 1
        print(f"elbokit: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
