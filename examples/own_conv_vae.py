"""Bring your own model: a convolutional VAE in plain PyTorch, trained by its own loop, diagnosed by elbokit.

Nothing here is elbokit's but the data, the diagnosis and the report. The model is an ``nn.Module`` that speaks
the protocol every elbokit diagnostic takes: ``prior()`` returns p(z) and ``likelihood(z)`` returns p(x|z), both
``torch.distributions`` objects, and its encoder is a guide, a callable x -> q(z|x). ``likelihood`` accepts z of
shape (B, d) and the samples-first (K, B, d) that the estimators pass. A plain Adam loop maximises the ELBO,

    L(x) = E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)),

written out by hand on binarized MNIST (a fresh Bernoulli draw of each batch). Then one call,
``dx.diagnose(model, model.encoder, x)``, says how far that ELBO is from log p(x) and why (the approximation and
amortization gaps, active units, k-hat), and ``elbokit.report.write`` renders the same self-contained page as
``elbokit report``, without a run directory.

It takes about a minute on one CPU core (1,500 steps, then 100 test images at k = 200).

Run: python examples/own_conv_vae.py [--steps 1500] [--limit 100] [--k 200] [--out conv_vae_report.html]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, kl_divergence

import elbokit as ek
import elbokit.report
from elbokit import diagnostics as dx


class ConvEncoder(nn.Module):
    """q(z|x) = N(mu(x), diag sigma(x)^2): x (B, 784) -> a Distribution with batch (B,), event (d,)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.SiLU(),  # (B, 16, 14, 14)
            nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.SiLU(),  # (B, 32, 7, 7)
            nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(32 * 7 * 7, 2 * latent_dim)

    def forward(self, x: Tensor) -> Distribution:
        mu, raw_scale = self.head(self.features(x)).chunk(2, dim=-1)  # each (B, d)
        return Independent(Normal(mu, nn.functional.softplus(raw_scale) + 1e-4), 1)


class ConvVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = Bernoulli(sigmoid(decoder(z))) over the 784 pixels; the encoder is the guide."""

    def __init__(self, latent_dim: int = 16) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = ConvEncoder(latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 32 * 7 * 7), nn.SiLU(),
            nn.Unflatten(1, (32, 7, 7)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.SiLU(),  # (N, 16, 14, 14)
            nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),  # (N, 1, 28, 28): logits
            nn.Flatten(),
        )  # fmt: skip
        # p(z)'s parameters are buffers so that they follow the model across devices and dtypes.
        self.register_buffer("prior_loc", torch.zeros(latent_dim))
        self.register_buffer("prior_scale", torch.ones(latent_dim))

    def prior(self) -> Distribution:
        return Independent(Normal(self.prior_loc, self.prior_scale), 1)

    def logits(self, z: Tensor) -> Tensor:
        """Decoder logits for z of any leading shape: (*batch, d) -> (*batch, 784)."""
        batch = z.shape[:-1]
        return self.decoder(z.reshape(-1, self.latent_dim)).reshape(*batch, 784)  # convolutions want (N, d)

    def likelihood(self, z: Tensor) -> Distribution:
        """p(x|z) with batch shape z's leading dims, (B,) or (K, B), and event (784,)."""
        return Independent(Bernoulli(logits=self.logits(z)), 1)

    # What the report draws with: samples and reconstructions for the image sections; decode, encode and
    # latent_dim for the latent traversals, scatter and manifold.
    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """E[x|z]: (..., d) -> (..., 784)."""
        return torch.sigmoid(self.logits(z))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """E_q[z|x]: (B, 784) -> (B, d)."""
        return self.encoder(x).mean

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, mean: bool = True) -> Tensor:
        """z ~ p(z) decoded to E[x|z] (``mean``) or to a draw x ~ p(x|z): (n, 784)."""
        loc = self.prior_loc
        z = torch.randn(n, self.latent_dim, generator=generator, device=loc.device, dtype=loc.dtype)  # (n, d)
        return self.decode(z) if mean else self.likelihood(z).sample()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = E_q z]: (B, 784) -> (B, 784)."""
        return self.decode(self.encode(x))


def elbo(model: ConvVAE, x: Tensor) -> Tensor:
    """One-sample ELBO per point, (B,): log p(x|z) at z ~ q(z|x), reparameterized, minus the analytic KL."""
    q = model.encoder(x)
    z = q.rsample()  # (B, d)
    log_px_given_z = model.likelihood(z).log_prob(x)  # (B,)
    return log_px_given_z - kl_divergence(q, model.prior())


def train(model: ConvVAE, x_train: Tensor, *, steps: int, batch_size: int = 100, lr: float = 2e-3,
          seed: int = 0) -> list[float]:  # fmt: skip
    """The user's own loop: Adam on -ELBO, a fresh Bernoulli draw of each batch (dynamic binarization)."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        index = torch.randint(x_train.shape[0], (batch_size,), generator=gen)
        x = torch.bernoulli(x_train[index], generator=gen)  # (batch, 784) in {0, 1}
        loss = -elbo(model, x).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(-loss.item())
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps on 100 images each (default 1500)")
    parser.add_argument("--limit", type=int, default=100, help="test images to diagnose (default 100)")
    parser.add_argument("--k", type=int, default=200, help="importance samples per image (default 200)")
    parser.add_argument("--refine-steps", type=int, default=100, help="q* optimisation steps (default 100)")
    parser.add_argument("--out", type=Path, default=Path("conv_vae_report.html"), help="the report's path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    data = ek.data.load("binarized-mnist")  # real MNIST, shipped in an installed package; train holds p(pixel)
    model = ConvVAE(latent_dim=16)
    started = time.perf_counter()
    history = train(model, data.train, steps=args.steps, seed=args.seed)
    tail = history[-50:]
    print(f"trained {args.steps} steps in {time.perf_counter() - started:.0f} s; "
          f"ELBO {sum(tail) / len(tail):.2f} on the last {len(tail)} training batches")  # fmt: skip
    model.eval()

    # Diagnose and report: these calls take any model with prior() and likelihood(z), and any guide.
    x_test = data.test[: args.limit]  # (n, 784) test images, already binary
    d = dx.diagnose(model, model.encoder, x_test, k=args.k, refine_steps=args.refine_steps)
    g = d.gaps  # against a reference log p(x): importance sampling from q refined per image
    print(f"ELBO               {d.elbo:9.2f}")
    print(f"log p(x)           {g.log_px:9.2f} ± {g.log_px_stderr:.2f}   (k-hat > 0.7 on {g.unreliable} of {d.n})")
    print(f"approximation gap  {g.approximation:9.2f}   log p(x) - L[q*]")
    print(f"amortization gap   {g.amortization:9.2f}   L[q*] - L[q]")
    print(f"active units       {d.active_units:9d}   of {d.latent_dim}")
    print(elbokit.report.write(d, args.out, model=model, x=x_test, image_shape=(28, 28), discrete=True))


if __name__ == "__main__":
    main()
