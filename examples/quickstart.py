"""Quick start: the ELBO <= IWAE_k -> log p(x) on a model whose log p(x) is known exactly.

Run: python examples/quickstart.py   (the same code as the README's quick start)
"""

import torch

import elbokit as ek
from elbokit.models import LinearGaussian

torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
model = LinearGaussian(weight=torch.randn(10, 3, generator=gen, dtype=torch.float64),
                       bias=torch.zeros(10, dtype=torch.float64), noise_scale=0.7)
x = model.sample(50, generator=gen).x                   # (50, 10): data drawn from the model

post = model.posterior(x)                               # the exact p(z|x), full covariance
q = torch.distributions.Independent(                    # a mean-field guide: the posterior's marginals
    torch.distributions.Normal(post.loc, post.variance.sqrt()), 1)
guide = lambda x: q  # noqa: E731

with torch.no_grad():
    print(f"exact log p(x)    {model.log_evidence(x).mean():9.4f}")
    print(f"exact ELBO(q)     {model.exact_elbo(x, q).mean():9.4f}")
    print(f"ELBO, 1000 draws  {ek.elbo(model, guide, x, samples=1000).value.mean():9.4f}")
    for k in (1, 10, 100, 1000):
        print(f"IWAE_{k:<5}        {ek.iwae(model, guide, x, k=k).value.mean():9.4f}")
    est = ek.log_marginal(model, guide, x, k=10_000)
    print(f"IS log p(x)       {est.value.mean():9.4f} ± {est.stderr.square().mean().sqrt() / 50**0.5:.4f}")
