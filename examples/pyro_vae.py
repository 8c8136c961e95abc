"""Diagnose a Pyro model: a VAE written and trained in Pyro, converted by elbokit.interop.pyro and diagnosed.

The model and guide are the Pyro VAE tutorial's (an MLP decoder and encoder, Bernoulli pixels, one latent site
``z`` per image in a plate), trained by Pyro's SVI on Trace_ELBO over a few thousand binarized MNIST images.
``from_pyro`` reads them through Pyro's effect handlers as an elbokit model (``prior()``, ``likelihood(z)``) and
guide (x -> q(z|x)); then ``dx.diagnose`` says how far the ELBO Pyro optimised is from log p(x) and why, and
``elbokit.report.write`` draws the page ``elbokit report`` draws for its own runs.

Run: python examples/pyro_vae.py [--steps 500] [--limit 100] [--k 200] [--refine-steps 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import Tensor, nn

import elbokit as ek
import elbokit.report
from elbokit import diagnostics as dx
from elbokit.interop.pyro import from_pyro


class PyroVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = Bernoulli(decoder(z)); q(z|x) = N(mu(x), diag sigma(x)^2). Pyro's VAE tutorial."""

    def __init__(self, data_dim: int = 784, latent_dim: int = 10, hidden: int = 400) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(), nn.Linear(hidden, data_dim))
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim))

    def model(self, x: Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            loc = x.new_zeros(x.shape[0], self.latent_dim)
            z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-4).to_event(1))


def train(vae: PyroVAE, x_train: Tensor, *, steps: int, batch_size: int = 100, seed: int = 0) -> list[float]:
    """Pyro's own loop: SVI on Trace_ELBO with Adam, a fresh Bernoulli draw of each batch. Returns the ELBO per
    image of each step's batch."""
    gen = torch.Generator().manual_seed(seed)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
    history = []
    for _ in range(steps):
        index = torch.randint(x_train.shape[0], (batch_size,), generator=gen)
        x = torch.bernoulli(x_train[index], generator=gen)  # (batch, 784) in {0, 1}
        history.append(-svi.step(x) / batch_size)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="SVI steps on 100 images each (default 500)")
    parser.add_argument("--train", type=int, default=5000, help="training images (default 5000)")
    parser.add_argument("--limit", type=int, default=100, help="test images to diagnose (default 100)")
    parser.add_argument("--k", type=int, default=200, help="importance samples per image (default 200)")
    parser.add_argument("--refine-steps", type=int, default=100, help="q* optimisation steps (default 100)")
    parser.add_argument("--out", type=Path, default=Path("pyro_vae_report.html"), help="the report's path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    data = ek.data.load("binarized-mnist")  # real MNIST, shipped in an installed package; train holds p(pixel)
    vae = PyroVAE(data.data_dim)
    started = time.perf_counter()
    history = train(vae, data.train[: args.train], steps=args.steps, seed=args.seed)
    tail = history[-50:]
    print(f"Pyro SVI: {args.steps} steps in {time.perf_counter() - started:.0f} s; "
          f"ELBO {sum(tail) / len(tail):.2f} on the last {len(tail)} training batches")  # fmt: skip

    x_test = data.test[: args.limit]  # (n, 784) test images, already binary
    # Convert, then diagnose and report: the calls every elbokit model and guide take.
    model, guide = from_pyro(vae.model, vae.guide, x_test)
    with torch.no_grad():  # the same estimator twice: 100 draws of log p(x, z) - log q(z|x) per image
        pyro_elbo = -Trace_ELBO(num_particles=100).loss(vae.model, vae.guide, x_test) / x_test.shape[0]
        our_elbo = float(ek.elbo(model, guide, x_test, samples=100, kl="mc").value.mean())
    d = dx.diagnose(model, guide, x_test, k=args.k, refine_steps=args.refine_steps)
    g = d.gaps  # against a reference log p(x): importance sampling from q refined per image
    print(f"ELBO, Pyro's Trace_ELBO {pyro_elbo:9.2f}   (100 draws, sampled KL)")
    print(f"ELBO, elbokit           {our_elbo:9.2f}   (100 draws, sampled KL)")
    print(f"ELBO, elbokit diagnose  {d.elbo:9.2f}   ({d.elbo_kl} KL)")
    print(f"log p(x)                {g.log_px:9.2f} ± {g.log_px_stderr:.2f}   (k-hat > 0.7 on {g.unreliable} of {d.n})")
    print(f"approximation gap       {g.approximation:9.2f}   log p(x) - L[q*]")
    print(f"amortization gap        {g.amortization:9.2f}   L[q*] - L[q]")
    print(f"active units            {d.active_units:9d}   of {d.latent_dim}")
    print(elbokit.report.write(d, args.out, model=model, x=x_test, image_shape=(28, 28), discrete=True))


if __name__ == "__main__":
    main()
