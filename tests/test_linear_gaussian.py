"""The linear-Gaussian oracle against closed forms computed independently with numpy / scipy.

Everything the rest of the suite trusts (log p(x), p(z|x), the exact ELBO, PPCA fits, the extra KL pairs,
detached copies of distributions) is checked here against an expectation that never calls elbokit: the
model's parameters are read off once and every expected value is computed from them in numpy. Exact
quantities are compared in float64 to 1e-10 (relative where the value can be large), far above the
~1e-13 round-off of the computations involved and far below any modelling error. Statistical checks use
``Z`` standard errors estimated from the same samples (seed policy in ``tests/conftest.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import stats
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
    Laplace,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    Uniform,
    kl_divergence,
)

from conftest import Z
from elbokit.distributions import detach_parameters  # importing elbokit.distributions registers the KL pairs
from elbokit.models import LinearGaussian

MakeModel = Callable[..., LinearGaussian]

SEEDS = [0, 1, 2]
# (data_dim D, latent_dim d): d = 1, D = 1, D = d and an over-complete d > D.
SHAPES = [(1, 1), (3, 1), (5, 2), (8, 3), (4, 4), (3, 5)]
NOISES = ["diagonal", "scalar"]


# ---- independent numpy references --------------------------------------------------------------------------
def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _params(model: LinearGaussian) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W, b, s^2) of a model as numpy, s^2 broadcast to (D,)."""
    w, b = _np(model.weight), _np(model.bias)
    s2 = np.broadcast_to(_np(model.noise_scale) ** 2, b.shape).copy()
    return w, b, s2


def _marginal_cov(w: np.ndarray, s2: np.ndarray) -> np.ndarray:
    return w @ w.T + np.diag(s2)


def _joint_posterior(w: np.ndarray, b: np.ndarray, s2: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""p(z|x) by conditioning the joint N((0, b), [[I, W^T], [W, W W^T + Psi]]) on x.

    mean = \Sigma_{zx} \Sigma_{xx}^{-1} (x - b), cov = \Sigma_{zz} - \Sigma_{zx} \Sigma_{xx}^{-1} \Sigma_{xz}.
    """
    d = w.shape[1]
    sigma_zz, sigma_zx, sigma_xx = np.eye(d), w.T, _marginal_cov(w, s2)
    gain = np.linalg.solve(sigma_xx, sigma_zx.T).T  # Sigma_zx Sigma_xx^{-1}: (d, D)
    mean = (x - b) @ gain.T  # (B, d)
    cov = sigma_zz - gain @ sigma_zx.T
    return mean, cov


def _gauss_kl(m0: np.ndarray, s0: np.ndarray, m1: np.ndarray, s1: np.ndarray) -> float:
    """KL(N(m0, S0) || N(m1, S1)) for one pair, the textbook formula."""
    d = m0.shape[-1]
    diff = m1 - m0
    trace = np.trace(np.linalg.solve(s1, s0))
    maha = diff @ np.linalg.solve(s1, diff)
    logdet1, logdet0 = np.linalg.slogdet(s1)[1], np.linalg.slogdet(s0)[1]
    return 0.5 * (trace + maha - d + logdet1 - logdet0)


def _q_moments(q: Distribution) -> tuple[np.ndarray, np.ndarray]:
    """(mean (B, d), covariance (B, d, d)) of a diagonal or full Gaussian q, read from its parameters."""
    if isinstance(q, Independent):
        loc, scale = _np(q.base_dist.loc), _np(q.base_dist.scale)
        return loc, np.einsum("bi,ij->bij", scale**2, np.eye(loc.shape[-1]))
    tril = _np(q.scale_tril)
    return _np(q.loc), tril @ np.swapaxes(tril, -1, -2)


def _random_q(g: torch.Generator, batch: int, d: int, family: str) -> Distribution:
    loc = torch.randn(batch, d, generator=g)
    if family == "diagonal":
        return Independent(Normal(loc, 0.3 + torch.rand(batch, d, generator=g)), 1)
    tril = torch.randn(batch, d, d, generator=g).tril(-1)
    tril = tril + torch.diag_embed(0.3 + torch.rand(batch, d, generator=g))
    return MultivariateNormal(loc, scale_tril=tril)


def _first(d: Distribution) -> Distribution:
    """The first member of a batch-(B,) diagonal or full Gaussian, as a Gaussian with batch ()."""
    if isinstance(d, Independent):
        return Independent(Normal(d.base_dist.loc[0], d.base_dist.scale[0]), 1)
    return MultivariateNormal(d.loc[0], scale_tril=d.scale_tril[0])


def _data(model: LinearGaussian, seed: int, batch: int = 6) -> torch.Tensor:
    """Data points around the model's offset (any x is a valid argument; these are not model samples)."""
    g = torch.Generator().manual_seed(1000 + seed)
    return model.bias.detach() + 2.0 * torch.randn(batch, model.data_dim, generator=g)


# ---- construction ------------------------------------------------------------------------------------------
def test_constructor_stores_parameters() -> None:
    """The model holds exactly the W, b, s it was given (s via its logarithm: round-off only)."""
    w, b, s = torch.randn(4, 2), torch.randn(4), torch.tensor([0.5, 1.0, 2.0, 3.0])
    model = LinearGaussian(w, b, s)
    assert (model.weight == w).all() and (model.bias == b).all()
    np.testing.assert_allclose(_np(model.noise_scale), _np(s), rtol=1e-14)
    assert (model.data_dim, model.latent_dim, model.event_shape) == (4, 2, torch.Size([4]))


# ---- log p(x) and p(z|x) -----------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize(("data_dim", "latent_dim"), SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_log_evidence_matches_scipy(
    make_model: MakeModel, seed: int, data_dim: int, latent_dim: int, noise: str
) -> None:
    """log p(x) = log N(x; b, W W^T + diag(s^2)) (scipy); 1e-10 relative: the low-rank form's round-off is
    ~1e-14."""
    model = make_model(seed, data_dim, latent_dim, noise)
    x = _data(model, seed)
    w, b, s2 = _params(model)
    expected = stats.multivariate_normal(b, _marginal_cov(w, s2)).logpdf(_np(x))
    got = model.log_evidence(x)
    assert got.shape == (x.shape[0],)
    np.testing.assert_allclose(_np(got), np.atleast_1d(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize(("data_dim", "latent_dim"), SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_posterior_matches_joint_conditioning(
    make_model: MakeModel, seed: int, data_dim: int, latent_dim: int, noise: str
) -> None:
    """p(z|x) (precision form in the code) equals the conditional of the joint Gaussian (covariance form
    here); entries are O(1), so 1e-10 absolute leaves room only for round-off."""
    model = make_model(seed, data_dim, latent_dim, noise)
    x = _data(model, seed)
    mean, cov = _joint_posterior(*_params(model), _np(x))
    post = model.posterior(x)
    assert isinstance(post, MultivariateNormal)
    assert post.batch_shape == (x.shape[0],) and post.event_shape == (latent_dim,)
    np.testing.assert_allclose(_np(post.loc), mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(_np(post.covariance_matrix), np.broadcast_to(cov, (x.shape[0], *cov.shape)),
                               rtol=1e-10, atol=1e-10)


# ---- the exact ELBO ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["diagonal", "full"])
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize(("data_dim", "latent_dim"), SHAPES)
def test_gap_is_kl_to_posterior(make_model: MakeModel, data_dim: int, latent_dim: int, noise: str,
                                family: str) -> None:
    """log p(x) - ELBO(q) = KL(q || p(z|x)) >= 0, with the KL and the posterior from numpy; values are O(10),
    compared to 1e-10 absolute."""
    model = make_model(3, data_dim, latent_dim, noise)
    x = _data(model, 3)
    q = _random_q(torch.Generator().manual_seed(11), x.shape[0], latent_dim, family)
    post_mean, post_cov = _joint_posterior(*_params(model), _np(x))
    q_mean, q_cov = _q_moments(q)
    expected = np.array([_gauss_kl(q_mean[i], q_cov[i], post_mean[i], post_cov) for i in range(x.shape[0])])
    gap = model.log_evidence(x) - model.exact_elbo(x, q)
    assert gap.shape == (x.shape[0],)
    np.testing.assert_allclose(_np(gap), expected, rtol=0, atol=1e-10)
    assert (gap > 0).all()  # a random q is never the posterior


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize(("data_dim", "latent_dim"), SHAPES)
def test_elbo_at_posterior_is_log_evidence(make_model: MakeModel, data_dim: int, latent_dim: int,
                                           noise: str) -> None:
    """ELBO(p(z|x)) = log p(x) (scipy), and a slightly perturbed posterior gives a strictly smaller ELBO:
    the bound is tight exactly at the posterior. 1e-10 relative."""
    model = make_model(4, data_dim, latent_dim, noise)
    x = _data(model, 4)
    w, b, s2 = _params(model)
    log_px = np.atleast_1d(stats.multivariate_normal(b, _marginal_cov(w, s2)).logpdf(_np(x)))
    post = model.posterior(x)
    np.testing.assert_allclose(_np(model.exact_elbo(x, post)), log_px, rtol=1e-10, atol=1e-12)
    nudged = MultivariateNormal(post.loc + 1e-3, scale_tril=post.scale_tril * 1.01)
    assert (model.exact_elbo(x, nudged) < torch.as_tensor(log_px)).all()


def _elbo_closed_form(w: np.ndarray, b: np.ndarray, s2: np.ndarray, x: np.ndarray, m: np.ndarray,
                      cov: np.ndarray) -> np.ndarray:
    r"""E_q[log p(x|z)] + E_q[log p(z)] + H[q] for q = N(m, S), term by term.

    E_q log p(x|z) = -1/2 sum_i [log 2 pi s_i^2 + ((x - W m - b)_i^2 + (W S W^T)_ii) / s_i^2],
    E_q log p(z) = -1/2 [d log 2 pi + m^T m + tr S], H[q] = 1/2 log det(2 pi e S).
    """
    d = w.shape[1]
    resid = x - m @ w.T - b  # (B, D)
    wsw_diag = np.einsum("ij,bjk,ik->bi", w, cov, w)  # diag(W S W^T): (B, D)
    e_log_lik = -0.5 * (np.log(2 * np.pi * s2).sum() + ((resid**2 + wsw_diag) / s2).sum(-1))
    e_log_prior = -0.5 * (d * np.log(2 * np.pi) + (m**2).sum(-1) + np.trace(cov, axis1=-2, axis2=-1))
    entropy = 0.5 * (d * np.log(2 * np.pi * np.e) + np.linalg.slogdet(cov)[1])
    return e_log_lik + e_log_prior + entropy


@pytest.mark.parametrize("family", ["diagonal", "full"])
@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize(("data_dim", "latent_dim"), SHAPES)
def test_exact_elbo_matches_closed_form(make_model: MakeModel, data_dim: int, latent_dim: int, noise: str,
                                        family: str) -> None:
    """exact_elbo equals the expected log-likelihood plus expected log-prior plus entropy (numpy), a different
    grouping of the same terms than the code's reconstruction - KL; O(10) values, 1e-10 absolute."""
    model = make_model(5, data_dim, latent_dim, noise)
    x = _data(model, 5)
    q = _random_q(torch.Generator().manual_seed(12), x.shape[0], latent_dim, family)
    expected = _elbo_closed_form(*_params(model), _np(x), *_q_moments(q))
    np.testing.assert_allclose(_np(model.exact_elbo(x, q)), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", ["diagonal", "full"])
def test_exact_elbo_broadcasts_one_q_over_the_batch(make_model: MakeModel, family: str) -> None:
    """A q with batch () is shared by every data point (the documented 'broadcastable' batch)."""
    model = make_model(6, 5, 2)
    x = _data(model, 6)
    q1 = _random_q(torch.Generator().manual_seed(13), 1, 2, family)
    q = _first(q1)
    m, cov = _q_moments(q1)
    expected = _elbo_closed_form(*_params(model), _np(x), np.repeat(m, 6, 0), np.repeat(cov, 6, 0))
    got = model.exact_elbo(x, q)
    assert got.shape == (6,)
    np.testing.assert_allclose(_np(got), expected, rtol=0, atol=1e-10)


# ---- sampling ----------------------------------------------------------------------------------------------
def test_sample_is_reproducible_under_a_generator(make_model: MakeModel) -> None:
    """The same generator seed gives identical draws; another seed gives different ones."""
    model = make_model(0)
    a = model.sample(50, generator=torch.Generator().manual_seed(5))
    b = model.sample(50, generator=torch.Generator().manual_seed(5))
    c = model.sample(50, generator=torch.Generator().manual_seed(6))
    assert a.x.shape == (50, 5) and a.z.shape == (50, 2)
    assert torch.equal(a.x, b.x) and torch.equal(a.z, b.z)
    assert not torch.equal(a.x, c.x)


def _cov_z_scores(u: np.ndarray, v: np.ndarray, expected: np.ndarray) -> np.ndarray:
    r"""|C_ij - expected_ij| / stderr_ij for the sample cross-covariance C = mean(u_c v_c^T), u_c, v_c centred.

    C_ij is a mean of n products p = u_c,i v_c,j, so stderr_ij = sd(p) / sqrt(n) (the O(1/n) effect of
    centring on the sample mean is negligible against the O(1/sqrt n) stderr).
    """
    n = u.shape[0]
    uc, vc = u - u.mean(0), v - v.mean(0)
    prods = uc[:, :, None] * vc[:, None, :]  # (n, Du, Dv)
    cov = prods.mean(0)
    stderr = prods.std(0, ddof=1) / math.sqrt(n)
    return np.abs(cov - expected) / stderr


@pytest.mark.parametrize("noise", NOISES)
def test_sample_moments(make_model: MakeModel, noise: str) -> None:
    """x has mean b and covariance W W^T + diag(s^2), z is N(0, I), and the residual x - W z - b is noise
    N(0, diag(s^2)) uncorrelated with z: every entry within Z standard errors (n = 200_000)."""
    model = make_model(8, 5, 2, noise)
    w, b, s2 = _params(model)
    draw = model.sample(200_000, generator=torch.Generator().manual_seed(9))
    x, z = _np(draw.x), _np(draw.z)
    n = x.shape[0]
    mean_z = np.abs(x.mean(0) - b) / (x.std(0, ddof=1) / math.sqrt(n))
    assert mean_z.max() < Z
    assert _cov_z_scores(x, x, _marginal_cov(w, s2)).max() < Z
    assert _cov_z_scores(z, z, np.eye(2)).max() < Z
    resid = x - z @ w.T - b
    assert _cov_z_scores(resid, resid, np.diag(s2)).max() < Z
    assert _cov_z_scores(resid, z, np.zeros((5, 2))).max() < Z


def test_sample_rejects_n_below_one(make_model: MakeModel) -> None:
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        make_model(0).sample(0)


# ---- probabilistic PCA -------------------------------------------------------------------------------------
def _ppca_reference(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Tipping & Bishop (1999): (b, W W^T, sigma^2, max mean log-likelihood) from the ML covariance."""
    n, data_dim = x.shape
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / n
    lam, u = np.linalg.eigh(cov)
    lam, u = lam[::-1], u[:, ::-1]
    sigma2 = lam[d:].mean()
    wwt = u[:, :d] @ np.diag(lam[:d] - sigma2) @ u[:, :d].T
    max_ll = -0.5 * (data_dim * np.log(2 * np.pi) + np.log(lam[:d]).sum() + (data_dim - d) * np.log(sigma2)
                     + data_dim)
    return mean, wwt, float(sigma2), float(max_ll)


@pytest.fixture(scope="module")
def ppca_data() -> torch.Tensor:
    """N = 4000 points from a scalar-noise model with D = 6, d = 2."""
    g = torch.Generator().manual_seed(21)
    w = 2.0 * torch.randn(6, 2, generator=g, dtype=torch.float64)
    true = LinearGaussian(w, torch.randn(6, generator=g, dtype=torch.float64), 0.7)
    return true.sample(4000, generator=g).x


@pytest.mark.parametrize("latent_dim", [1, 2, 3])
def test_fit_ppca_matches_closed_form(ppca_data: torch.Tensor, latent_dim: int) -> None:
    """b = mean, sigma^2 = mean discarded eigenvalue, W W^T = U_d (Lambda_d - sigma^2 I) U_d^T (W itself is
    unique only up to rotation), and the mean log p(x) at the fit is the closed-form maximum; 1e-10."""
    mean, wwt, sigma2, max_ll = _ppca_reference(_np(ppca_data), latent_dim)
    fit = LinearGaussian.fit_ppca(ppca_data, latent_dim)
    assert fit.weight.shape == (6, latent_dim) and fit.noise_scale.shape == ()
    np.testing.assert_allclose(_np(fit.bias), mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(fit.noise_scale.detach()) ** 2, sigma2, rtol=1e-10)
    np.testing.assert_allclose(_np(fit.weight @ fit.weight.T), wwt, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(float(fit.log_evidence(ppca_data).detach().mean()), max_ll, rtol=1e-10)


def _mean_ll(w: torch.Tensor, b: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> float:
    return float(LinearGaussian(w, b, s).log_evidence(x).detach().mean())


def test_fit_ppca_is_a_maximum(ppca_data: torch.Tensor) -> None:
    """Small perturbations of W, b or the scalar s in random directions (both signs) only lower the mean
    log-likelihood, while rotating W leaves it unchanged (to 1e-10): the fit is a maximum, W unique up to R.
    A 1e-3 step lowers it by ~1e-6, far above round-off."""
    fit = LinearGaussian.fit_ppca(ppca_data, 2)
    w, b, s = fit.weight.detach(), fit.bias.detach(), fit.noise_scale.detach()
    best = _mean_ll(w, b, s, ppca_data)
    g = torch.Generator().manual_seed(22)
    eps = 1e-3
    for _ in range(3):
        dw, db = torch.randn(w.shape, generator=g), torch.randn(b.shape, generator=g)
        for sign in (1.0, -1.0):
            assert _mean_ll(w + sign * eps * dw, b, s, ppca_data) < best
            assert _mean_ll(w, b + sign * eps * db, s, ppca_data) < best
            assert _mean_ll(w, b, s * math.exp(sign * eps), ppca_data) < best
    angle = 0.7
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    assert abs(_mean_ll(w @ rotation, b, s, ppca_data) - best) < 1e-10


@pytest.mark.parametrize(("shape", "latent_dim", "message"), [
    ((10, 4), 0, "latent_dim must be in [1, 3], got 0"),
    ((10, 4), 4, "latent_dim must be in [1, 3], got 4"),
    ((10,), 1, "x must have shape (N, D), got shape (10,)"),
    ((1, 4), 2, "need at least 2 data points, got 1"),
])
def test_fit_ppca_rejects_bad_input(shape: tuple[int, ...], latent_dim: int, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        LinearGaussian.fit_ppca(torch.randn(shape), latent_dim)


# ---- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["log_evidence", "posterior", "exact_elbo"])
@pytest.mark.parametrize("x_shape", [(3, 4), (3, 6), (4,)])
def test_wrong_x_width_names_both_shapes(make_model: MakeModel, method: str, x_shape: tuple[int, ...]) -> None:
    """x of the wrong width raises a ValueError naming the expected (B, 5) and the given shape."""
    model = make_model(0)  # D = 5, d = 2
    args: tuple[object, ...] = (model.prior(),) if method == "exact_elbo" else ()
    with pytest.raises(ValueError, match=re.escape(f"(B, 5), got shape {x_shape}")):
        getattr(model, method)(torch.zeros(x_shape), *args)


@pytest.mark.parametrize(("weight", "bias", "scale", "message"), [
    (torch.ones(4), torch.zeros(4), 1.0, "weight must have shape (D, d), got shape (4,)"),
    (torch.ones(4, 2, 1), torch.zeros(4), 1.0, "weight must have shape (D, d), got shape (4, 2, 1)"),
    (torch.ones(4, 2), torch.zeros(3), 1.0, "bias must have shape (4,), got shape (3,)"),
    (torch.ones(4, 2), torch.zeros(4, 1), 1.0, "bias must have shape (4,), got shape (4, 1)"),
    (torch.ones(4, 2), torch.zeros(4), 0.0, "noise_scale must be > 0"),
    (torch.ones(4, 2), torch.zeros(4), -1.0, "noise_scale must be > 0"),
    (torch.ones(4, 2), torch.zeros(4), torch.tensor([1.0, 1.0, 0.0, 1.0]), "noise_scale must be > 0"),
    (torch.ones(4, 2), torch.zeros(4), torch.ones(3), "noise_scale must be a scalar or have shape (4,), got (3,)"),
    (torch.ones(4, 2), torch.zeros(4), torch.ones(4, 1), "noise_scale must be a scalar or have shape (4,)"),
])
def test_constructor_rejects_bad_parameters(weight: torch.Tensor, bias: torch.Tensor, scale: object,
                                            message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        LinearGaussian(weight, bias, scale)  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [
    Independent(Laplace(torch.zeros(3, 2), torch.ones(3, 2)), 1),
    Normal(torch.zeros(3, 2), torch.ones(3, 2)),  # a Gaussian, but without its event dimension declared
    Independent(Uniform(torch.zeros(3, 2), torch.ones(3, 2)), 1),
], ids=["laplace", "bare-normal", "uniform"])
def test_exact_elbo_rejects_non_gaussian_q(make_model: MakeModel, q: Distribution) -> None:
    with pytest.raises(TypeError, match="exact_elbo needs a Gaussian q"):
        make_model(0).exact_elbo(torch.zeros(3, 5), q)


@pytest.mark.parametrize("family", ["diagonal", "full"])
def test_exact_elbo_rejects_wrong_event_shape(make_model: MakeModel, family: str) -> None:
    """A q over 3 latents for a model with d = 2 raises the documented ValueError."""
    q = _random_q(torch.Generator().manual_seed(0), 4, 3, family)
    with pytest.raises(ValueError, match=re.escape("q must have event shape (2,), got (3,)")):
        make_model(0).exact_elbo(torch.zeros(4, 5), q)


# ---- extra KL pairs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("shared_p", [False, True], ids=["batched-p", "shared-p"])
@pytest.mark.parametrize("direction", ["mvn||diag", "diag||mvn"])
def test_mixed_gaussian_kl_matches_numpy(d: int, shared_p: bool, direction: str) -> None:
    """KL between a full and a diagonal Gaussian (both orders), including a p with batch () broadcast
    against q's batch (4,) (as in KL(q || prior)), equals the numpy formula; O(1) values, 1e-10."""
    g = torch.Generator().manual_seed(31)
    full, diag = _random_q(g, 4, d, "full"), _random_q(g, 4, d, "diagonal")
    q, p = (full, diag) if direction == "mvn||diag" else (diag, full)
    (q_mean, q_cov), (p_mean, p_cov) = _q_moments(q), _q_moments(p)
    if shared_p:
        p, p_mean, p_cov = _first(p), np.repeat(p_mean[:1], 4, 0), np.repeat(p_cov[:1], 4, 0)
    expected = np.array([_gauss_kl(q_mean[i], q_cov[i], p_mean[i], p_cov[i]) for i in range(4)])
    got = kl_divergence(q, p)
    assert got.shape == (4,)
    np.testing.assert_allclose(_np(got), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", ["mvn||laplace", "laplace||mvn"])
def test_mixed_kl_with_non_normal_base_is_not_implemented(order: str) -> None:
    """The mixed pair covers Independent(Normal) only: another base raises NotImplementedError from
    torch.distributions.kl_divergence rather than a wrong number."""
    mvn = MultivariateNormal(torch.zeros(3), torch.eye(3))
    laplace = Independent(Laplace(torch.zeros(3), torch.ones(3)), 1)
    q, p = (mvn, laplace) if order == "mvn||laplace" else (laplace, mvn)
    with pytest.raises(NotImplementedError):
        kl_divergence(q, p)


# ---- detached copies of distributions ----------------------------------------------------------------------
def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.clone().requires_grad_(True)


def _family(name: str) -> tuple[Distribution, list[torch.Tensor]]:
    """A distribution over (3, 2)-shaped draws built from leaf tensors that require grad, and those leaves."""
    g = torch.Generator().manual_seed(41)
    loc = _leaf(torch.randn(3, 2, generator=g))
    scale = _leaf(0.5 + torch.rand(3, 2, generator=g))
    tril = _leaf(torch.randn(3, 2, 2, generator=g).tril(-1) + torch.diag_embed(0.5 + torch.rand(3, 2, generator=g)))
    factor = _leaf(torch.randn(3, 2, 1, generator=g))
    if name == "normal":
        return Normal(loc, scale), [loc, scale]
    if name == "independent-normal":
        return Independent(Normal(loc, scale), 1), [loc, scale]
    if name == "mvn":
        return MultivariateNormal(loc, scale_tril=tril), [loc, tril]
    if name == "mvn-precision":
        precision = tril @ tril.mT
        return MultivariateNormal(loc, precision_matrix=precision), [loc, tril]
    if name == "low-rank-mvn":
        return LowRankMultivariateNormal(loc, factor, scale), [loc, factor, scale]
    if name == "laplace":
        return Laplace(loc, scale), [loc, scale]
    if name == "bernoulli":
        return Bernoulli(logits=loc), [loc]
    raise AssertionError(name)


FAMILIES = ["normal", "independent-normal", "mvn", "mvn-precision", "low-rank-mvn", "laplace", "bernoulli"]
REPARAMETERIZED = [f for f in FAMILIES if f != "bernoulli"]


@pytest.mark.parametrize("name", FAMILIES)
def test_detached_copy_has_same_density_and_no_grad(name: str) -> None:
    """The copy has the original's type, shapes and log_prob (1e-12: same formula, same numbers), and none
    of its parameters carries gradient."""
    d, _ = _family(name)
    copy = detach_parameters(d)
    assert type(copy) is type(d)
    assert (copy.batch_shape, copy.event_shape) == (d.batch_shape, d.event_shape)
    value = d.sample((5,))
    np.testing.assert_allclose(_np(copy.log_prob(value)), _np(d.log_prob(value)), rtol=1e-12, atol=1e-12)
    assert not copy.log_prob(value).requires_grad
    for param in copy.arg_constraints:
        assert not getattr(copy, param).requires_grad, param


@pytest.mark.parametrize("name", REPARAMETERIZED)
def test_detached_copy_keeps_the_pathwise_gradient(name: str) -> None:
    r"""d/dphi log q_{stop(phi)}(z_phi) for z = rsample() of the original is the pathwise part of the total
    derivative: d/dphi log q_phi(z_phi) minus the score term d/dphi log q_phi(z)|_{z fixed}, both taken on the
    original (autograd, no detaching); equal to 1e-10, and not zero."""
    d, leaves = _family(name)
    z = d.rsample((4,))
    total = torch.autograd.grad(d.log_prob(z).sum(), leaves, retain_graph=True)
    score = torch.autograd.grad(d.log_prob(z.detach()).sum(), leaves, retain_graph=True)
    got = torch.autograd.grad(detach_parameters(d).log_prob(z).sum(), leaves)
    for leaf, g_total, g_score, g in zip(leaves, total, score, got, strict=True):
        assert g is not None and g.shape == leaf.shape
        np.testing.assert_allclose(_np(g), _np(g_total - g_score), rtol=1e-10, atol=1e-10)
    assert any(bool((g != 0).any()) for g in got)


def test_detach_after_lazy_parameter_was_computed() -> None:
    """Using a Bernoulli(logits=...) (its mean materialises ``probs``) must not break detaching it."""
    d = Bernoulli(logits=_leaf(torch.randn(3)))
    _ = d.mean
    copy = detach_parameters(d)
    value = torch.tensor([0.0, 1.0, 1.0])
    np.testing.assert_allclose(_np(copy.log_prob(value)), _np(d.log_prob(value)), rtol=1e-12)
