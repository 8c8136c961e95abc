"""MLPs, likelihoods (decoder output -> p(x|z)) and the VAE.

Expected densities come from torch.distributions built directly from the parameters and, for the Gaussian and
the Laplace, from scipy.stats; the continuous Bernoulli's mean is checked against its closed form and a
numerical integral. Exact comparisons are float64 to 1e-12 relative.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch import Tensor, nn
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import ContinuousBernoulli as TorchContinuousBernoulli
from torch.distributions import Distribution, Independent, Normal
from torch.distributions import Laplace as TorchLaplace

import elbokit as ek
from elbokit.models import (
    LIKELIHOODS,
    VAE,
    Bernoulli,
    ContinuousBernoulli,
    Gaussian,
    Laplace,
    LatentModel,
    Likelihood,
    make_likelihood,
    mlp,
)

D, K, B = 6, 4, 3
SPECS = [
    "bernoulli",
    "continuous-bernoulli",
    "gaussian",
    "gaussian:0.1",
    "gaussian:learned",
    "gaussian:decoder",
    "laplace",
    "laplace:2.5",
    "laplace:learned",
    "laplace:decoder",
]


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _data(spec: str, *shape: int, generator: torch.Generator) -> Tensor:
    """Points in the likelihood's support: grey values in [0, 1] for the unit ones, reals otherwise."""
    if make_likelihood(spec, D).support == "unit":
        return torch.rand(*shape, generator=generator)
    return 2 * torch.randn(*shape, generator=generator)


def _random_likelihood(spec: str, generator: torch.Generator) -> Likelihood:
    lik = make_likelihood(spec, D)
    if isinstance(lik, (Gaussian, Laplace)) and lik.raw_scale is not None:
        with torch.no_grad():
            lik.raw_scale.copy_(torch.randn(D, generator=generator))
    return lik


def _expected(spec: str, lik: Likelihood, out: Tensor) -> Distribution:
    """The same p(x|z) built by hand from the documented parametrisation."""
    name = spec.split(":")[0]
    if name == "bernoulli":
        return Independent(TorchBernoulli(logits=out, validate_args=False), 1)
    if name == "continuous-bernoulli":
        return Independent(TorchContinuousBernoulli(logits=out), 1)
    family = Normal if name == "gaussian" else TorchLaplace
    assert isinstance(lik, (Gaussian, Laplace))
    if lik.scale == "decoder":
        loc, raw = out[..., :D], out[..., D:]
        return Independent(family(loc, F.softplus(raw) + lik.min_scale), 1)
    if lik.scale == "learned":
        assert lik.raw_scale is not None
        return Independent(family(out, F.softplus(lik.raw_scale) + lik.min_scale), 1)
    return Independent(family(out, torch.full_like(out, float(lik.scale))), 1)


# ---- mlp -----------------------------------------------------------------------------------------------------
def test_mlp_layers_and_leading_dims() -> None:
    net = mlp((3, 5, 4, 2), activation=nn.ReLU)
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)] == [(3, 5), (5, 4), (4, 2)]
    z = torch.randn(7, 3, 3)
    out = net(z)
    assert out.shape == (7, 3, 2)
    torch.testing.assert_close(out[2], net(z[2]), rtol=1e-12, atol=1e-12)  # no mixing across leading dims
    assert [type(m) for m in mlp((4, 2))] == [nn.Linear]
    assert isinstance(mlp((2, 2, 2))[1], nn.Tanh)


@pytest.mark.parametrize("sizes", [(), (3,), (3, 0), (3, -1, 2), (3, 2.5)])
def test_mlp_rejects_bad_sizes(sizes: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="size"):
        mlp(sizes)


def test_amortized_gaussian_mlp_keeps_its_layout() -> None:
    """The refactored encoder is still one flat Sequential(Flatten, Linear, act, Linear, act, Linear)."""
    guide = ek.AmortizedGaussian.mlp(6, 2, hidden=(8, 5))
    names = [n for n, _ in guide.named_parameters()]
    assert names == [f"encoder.{i}.{p}" for i in (1, 3, 5) for p in ("weight", "bias")]
    assert [type(m) for m in guide.encoder] == [nn.Flatten, nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]


# ---- likelihoods: densities ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_log_prob_matches_torch_and_broadcasts(spec: str) -> None:
    """log p(x|z) with out (K, B, out) and x (B, D) is (K, B) and equals the hand-built torch distribution."""
    gen = torch.Generator().manual_seed(0)
    lik = _random_likelihood(spec, gen)
    out = torch.randn(K, B, lik.output_size(D), generator=gen)
    x = _data(spec, B, D, generator=gen)
    p = lik(out)
    assert p.batch_shape == (K, B) and p.event_shape == (D,)
    log_p = p.log_prob(x)
    assert log_p.shape == (K, B)
    torch.testing.assert_close(log_p, _expected(spec, lik, out).log_prob(x), rtol=1e-12, atol=1e-12)
    for k in range(K):  # broadcasting equals evaluating one sample at a time
        torch.testing.assert_close(log_p[k], lik(out[k]).log_prob(x), rtol=1e-12, atol=1e-12)
    assert p.sample().shape == (K, B, D) and p.sample((2,)).shape == (2, K, B, D)
    torch.testing.assert_close(lik.mean(out), p.mean, rtol=1e-12, atol=1e-12)
    assert lik.mean(out).shape == (K, B, D)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_fixed_scale_density_matches_scipy(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    loc, x = torch.randn(K, B, D, generator=gen), torch.randn(B, D, generator=gen)
    lik = make_likelihood(f"{name}:0.7")
    dist = stats.norm if name == "gaussian" else stats.laplace
    expected = dist.logpdf(_np(x), loc=_np(loc), scale=0.7).sum(-1)
    np.testing.assert_allclose(_np(lik(loc).log_prob(x)), expected, rtol=1e-12)


def test_bernoulli_is_the_cross_entropy_and_takes_grey_values() -> None:
    """log p = sum_j x_j log sigma(eta_j) + (1 - x_j) log sigma(-eta_j), for binary and grey x alike, with
    argument validation on; torch's own validated Bernoulli refuses grey values."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(K, B, D, generator=gen)
    for x in (torch.rand(B, D, generator=gen), (torch.rand(B, D, generator=gen) < 0.5).double()):
        eta, xn = _np(logits), _np(x)
        expected = (xn * -np.logaddexp(0, -eta) + (1 - xn) * -np.logaddexp(0, eta)).sum(-1)
        np.testing.assert_allclose(_np(Bernoulli()(logits).log_prob(x)), expected, rtol=1e-12)
    with pytest.raises(ValueError):
        TorchBernoulli(logits=logits, validate_args=True).log_prob(torch.full((B, D), 0.5))
    p = Bernoulli()(logits)
    assert p.expand((2, K, B)).log_prob(x).shape == (2, K, B)
    assert set(p.sample().unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("logits_shape, x_shape", [((K, B, D), (B, D)), ((B, D), (K, B, D)), ((D,), (B, D))])
def test_bernoulli_gradient_matches_torch_whichever_side_broadcasts(logits_shape, x_shape) -> None:
    """Both forms of log_prob have torch's value, whichever side broadcasts, for grey x: the three-pass one without
    autograd (in place when the logits hold the broadcast shape, else out of place) and the cross-entropy one
    under autograd, whose gradient with respect to the logits is torch's too."""
    gen = torch.Generator().manual_seed(3)
    eta = torch.randn(*logits_shape, generator=gen, dtype=torch.float64)
    x = torch.rand(*x_shape, generator=gen, dtype=torch.float64)
    ours, theirs = eta.clone().requires_grad_(), eta.clone().requires_grad_()
    value = Bernoulli()(ours).log_prob(x)
    expected = Independent(TorchBernoulli(logits=theirs, validate_args=False), 1).log_prob(x)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(Bernoulli()(eta).log_prob(x), expected.detach(), rtol=1e-12, atol=1e-12)
    weights = torch.randn(value.shape, generator=gen, dtype=torch.float64)
    (value * weights).sum().backward()
    (expected * weights).sum().backward()
    assert ours.grad is not None and theirs.grad is not None
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-12, atol=1e-12)


def test_continuous_bernoulli_mean() -> None:
    r"""E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)), and = \int_0^1 x p(x) dx numerically."""
    logits = torch.tensor([-4.0, -1.0, -0.3, 0.3, 2.0, 5.0])
    lam = _np(torch.sigmoid(logits))
    closed = lam / (2 * lam - 1) + 1 / (2 * np.arctanh(1 - 2 * lam))
    mean = ContinuousBernoulli().mean(logits.unsqueeze(0))[0]
    np.testing.assert_allclose(_np(mean), closed, rtol=1e-10)
    for eta, m in zip(logits, mean, strict=True):
        density = TorchContinuousBernoulli(logits=eta)

        def x_pdf(v: float, density: Distribution = density) -> float:
            return v * math.exp(float(density.log_prob(torch.tensor(v))))

        assert integrate.quad(x_pdf, 0, 1)[0] == pytest.approx(float(m), rel=1e-8)
    assert not np.allclose(_np(mean), lam, atol=1e-2)  # the mean is not lambda


@pytest.mark.parametrize("spec", ["bernoulli", "continuous-bernoulli", "gaussian", "laplace:decoder"])
def test_inverse_mean(spec: str) -> None:
    lik = make_likelihood(spec, D)
    target = torch.linspace(0.05, 0.95, D)
    eta = lik.inverse_mean(target)
    assert eta.shape == (D,)
    out = torch.cat([eta, torch.zeros(D)]) if lik.output_size(D) == 2 * D else eta
    torch.testing.assert_close(lik.mean(out), target, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spec", SPECS)
def test_output_size(spec: str) -> None:
    assert make_likelihood(spec, D).output_size(D) == (2 * D if spec.endswith("decoder") else D)


def test_learned_scale_gets_gradients() -> None:
    lik = make_likelihood("gaussian:learned", D)
    assert isinstance(lik, Gaussian) and lik.raw_scale is not None
    assert [n for n, _ in lik.named_parameters()] == ["raw_scale"]
    torch.testing.assert_close(lik.learned_scale, torch.ones(D))  # starts at s = 1
    lik(torch.zeros(B, D)).log_prob(torch.randn(B, D)).sum().backward()
    assert lik.raw_scale.grad is not None and bool((lik.raw_scale.grad != 0).all())
    with pytest.raises(ValueError, match="learns 6 scales"):
        lik(torch.zeros(B, D + 1))


# ---- likelihoods: checks and specs -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["bernoulli", "continuous-bernoulli", "gaussian", "laplace:learned"])
def test_check(spec: str) -> None:
    lik = make_likelihood(spec, D)
    name = spec.split(":")[0]
    lik.check(torch.rand(B, D))  # values in [0, 1] suit every likelihood
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.rand(B, D)
        x[1, 2] = bad
        with pytest.raises(ValueError, match=f"the {name} likelihood needs finite x; 1 values") as err:
            lik.check(x)
        assert "\n" not in str(err.value)
    x = torch.rand(B, D)
    x[0, 0], x[2, 1], x[2, 3] = -0.5, 3.0, 1.5
    if lik.support == "unit":
        with pytest.raises(ValueError) as err:
            lik.check(x)
        assert str(err.value) == f"the {name} likelihood needs x in [0, 1]; 3 values lie outside, in [-0.5, 3.0]"
    else:
        lik.check(x)


@pytest.mark.parametrize("spec", [*SPECS, "gaussian:learned:0.0001", "laplace:decoder:0.0", "gaussian:1e-3"])
def test_spec_round_trips(spec: str) -> None:
    lik = make_likelihood(spec, D)
    again = make_likelihood(lik.spec(), D)
    assert type(again) is type(lik) and again.spec() == lik.spec()
    assert lik.name in LIKELIHOODS and lik.spec().split(":")[0] == lik.name
    if isinstance(lik, (Gaussian, Laplace)) and isinstance(again, (Gaussian, Laplace)):
        assert (again.scale, again.min_scale) == (lik.scale, lik.min_scale)


def test_spec_defaults_and_instances() -> None:
    assert make_likelihood("gaussian").spec() == "gaussian:1.0"
    assert make_likelihood(" Laplace:0.5 ").spec() == "laplace:0.5"
    assert Gaussian(0.25).spec() == "gaussian:0.25"
    assert Laplace("decoder", min_scale=0.01).spec() == "laplace:decoder:0.01"
    assert Gaussian("learned", data_dim=3).spec() == "gaussian:learned"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("gamma", "valid: bernoulli, continuous-bernoulli, gaussian"),
        ("poisson:3", "poisson takes no options"),
        ("nb:wide", "the dispersion must be gene, cell or a number"),
        ("nb:-2", "dispersion must be gene, cell or a number > 0"),
        ("zinb:gene:1", r"zinb\[:gene\|cell\|THETA\]"),
        ("nb", "a per-gene dispersion needs data_dim"),
        ("bernoulli:0.5", "valid:"),
        ("gaussian:1:2:3", "valid:"),
        ("gaussian:wide", "SCALE must be"),
        ("gaussian:-1", "scale must be a number > 0"),
        ("laplace:nan", "scale must be a number > 0"),
        ("gaussian:learned", "needs data_dim"),
        ("gaussian:decoder:x", "MIN_SCALE"),
        ("gaussian:0.5:0.1", "min_scale applies"),
    ],
)
def test_make_likelihood_rejects(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        make_likelihood(spec)


# ---- VAE ---------------------------------------------------------------------------------------------------------
def _vae(spec: str = "bernoulli", data_dim: int = D, latent_dim: int = 2) -> VAE:
    return VAE.mlp(data_dim, latent_dim, hidden=(8, 7), likelihood=spec)


def test_vae_is_a_latent_model_with_a_standard_normal_prior() -> None:
    vae = _vae()
    assert isinstance(vae, LatentModel)
    p = vae.prior()
    assert p.event_shape == (2,) and p.batch_shape == ()
    torch.testing.assert_close(p.log_prob(torch.zeros(2)), torch.tensor(-math.log(2 * math.pi)))
    assert all(not k.startswith("_prior") for k in vae.state_dict())  # constants, not saved
    assert vae.float().prior().sample().dtype == torch.float32
    z = torch.randn(K, B, 2, dtype=torch.float32)
    assert vae.likelihood(z).batch_shape == (K, B) and vae.likelihood(z).event_shape == (D,)


def test_vae_mlp_parameter_counts() -> None:
    """Burda et al. (2016)'s 784-200-200-50: the decoder mirrors the encoder (minus the encoder's 2d outputs)."""
    vae = VAE.mlp(784, 50)

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(vae.encoder) == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 100 + 100
    assert count(vae.decoder) == 50 * 200 + 200 + 200 * 200 + 200 + 200 * 784 + 784
    assert count(vae.observation) == 0 and vae.observation.spec() == "bernoulli"
    assert [type(m) for m in vae.decoder] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert count(VAE.mlp(784, 50, likelihood="gaussian:learned").observation) == 784
    assert VAE.mlp(784, 50, likelihood="gaussian:decoder").decoder[-1].out_features == 2 * 784
    assert VAE.mlp(10, 3, hidden=(4,), covariance="full").encoder.encoder[-1].out_features == 3 + 6


@pytest.mark.parametrize("spec", ["bernoulli", "continuous-bernoulli", "gaussian:learned", "laplace:decoder"])
def test_vae_with_the_estimators(spec: str) -> None:
    """ELBO, IWAE_5 and log p(x) on a (B, D) batch: (B,), finite, and every parameter gets a gradient."""
    gen = torch.Generator().manual_seed(3)
    vae = _vae(spec)
    x = _data(spec, 5, D, generator=gen)
    for bound in (ek.elbo(vae, vae.encoder, x), ek.iwae(vae, vae.encoder, x, k=5)):
        assert bound.value.shape == (5,) and bool(torch.isfinite(bound.value).all())
        vae.zero_grad()
        bound.loss.backward()
        for name, param in vae.named_parameters():
            assert param.grad is not None and bool(param.grad.abs().sum() > 0), name
    estimate = ek.log_marginal(vae, vae.encoder, x, k=10)
    assert estimate.value.shape == (5,) and bool(torch.isfinite(estimate.value).all())


def test_vae_forward_is_the_encoder() -> None:
    vae = _vae()
    x = torch.rand(B, D)
    torch.testing.assert_close(vae(x).mean, vae.encoder(x).mean)


def test_sample_reconstruct_interpolate_shapes() -> None:
    vae = _vae()
    x = torch.rand(5, D)
    samples = vae.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, D) and not samples.requires_grad
    torch.testing.assert_close(samples, vae.sample(4, generator=torch.Generator().manual_seed(0)))
    assert bool(((samples > 0) & (samples < 1)).all())  # means of Bernoullis
    draws = vae.sample(4, mean=False)
    assert draws.shape == (4, D) and set(draws.unique().tolist()) <= {0.0, 1.0}
    assert vae.reconstruct(x).shape == (5, D) and vae.reconstruct(x, mean=False).shape == (5, D)
    path = vae.interpolate(x[0], x[1:2], steps=6)
    assert path.shape == (6, D)
    torch.testing.assert_close(path[0], vae.reconstruct(x[:1])[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(path[-1], vae.reconstruct(x[1:2])[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vae.decode(vae.encoder(x).mean), vae.reconstruct(x))
    with pytest.raises(ValueError, match="steps"):
        vae.interpolate(x[0], x[1], steps=1)
    with pytest.raises(ValueError, match="x_b"):
        vae.interpolate(x[0], x[1:3])
    with pytest.raises(ValueError, match="n must be"):
        vae.sample(0)


@pytest.mark.parametrize("spec", ["bernoulli", "continuous-bernoulli", "gaussian", "laplace:decoder"])
def test_init_output_bias_starts_at_the_data_mean(spec: str) -> None:
    gen = torch.Generator().manual_seed(4)
    vae = _vae(spec)
    data_mean = 0.1 + 0.8 * torch.rand(D, generator=gen)
    vae.init_output_bias(data_mean)
    with torch.no_grad():
        vae.decoder[-1].weight.zero_()
    z = torch.randn(3, 2, generator=gen)
    torch.testing.assert_close(vae.decode(z), data_mean.expand(3, D), rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError, match="data_mean has 5 entries"):
        vae.init_output_bias(data_mean[:5])


def test_init_output_bias_needs_a_final_linear() -> None:
    vae = VAE(ek.AmortizedGaussian.mlp(D, 2), nn.Sequential(nn.Linear(2, D), nn.Tanh()), Gaussian(), latent_dim=2)
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        vae.init_output_bias(torch.zeros(D))


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="latent_dim"):
        VAE(nn.Identity(), nn.Identity(), Bernoulli(), latent_dim=0)
    with pytest.raises(ValueError, match="Likelihood"):
        VAE(nn.Identity(), nn.Identity(), "bernoulli", latent_dim=2)  # type: ignore[arg-type]


def test_training_increases_the_elbo() -> None:
    """200 Adam steps on binary data from two noisy prototypes raise the ELBO (analytic KL, 20 samples)."""
    gen = torch.Generator().manual_seed(5)
    prototypes = (torch.rand(2, 16, generator=gen) < 0.5).double()
    labels = torch.randint(0, 2, (64,), generator=gen)
    flips = (torch.rand(64, 16, generator=gen) < 0.05).double()
    x = (prototypes[labels] - flips).abs()  # (64, 16), binary
    torch.manual_seed(0)
    vae = VAE.mlp(16, 2, hidden=(16,), likelihood="bernoulli")
    vae.init_output_bias(x.mean(0))

    def mean_elbo() -> float:
        with torch.no_grad():
            return float(ek.elbo(vae, vae.encoder, x, samples=20).value.mean())

    before = mean_elbo()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        ek.elbo(vae, vae.encoder, x).loss.backward()
        optimizer.step()
    after = mean_elbo()
    # Per point: the mean-only start costs about 16 H(p_j) nats; knowing the prototype leaves about 16 H(0.05).
    assert after > before + 3.0, (before, after)
