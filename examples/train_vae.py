"""Train a VAE with the library API and read its bound against the truth.

The ``synthetic`` dataset is drawn from a known linear-Gaussian model, so the data's own log-density is known
exactly. No model can beat it on average: E_data[log p_model(x)] = E_data[log p_true(x)] - KL(p_true || p_model).
The run trains a VAE with a Gaussian likelihood (learned noise per dimension) and KL annealing, then prints
its test ELBO, its importance-sampled log p(x) with the standard error, and the true model's exact log p(x).

Run: python examples/train_vae.py [--epochs 30] [--anneal linear:5ep] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

import elbokit as ek
from elbokit.data.small import synthetic_model


def train(epochs: int, anneal: str, seed: int = 0) -> dict[str, float]:
    data = ek.data.load("synthetic", seed=seed)
    config = ek.RunConfig(data="synthetic", epochs=epochs, anneal=anneal, seed=seed, latent_dim=5, hidden=(64,),
                          likelihood="gaussian:learned", batch_size=100, lr=3e-3, quiet=True, device="cpu")  # fmt: skip
    torch.manual_seed(seed)
    vae = ek.VAE.mlp(data.data_dim, config.latent_dim, hidden=config.hidden, likelihood=config.likelihood)
    vae = vae.float()  # the datasets are float32
    vae.init_output_bias(data.train.mean(0))
    result = ek.fit(vae, vae.encoder, data, config)
    x = data.test
    with torch.inference_mode():
        bound = ek.elbo(vae, vae.encoder, x)
        estimate = ek.log_marginal(vae, vae.encoder, x, k=2000)
        truth = synthetic_model(seed).log_evidence(x)
    n = x.shape[0]
    gap = truth - estimate.value  # (n,) per point: KL(p_true || p_model) in expectation, >= 0
    return {
        "epochs": result.epochs,
        "final_beta": result.history[-1]["beta"],
        "elbo": float(bound.value.mean()),
        "log_px": float(estimate.value.mean()),
        "log_px_stderr": float(estimate.stderr.square().sum().sqrt()) / n,
        "true_log_px": float(truth.mean()),
        "true_log_px_stderr": float(truth.std()) / n**0.5,
        "gap_to_truth": float(gap.mean()),
        "gap_to_truth_stderr": float(gap.std()) / n**0.5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--anneal", default="linear:5ep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    r = train(args.epochs, args.anneal, args.seed)
    print(f"VAE on synthetic linear-Gaussian data, {r['epochs']} epochs, final β {r['final_beta']:.3g}; test set")
    print(f"  ELBO (analytic KL)        {r['elbo']:9.3f}")
    print(f"  log p(x), IS k=2000       {r['log_px']:9.3f} ± {r['log_px_stderr']:.3f}")
    print(f"  true model's log p(x)     {r['true_log_px']:9.3f}   (the ceiling on average)")
    print(f"  truth - VAE, paired       {r['gap_to_truth']:9.3f} ± {r['gap_to_truth_stderr']:.3f}  (an estimate of "
          "KL(p_true || p_VAE) per point, >= 0)")  # fmt: skip


if __name__ == "__main__":
    main()
