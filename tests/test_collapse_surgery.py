"""Collapse statistics and ELBO surgery against the linear-Gaussian closed forms.

With data drawn from the model and q the exact posterior, the aggregate posterior is the prior (so the marginal
KL is 0 in the limit) and the average KL estimates I(x; z) = 1/2 log det Lambda. For N points the N-component
mixture is lumpier than the prior: the estimated marginal KL is biased up by roughly (E chi^2 term) / (2N);
MARGINAL_BIAS is the allowance for N = 1500 (measured ~0.01 nats here).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import Independent, Normal

from conftest import Z
from elbokit.diagnostics.collapse import collapse
from elbokit.diagnostics.surgery import aggregate_log_prob, surgery
from elbokit.models import VAE, LinearGaussian

MARGINAL_BIAS = 0.05  # nats, N = 1500


def test_surgery_exact_posterior(make_model: Callable[..., LinearGaussian]) -> None:
    model = make_model(5, data_dim=4, latent_dim=2)
    with torch.no_grad():
        model.weight.mul_(0.5)  # I(x; z) of a few nats at most, so that N = 1500 covers the aggregate well
    x = model.sample(1500, generator=torch.Generator().manual_seed(0)).x
    s = surgery(model, model.posterior, x, samples=4)
    with torch.no_grad():
        mutual_information = 0.5 * float(torch.logdet(model.posterior_precision()))
        kl_n = torch.distributions.kl_divergence(model.posterior(x), model.prior())  # (N,)
    se_data = float(kl_n.std() / math.sqrt(x.shape[0]))  # the average KL's sampling error over the data
    assert abs(s.average_kl - mutual_information) <= Z * se_data
    assert 0 <= s.marginal_kl <= MARGINAL_BIAS + Z * s.marginal_kl_stderr
    assert abs(s.mutual_information - mutual_information) <= MARGINAL_BIAS + Z * (s.mutual_information_stderr + se_data)
    assert s.mutual_information <= s.log_n
    assert abs(s.identity_error) <= Z * s.identity_stderr
    assert math.isclose(s.average_kl_mc, s.mutual_information + s.marginal_kl, rel_tol=0, abs_tol=1e-10)


def test_aggregate_log_prob_chunking_and_single_component() -> None:
    q = Independent(Normal(torch.randn(7, 3), torch.rand(7, 3) + 0.5), 1)
    z = torch.randn(11, 3)
    torch.testing.assert_close(aggregate_log_prob(q, z, chunk_size=2), aggregate_log_prob(q, z))
    one = Independent(Normal(torch.zeros(1, 3), torch.ones(1, 3)), 1)
    torch.testing.assert_close(aggregate_log_prob(one, z), one.log_prob(z.unsqueeze(1)).squeeze(1))


def test_collapse_zero_column_is_inactive(make_model: Callable[..., LinearGaussian]) -> None:
    model = make_model(7, data_dim=5, latent_dim=3)
    x = model.sample(400, generator=torch.Generator().manual_seed(1)).x
    full = collapse(model, model.posterior, x)
    with torch.no_grad():
        model.weight[:, 1] = 0.0
    x = model.sample(400, generator=torch.Generator().manual_seed(1)).x
    dead = collapse(model, model.posterior, x)
    assert full.active_units == 3 and dead.active_units == 2
    assert float(dead.kl_per_dim[1]) < 1e-10 and float(dead.activity[1]) < 1e-20
    assert (dead.kl_per_dim[[0, 2]] > 0.1).all()
    # Activity estimates Cov(E[z|x]) = I - Lambda^{-1}.
    expected = 1 - torch.linalg.inv(model.posterior_precision()).diagonal()
    assert ((dead.activity - expected).abs() < 0.3 * expected + 1e-12).all()
    assert 0 < dead.mutual_information <= math.log(400)


def test_collapse_and_surgery_vae_shapes() -> None:
    torch.manual_seed(0)
    vae = VAE.mlp(12, 3, hidden=(16,))
    x = (torch.rand(64, 12, generator=torch.Generator().manual_seed(2)) < 0.3).double()
    c = collapse(vae, vae.encoder, x)
    assert c.kl_per_dim.shape == (3,) and c.activity.shape == (3,)
    assert torch.isfinite(c.kl_per_dim).all() and (c.kl_per_dim >= 0).all()
    assert 0 <= c.active_units <= 3 and math.isfinite(c.mutual_information)
    s = surgery(vae, vae.encoder, x)
    assert all(math.isfinite(v) for v in s[:-1])
    assert abs(s.identity_error) <= Z * s.identity_stderr
