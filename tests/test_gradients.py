"""Gradient estimators against the exact gradient of the linear-Gaussian ELBO.

The ELBO of a Gaussian q under the linear-Gaussian model is known in closed form (``exact_elbo``), so its
gradient with respect to the guide's and the model's parameters is exact (autograd through the closed form).
Each estimator's mean gradient over R independent draws is compared with it coordinate by coordinate,
|mean - exact| <= Z * stderr with stderr = sd / sqrt(R) from the same draws (Z from conftest). Estimators of
the IWAE_K gradient (K > 1), which has no closed form, are compared with one another by a two-sample z-test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import elbokit as ek
from conftest import Z
from elbokit.models import LinearGaussian

REPEATS = 400


def _setup(make_model: Callable[..., LinearGaussian], covariance: str = "diagonal"):
    """A model, 3 data points and a local guide away from the posterior (so gradients are not zero)."""
    model = make_model(7, data_dim=4, latent_dim=2)
    x = model.sample(3, generator=torch.Generator().manual_seed(8)).x
    post = model.posterior(x)
    guide = ek.LocalGaussian(3, 2, covariance=covariance, init_loc=post.loc.detach() + 0.4, init_scale=0.6)
    params = [guide.loc, guide.raw_scale, model.weight, model.bias, model.log_noise_scale]
    return model, guide, x, params


def _exact_gradient(model: LinearGaussian, guide: ek.LocalGaussian, x: torch.Tensor, params) -> torch.Tensor:
    value = model.exact_elbo(x, guide(x)).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(value, params)])


def _max_z(stats: ek.GradientStats, exact: torch.Tensor) -> float:
    return float(((stats.mean - exact).abs() / stats.stderr.clamp_min(1e-300)).max())


@pytest.mark.parametrize(
    ("gradient", "kl", "samples"),
    [
        ("reparam", "analytic", 1),
        ("reparam", "mc", 1),
        ("reparam", "mc", 3),
        ("score", "analytic", 1),
        ("score", "mc", 1),
        ("score", "analytic", 4),  # leave-one-out baseline
        ("score", "mc", 4),
        ("stl", "mc", 1),
        ("stl", "mc", 3),
    ],
)
@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_elbo_gradients_are_unbiased(make_model, gradient, kl, samples, covariance) -> None:
    """Mean estimated gradient (guide and model parameters) equals the exact ELBO gradient within Z stderr."""
    model, guide, x, params = _setup(make_model, covariance)
    exact = _exact_gradient(model, guide, x, params)
    stats = ek.gradient_variance(
        model, guide, x, params=params, gradients=(gradient,), samples=samples, kl=kl, repeats=REPEATS
    )[gradient]
    assert stats.mean.shape == exact.shape
    assert _max_z(stats, exact) < Z


@pytest.mark.parametrize("gradient", ["reparam", "stl", "dreg"])
def test_iwae_one_sample_gradient_is_the_elbo_gradient(make_model, gradient) -> None:
    """At K = 1 IWAE is the ELBO: every IWAE gradient estimator is unbiased for the exact ELBO gradient."""
    model, guide, x, params = _setup(make_model)
    exact = _exact_gradient(model, guide, x, params)
    stats = ek.gradient_variance(
        model, guide, x, params=params, gradients=(gradient,), objective="iwae", samples=1, repeats=REPEATS
    )[gradient]
    assert _max_z(stats, exact) < Z


def test_dreg_is_unbiased_for_the_iwae_gradient(make_model) -> None:
    """At K = 8 DReG and the pathwise IWAE gradient have the same mean (two-sample z-test per coordinate)."""
    model, guide, x, params = _setup(make_model)
    stats = ek.gradient_variance(
        model, guide, x, params=params, gradients=("reparam", "dreg"), objective="iwae", samples=8,
        repeats=REPEATS,
    )
    a, b = stats["reparam"], stats["dreg"]
    z = (a.mean - b.mean).abs() / (a.stderr.square() + b.stderr.square()).sqrt()
    assert float(z.max()) < Z
    # and the IWAE_8 gradient is not the ELBO gradient: the test above can tell them apart
    exact_elbo_grad = _exact_gradient(model, guide, x, params)
    assert _max_z(a, exact_elbo_grad) > Z


def test_iwae_stl_is_biased_for_k_above_one(make_model) -> None:
    """STL applied to IWAE_K, K > 1, is biased for the guide (Tucker et al. 2018): the test detects it."""
    model, guide, x, params = _setup(make_model)
    stats = ek.gradient_variance(
        model, guide, x, params=params[:2], gradients=("reparam", "stl"), objective="iwae", samples=16,
        repeats=REPEATS,
    )
    a, b = stats["reparam"], stats["stl"]
    z = (a.mean - b.mean).abs() / (a.stderr.square() + b.stderr.square()).sqrt()
    assert float(z.max()) > Z


def test_reparameterization_has_lower_variance_than_score(make_model) -> None:
    """The pathwise estimator's variance is below the score function's on every guide coordinate."""
    model, guide, x, params = _setup(make_model)
    stats = ek.gradient_variance(
        model, guide, x, params=params[:2], gradients=("reparam", "score"), kl="mc", repeats=REPEATS
    )
    assert bool((stats["reparam"].variance < stats["score"].variance).all())
    assert float(stats["score"].variance.sum() / stats["reparam"].variance.sum()) > 3.0


def test_baseline_reduces_score_variance(make_model) -> None:
    """The leave-one-out baseline lowers the score estimator's variance per sample spent."""
    model, guide, x, params = _setup(make_model)
    one = ek.gradient_variance(model, guide, x, params=params[:2], gradients=("score",), samples=1, kl="mc")
    four = ek.gradient_variance(model, guide, x, params=params[:2], gradients=("score",), samples=4, kl="mc")
    # Four independent samples without a baseline would divide the variance by 4; the baseline does better.
    assert float(four["score"].variance.sum()) < float(one["score"].variance.sum()) / 4


@pytest.mark.parametrize(("objective", "gradient", "samples"), [("elbo", "stl", 1), ("iwae", "dreg", 5)])
def test_path_estimators_vanish_at_the_exact_posterior(make_model, objective, gradient, samples) -> None:
    """With q the exact posterior, STL and DReG give a guide gradient of exactly 0 for every draw
    (Roeder et al. 2017; Tucker et al. 2018), while the pathwise gradient is noisy around 0."""
    model = make_model(7, data_dim=4, latent_dim=2)
    x = model.sample(3, generator=torch.Generator().manual_seed(8)).x
    guide = ek.LocalGaussian.from_distribution(model.posterior(x))
    params = [guide.loc, guide.raw_scale]
    kwargs = {"objective": objective, "samples": samples, "repeats": 20}
    path = ek.gradient_variance(model, guide, x, params=params, gradients=(gradient,), **kwargs)[gradient]
    assert float(path.variance.max()) < 1e-20
    assert float(path.mean.abs().max()) < 1e-10
    plain = ek.gradient_variance(model, guide, x, params=params, gradients=("reparam",), **kwargs)["reparam"]
    assert float(plain.variance.max()) > 1e-6


def test_dreg_snr_does_not_decay_like_reparam(make_model) -> None:
    """For the guide, the pathwise IWAE gradient's SNR falls as K grows while DReG's does not
    (Rainforth et al. 2018; Tucker et al. 2018): at K = 64 DReG has the higher median SNR."""
    model, guide, x, _ = _setup(make_model)
    params = [guide.loc]
    stats = ek.gradient_variance(
        model, guide, x, params=params, gradients=("reparam", "dreg"), objective="iwae", samples=64, repeats=200
    )
    assert float(stats["dreg"].snr.median()) > 2 * float(stats["reparam"].snr.median())


def test_gradient_variance_arguments(make_model) -> None:
    model, guide, x, params = _setup(make_model)
    with pytest.raises(ValueError, match="repeats"):
        ek.gradient_variance(model, guide, x, params=params, repeats=1)
    with pytest.raises(ValueError, match="params"):
        ek.gradient_variance(model, guide, x, params=[])
    with pytest.raises(ValueError, match="requires_grad"):
        ek.gradient_variance(model, guide, x, params=[torch.zeros(2)])
    with pytest.raises(ValueError, match="dreg"):
        ek.gradient_variance(model, guide, x, params=params, gradients=("score",), objective="iwae")
