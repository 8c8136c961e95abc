"""A Pyro model and guide through elbokit.interop.pyro: the same ELBO as Pyro's on the same draws, exact answers on
a linear-Gaussian model written in Pyro, the diagnosis and report of a Pyro VAE, and one-line errors for programs
of another shape. Seeds and tolerances follow tests/conftest.py (float64, Z standard errors)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

pyro = pytest.importorskip("pyro")
import pyro.distributions as dist  # noqa: E402

import elbokit as ek  # noqa: E402
import elbokit.report  # noqa: E402
from conftest import Z  # noqa: E402
from elbokit import diagnostics as dx  # noqa: E402
from elbokit.diagnostics.gaps import elbo_with_stderr  # noqa: E402
from elbokit.interop.pyro import PyroModel, from_pyro, reshape_batch  # noqa: E402
from elbokit.models import LinearGaussian  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

D, HIDDEN, LATENT = 16, 12, 2  # 4 x 4 binary "images"
OPT = 0.01  # nats: allowance for q* found by stochastic optimisation (as in tests/test_gaps.py)


class TutorialVAE(nn.Module):
    """The Pyro VAE tutorial's model and guide (an MLP decoder and encoder, Bernoulli pixels), made small."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.decoder = nn.Sequential(nn.Linear(LATENT, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, D))
        self.encoder = nn.Sequential(nn.Linear(D, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, 2 * LATENT))

    def model(self, x: Tensor) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            loc = x.new_zeros(x.shape[0], LATENT)
            z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw_scale) + 1e-3).to_event(1))


@pytest.fixture
def vae() -> TutorialVAE:
    pyro.clear_param_store()
    return TutorialVAE()


def _binary(n: int, seed: int) -> Tensor:
    return torch.bernoulli(torch.full((n, D), 0.3), generator=torch.Generator().manual_seed(seed))


def test_the_elbo_equals_pyros_trace_elbo_on_the_same_draws(vae: TutorialVAE) -> None:
    """Pyro's Trace_ELBO loss is -sum over points of log p(x, z) - log q(z|x) at one z ~ q per point; elbokit's
    ELBO with the sampled KL is the same per point. Seeded alike, both draw the same z (one (B, d) standard-normal
    draw), so the sums agree to rounding, and so do their gradients."""
    x = _binary(9, seed=1)
    model, guide = from_pyro(vae.model, vae.guide, x)
    params = list(vae.parameters())
    for seed in range(3):
        torch.manual_seed(seed)
        ours = ek.elbo(model, guide, x, kl="mc").value.sum()
        grads_ours = torch.autograd.grad(ours, params)
        torch.manual_seed(seed)
        theirs = -pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        grads_theirs = torch.autograd.grad(theirs, params)
        assert abs(float(ours.detach()) - float(theirs.detach())) < 1e-10
        for a, b in zip(grads_ours, grads_theirs, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    # The analytic KL (Normal pair registered in torch) is the ELBO's expectation too: within Z standard errors.
    mc = ek.elbo(model, guide, x, kl="mc", samples=4000).value
    analytic = ek.elbo(model, guide, x, kl="analytic", samples=4000)
    assert analytic.kl_method == "analytic"
    f = torch.stack([ek.elbo(model, guide, x, kl="mc", samples=1).value for _ in range(200)])  # (200, B)
    sd = f.std(0) / math.sqrt(4000)
    assert ((mc - analytic.value).abs() < Z * math.sqrt(2) * sd + 1e-9).all()


def test_shapes_of_the_converted_model(vae: TutorialVAE) -> None:
    x = _binary(5, seed=2)
    model, guide = from_pyro(vae.model, vae.guide, x)
    prior = model.prior()
    assert prior.batch_shape == () and prior.event_shape == (LATENT,)
    assert isinstance(prior, torch.distributions.Independent)  # a torch family: its KL is in closed form
    q = guide(x)
    assert q.batch_shape == (5,) and q.event_shape == (LATENT,)
    z = q.rsample((3,))  # (3, 5, d), samples first
    likelihood = model.likelihood(z)
    assert likelihood.batch_shape == (3, 5) and likelihood.event_shape == (D,)
    with torch.no_grad():  # the same numbers as the decoder itself
        expected = dist.Bernoulli(logits=vae.decoder(z)).to_event(1).log_prob(x)
    torch.testing.assert_close(likelihood.log_prob(x), expected, atol=1e-12, rtol=0)
    state = torch.get_rng_state()
    model.prior(), guide(x), model.likelihood(z)
    assert torch.equal(state, torch.get_rng_state())  # reading a distribution draws nothing
    assert model.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, D)
    assert model.reconstruct(x).shape == (5, D)


def _pyro_linear_gaussian(lg: LinearGaussian) -> Callable[[Tensor], None]:
    def model(x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            loc = x.new_zeros(x.shape[0], lg.latent_dim)
            z = pyro.sample("z", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.weight.T + lg.bias, lg.noise_scale).to_event(1), obs=x)

    return model


def _pyro_posterior(lg: LinearGaussian, *, mean_field: bool) -> Callable[[Tensor], None]:
    def guide(x: Tensor) -> None:
        post = lg.posterior(x)  # exact p(z|x): MultivariateNormal, batch (B,)
        with pyro.plate("data", x.shape[0]):
            if mean_field:
                pyro.sample("z", dist.Normal(post.loc, post.variance.sqrt()).to_event(1))
            else:
                pyro.sample("z", dist.MultivariateNormal(post.loc, scale_tril=post.scale_tril))

    return guide


def test_exact_answers_on_a_linear_gaussian_model_written_in_pyro(
    make_model: Callable[..., LinearGaussian],
) -> None:
    lg = make_model(3, data_dim=5, latent_dim=2)
    x = lg.sample(8, generator=torch.Generator().manual_seed(1)).x
    exact = lg.log_evidence(x)  # (B,)
    pyro_model = _pyro_linear_gaussian(lg)

    # The likelihood and prior are the model's own.
    model, guide = from_pyro(pyro_model, _pyro_posterior(lg, mean_field=True), x)
    z = torch.randn(3, 8, 2)
    torch.testing.assert_close(model.likelihood(z).log_prob(x), lg.likelihood(z).log_prob(x), atol=1e-12, rtol=0)
    torch.testing.assert_close(model.prior().log_prob(z), lg.prior().log_prob(z), atol=1e-12, rtol=0)

    # Importance sampling from the posterior's marginals: within Z standard errors of the exact log p(x).
    with torch.no_grad():
        est = ek.log_marginal(model, guide, x, k=2000)
    assert ((est.value - exact).abs() < Z * est.stderr + 1e-9).all()
    # The mean-field ELBO is the closed form's, within Z standard errors.
    q = guide(x)
    assert torch.allclose(q.mean, lg.posterior(x).loc)
    value, stderr, kl_method = elbo_with_stderr(model, q, x, samples=2000)
    assert kl_method == "analytic"
    assert ((value - lg.exact_elbo(x, q)).abs() < Z * stderr).all()
    # AIS from the prior: a lower bound at log p(x) within Z of its spread over chains (a loose, stated check).
    a = dx.ais(model, x, steps=100, chains=8, generator=torch.Generator().manual_seed(0))
    assert ((a.value - exact).abs() < Z * a.stderr + 0.05).all()

    # With the exact posterior as the guide every log weight is log p(x), and both gaps vanish.
    model, guide = from_pyro(pyro_model, _pyro_posterior(lg, mean_field=False), x)
    with torch.no_grad():
        est = ek.log_marginal(model, guide, x, k=100)
    torch.testing.assert_close(est.value, exact, atol=1e-9, rtol=0)
    g = dx.gaps(model, guide, x, k=500, steps=300, samples=500)
    se_approximation = (g.log_px_stderr.square() + g.elbo_optimal_stderr.square()).sqrt()
    se_amortization = (g.elbo_optimal_stderr.square() + g.elbo_amortized_stderr.square()).sqrt()
    assert (g.approximation.abs() <= Z * se_approximation + OPT).all()
    assert (g.amortization.abs() <= Z * se_amortization + OPT).all()
    assert ((g.log_px - exact).abs() < Z * g.log_px_stderr + 1e-9).all()  # its reference: IS from refined q*
    # Collapse and surgery run on it: two active units; average KL = I + marginal KL (identity within noise).
    c = dx.collapse(model, guide, x)
    assert c.active_units == 2 and c.kl_per_dim.shape == (2,)
    s = dx.surgery(model, guide, x)
    assert math.isfinite(s.average_kl) and s.mutual_information <= s.log_n + 1e-9


def test_diagnose_and_report_a_converted_pyro_vae(vae: TutorialVAE, tmp_path: Path) -> None:
    x = _binary(20, seed=3)
    model, guide = from_pyro(vae.model, vae.guide, x)
    d = dx.diagnose(model, guide, x, k=50, refine_steps=10)
    assert d.n == 20 and d.latent_dim == LATENT and d.elbo_kl == "analytic"
    assert d.gaps.log_px >= d.elbo - Z * d.gaps.log_px_stderr - 1e-6
    path = elbokit.report.write(d, tmp_path / "pyro.html", model=model, x=x, image_shape=(4, 4), discrete=True)
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") or "<html" in page[:500]
    assert "data:image/png;base64" in page  # the model's sample/reconstruct let the image sections draw


def _bad_model_two_latents(x: Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        w = pyro.sample("w", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal((z + w).sum(-1, keepdim=True).expand_as(x), 1.0).to_event(1), obs=x)


def _bad_model_no_plate(x: Tensor) -> None:
    z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand_as(x), 1.0).to_event(1), obs=x)


def _bad_model_no_observed(x: Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))


def _bad_model_conditional_prior(x: Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        loc = x[:, :2]  # p(z | x): not one p(z) shared by the points
        z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand_as(x), 1.0).to_event(1), obs=x)


def _guide(x: Tensor) -> None:
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))


@pytest.mark.parametrize(
    ("model_fn", "kwargs", "message"),
    [
        (_guide, {"latent": "h"}, "no latent sample site named 'h'; its sample sites: 'z' (latent)"),
        (_bad_model_two_latents, {}, "exactly one latent sample site, 'z'; found 'z' (latent), 'w' (latent)"),
        (_bad_model_no_plate, {}, "must be inside a plate over the 6 data points; it is inside plates of sizes none"),
        (_bad_model_no_observed, {}, "no observed sample site named 'x'; its sample sites: 'z' (latent)"),
        (_bad_model_conditional_prior, {}, "latent site 'z' has a different distribution for different data points"),
    ],
    ids=["no-such-latent", "two-latents", "outside-a-plate", "no-observed", "conditional-prior"],
)
def test_programs_of_another_shape_are_refused_in_one_line(
    model_fn: Callable[[Tensor], None], kwargs: dict[str, str], message: str
) -> None:
    x = torch.arange(18.0).reshape(6, 3)
    with pytest.raises(ValueError) as info:
        from_pyro(model_fn, _guide, x, **kwargs)
    text = str(info.value)
    assert "\n" not in text and message in text, text


def test_a_guide_with_its_latent_outside_the_plate_is_refused() -> None:
    def guide(x: Tensor) -> None:
        pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(2))

    def model(x: Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand_as(x), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match="the Pyro guide's latent site 'z' must be inside a plate") as info:
        from_pyro(model, guide, torch.zeros(6, 3))
    assert "\n" not in str(info.value)
    assert isinstance(from_pyro(model, _guide, torch.zeros(6, 3))[0], PyroModel)


def test_the_readme_block_is_the_examples_code() -> None:
    """The README's "Diagnose a Pyro model" block shows lines of examples/pyro_vae.py as they are there."""
    root = Path(__file__).resolve().parents[1]
    section = (root / "README.md").read_text(encoding="utf-8").split("\n## Diagnose a Pyro model\n", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    example = (root / "examples" / "pyro_vae.py").read_text(encoding="utf-8")
    for line in block.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.strip() in example, f"README line not in examples/pyro_vae.py: {line}"


def _families() -> list[torch.distributions.Distribution]:
    gen = torch.Generator().manual_seed(0)
    scale_tril = torch.linalg.cholesky(torch.eye(3) + 0.1)
    logits = dist.Bernoulli(logits=torch.randn(6, 4, generator=gen))
    _ = logits.probs  # both parametrisations now cached on the object: the rebuild must take one
    return [
        dist.Normal(0.0, 1.0).expand([6, 3]).to_event(1),  # what a plate makes of an unbatched prior
        dist.Bernoulli(probs=torch.rand(6, 4, generator=gen)).to_event(1),
        logits.to_event(1),
        dist.MultivariateNormal(torch.zeros(6, 3), scale_tril=scale_tril),
        dist.Gamma(torch.rand(6, 2, generator=gen) + 1, 2.0).to_event(1),
        dist.Beta(torch.rand(6, 2, generator=gen) + 1, torch.rand(6, 2, generator=gen) + 1).to_event(1),
        dist.Poisson(torch.rand(6, 5, generator=gen)).to_event(1),
        dist.Categorical(logits=torch.randn(6, 4, generator=gen)),
    ]


@pytest.mark.parametrize("d", _families(), ids=lambda d: type(getattr(d, "base_dist", d)).__name__)
def test_reshape_batch_keeps_the_family_and_its_densities(d: torch.distributions.Distribution) -> None:
    reshaped = reshape_batch(d, torch.Size([2, 3]))
    assert type(reshaped) is type(d) and reshaped.batch_shape == (2, 3) and reshaped.event_shape == d.event_shape
    value = d.sample()
    expected = d.log_prob(value).reshape(2, 3)
    torch.testing.assert_close(reshaped.log_prob(value.reshape(2, 3, *d.event_shape)), expected, atol=1e-12, rtol=0)
