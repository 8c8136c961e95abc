"""How noisy is each gradient estimator? Reparameterization, score function and sticking the landing
on the ELBO, and the pathwise, STL and DReG estimators of IWAE_k, measured on a linear-Gaussian model.

The guide is a free mean-field Gaussian per data point, started away from the posterior. For each estimator
the table gives the total variance of one gradient draw over the guide's parameters and the median
signal-to-noise ratio |mean| / sd over them (Rainforth et al. 2018).

Run: python examples/gradient_variance.py [--repeats 200]
"""

from __future__ import annotations

import argparse

import torch

import elbokit as ek
from elbokit.models import LinearGaussian


def table(repeats: int) -> list[tuple[str, str, int, float, float]]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float64
    model = LinearGaussian(torch.randn(8, 3, generator=gen, dtype=dtype), torch.zeros(8, dtype=dtype), 0.6)
    x = model.sample(16, generator=gen).x
    start = model.posterior(x).loc.detach() + 0.5
    guide = ek.LocalGaussian(16, 3, init_loc=start, init_scale=0.5)
    params = [guide.loc, guide.raw_scale]
    rows = []
    cases = [("elbo", g, 1) for g in ("reparam", "score", "stl")]
    cases += [("iwae", g, k) for k in (8, 64) for g in ("reparam", "stl", "dreg")]
    for objective, gradient, samples in cases:
        stats = ek.gradient_variance(
            model, guide, x, params=params, gradients=(gradient,), objective=objective,
            samples=samples, kl="mc", repeats=repeats,
        )[gradient]
        rows.append((objective, gradient, samples, float(stats.variance.sum()), float(stats.snr.median())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print(f"{'bound':<8}{'gradient':<10}{'K':>4}{'total variance':>18}{'median SNR':>12}")
    for objective, gradient, samples, variance, snr in table(args.repeats):
        print(f"{objective:<8}{gradient:<10}{samples:>4}{variance:18.4g}{snr:12.3f}")


if __name__ == "__main__":
    main()
