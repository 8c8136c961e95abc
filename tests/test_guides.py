"""Gaussian guides: shapes, the documented parametrisation, positive-definite covariances, gradient flow,
round trips and argument checks.

Expected parameters are computed here with numpy from the raw values (softplus as ``logaddexp(0, r)``), so a
wrong layout or transform shows up as a numeric mismatch; exact comparisons are float64 to 1e-12 (a single
softplus / inverse-softplus round trip costs ~1e-15).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Distribution, Independent, Laplace, MultivariateNormal, Normal

from elbokit import AmortizedGaussian, LocalGaussian

COVARIANCES = ["diagonal", "full"]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float64)


def _softplus(r: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, r)


def _covariance(q: Distribution) -> torch.Tensor:
    """(B, d, d) covariance of a diagonal or full Gaussian q."""
    if isinstance(q, Independent):
        return torch.diag_embed(q.base_dist.scale.square())
    return q.covariance_matrix


def _check_shapes(q: Distribution, batch: int, d: int, covariance: str) -> None:
    assert isinstance(q, Independent if covariance == "diagonal" else MultivariateNormal)
    if covariance == "diagonal":
        assert isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1
    assert q.batch_shape == (batch,) and q.event_shape == (d,)
    z = q.rsample((7,))
    assert z.shape == (7, batch, d)
    assert q.log_prob(z).shape == (7, batch)


def _assert_positive_definite(q: Distribution) -> None:
    cov = _covariance(q)
    np.testing.assert_allclose(_np(cov), _np(cov.mT), rtol=0, atol=1e-12)
    assert (torch.linalg.eigvalsh(cov) > 0).all()


# ---- AmortizedGaussian -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("latent_dim", "covariance", "expected"), [
    (1, "diagonal", 2), (3, "diagonal", 6), (1, "full", 2), (2, "full", 5), (3, "full", 9), (5, "full", 20),
])
def test_output_size(latent_dim: int, covariance: str, expected: int) -> None:
    """d means plus d scales (diagonal) or d (d + 1) / 2 Cholesky entries (full)."""
    assert AmortizedGaussian.output_size(latent_dim, covariance) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("latent_dim", [1, 3])
def test_mlp_guide_shapes(covariance: str, latent_dim: int) -> None:
    """mlp(...) builds Flatten, then Linear layers with the activation between (not after the last), ending
    at output_size; its q has batch (B,), event (d,), samples (K, B, d) and a positive-definite covariance.
    Inputs with extra event dimensions are flattened."""
    guide = AmortizedGaussian.mlp(6, latent_dim, hidden=(8, 5), covariance=covariance)  # type: ignore[arg-type]
    layers = list(guide.encoder)
    assert isinstance(layers[0], nn.Flatten)
    assert [type(m) for m in layers[1:]] == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert [m.out_features for m in layers if isinstance(m, nn.Linear)] == [
        8, 5, AmortizedGaussian.output_size(latent_dim, covariance)]  # type: ignore[arg-type]
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0))
    q = guide(x)
    _check_shapes(q, 4, latent_dim, covariance)
    _assert_positive_definite(q)


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("latent_dim", [1, 3])
def test_amortized_layout(covariance: str, latent_dim: int) -> None:
    """With an identity encoder, the raw output vector maps to q as documented: d means first, then
    softplus(raw) + min_scale scales (diagonal), or the row-major lower triangle of L with a softplus + min_scale
    diagonal (full), S = L L^T; numpy reference, 1e-12."""
    d, min_scale = latent_dim, 0.05
    n_out = AmortizedGaussian.output_size(d, covariance)  # type: ignore[arg-type]
    raw = 2.0 * torch.randn(3, n_out, generator=torch.Generator().manual_seed(1))
    q = AmortizedGaussian(nn.Identity(), d, covariance=covariance, min_scale=min_scale)(raw)  # type: ignore[arg-type]
    r = _np(raw)
    if covariance == "diagonal":
        np.testing.assert_allclose(_np(q.base_dist.loc), r[:, :d], rtol=0, atol=1e-12)
        np.testing.assert_allclose(_np(q.base_dist.scale), _softplus(r[:, d:]) + min_scale, rtol=1e-12)
        return
    tril = np.zeros((3, d, d))
    k = d
    for i in range(d):
        for j in range(i + 1):
            tril[:, i, j] = _softplus(r[:, k]) + min_scale if i == j else r[:, k]
            k += 1
    np.testing.assert_allclose(_np(q.loc), r[:, :d], rtol=0, atol=1e-12)
    np.testing.assert_allclose(_np(q.scale_tril), tril, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(q.covariance_matrix), tril @ tril.transpose(0, 2, 1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_min_scale_floor(covariance: str) -> None:
    """Raw scales of -1e3 (softplus underflows to 0) give exactly the floor min_scale (1e-12); random raw
    scales stay at or above it; the covariance stays positive definite even at the floor."""
    d, min_scale = 3, 0.1
    n_out = AmortizedGaussian.output_size(d, covariance)  # type: ignore[arg-type]
    guide = AmortizedGaussian(nn.Identity(), d, covariance=covariance, min_scale=min_scale)  # type: ignore[arg-type]
    floor_row = torch.zeros(1, n_out)
    diagonal = range(d, 2 * d) if covariance == "diagonal" else [d + i * (i + 1) // 2 + i for i in range(d)]
    floor_row[0, list(diagonal)] = -1e3  # every raw scale (row-major Cholesky diagonal for full)
    raw = torch.cat([floor_row, 3.0 * torch.randn(50, n_out, generator=torch.Generator().manual_seed(2))])
    q = guide(raw)
    scales = q.base_dist.scale if covariance == "diagonal" else q.scale_tril.diagonal(dim1=-2, dim2=-1)
    np.testing.assert_allclose(_np(scales[0]), np.full(d, min_scale), rtol=1e-12)
    assert (scales >= min_scale).all()
    _assert_positive_definite(q)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_amortized_gradients_reach_every_parameter(covariance: str) -> None:
    """A loss of reparameterised samples, sum (z - c)^2, back-propagates a finite, nonzero gradient to every
    entry of every encoder parameter (each output coordinate feeds the mean or the scale)."""
    torch.manual_seed(3)  # the MLP's initialisation
    guide = AmortizedGaussian.mlp(4, 3, hidden=(6,), covariance=covariance)  # type: ignore[arg-type]
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(4))
    z = guide(x).rsample((8,))
    ((z - 0.3) ** 2).sum().backward()
    for name, param in guide.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all() and (param.grad != 0).all(), name


def test_amortized_rejects_wrong_encoder_width() -> None:
    """An encoder whose width is not output_size is reported with both numbers."""
    guide = AmortizedGaussian(nn.Identity(), 2, covariance="full")
    with pytest.raises(ValueError, match=re.escape("must output 5 values per point, got 4")):
        guide(torch.zeros(3, 4))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"latent_dim": 2, "covariance": "banana"}, "covariance must be 'diagonal' or 'full', got 'banana'"),
    ({"latent_dim": 0}, "latent_dim must be >= 1, got 0"),
    ({"latent_dim": -1}, "latent_dim must be >= 1, got -1"),
])
def test_amortized_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AmortizedGaussian(nn.Identity(), **kwargs)  # type: ignore[arg-type]


def test_output_size_rejects_unknown_covariance() -> None:
    with pytest.raises(ValueError, match="got 'banana'"):
        AmortizedGaussian.output_size(2, "banana")  # type: ignore[arg-type]


# ---- LocalGaussian -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("covariance", COVARIANCES)
def test_local_initialisation_and_shapes(covariance: str) -> None:
    """q_n starts at init_loc with covariance init_scale^2 I (1e-12), batch (N,), event (d,), for any x of
    batch N."""
    init_loc = torch.randn(5, 3, generator=torch.Generator().manual_seed(5))
    guide = LocalGaussian(5, 3, covariance=covariance, init_loc=init_loc, init_scale=0.4)  # type: ignore[arg-type]
    q = guide(torch.zeros(5, 7))
    _check_shapes(q, 5, 3, covariance)
    np.testing.assert_allclose(_np(q.mean), _np(init_loc), rtol=0, atol=1e-12)
    np.testing.assert_allclose(_np(_covariance(q)), np.broadcast_to(0.16 * np.eye(3), (5, 3, 3)), rtol=0,
                               atol=1e-12)
    _assert_positive_definite(q)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_local_select(covariance: str) -> None:
    """select(index) gives the rows index of the full batch (repeats and any order allowed)."""
    guide = LocalGaussian(6, 2, covariance=covariance)  # type: ignore[arg-type]
    with torch.no_grad():
        g = torch.Generator().manual_seed(6)
        guide.loc.copy_(torch.randn(guide.loc.shape, generator=g))
        guide.raw_scale.copy_(torch.randn(guide.raw_scale.shape, generator=g))
    index = torch.tensor([4, 0, 4, 2])
    full, sub = guide.distribution(), guide.select(index)
    _check_shapes(sub, 4, 2, covariance)
    np.testing.assert_allclose(_np(sub.mean), _np(full.mean[index]), rtol=0, atol=0)
    np.testing.assert_allclose(_np(_covariance(sub)), _np(_covariance(full)[index]), rtol=0, atol=0)


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_local_gradients_reach_every_used_parameter(covariance: str) -> None:
    """sum (z - c)^2 of reparameterised samples gives a nonzero gradient on every mean and on every scale
    entry that defines q (all of them for diagonal, the lower triangle for full); the strictly upper triangle
    of the full raw_scale is unused by construction, so its gradient is exactly 0."""
    guide = LocalGaussian(4, 3, covariance=covariance, init_scale=0.7)  # type: ignore[arg-type]
    z = guide(torch.zeros(4, 2)).rsample((8,))
    ((z - 0.3) ** 2).sum().backward()
    assert guide.loc.grad is not None and (guide.loc.grad != 0).all()
    grad = guide.raw_scale.grad
    assert grad is not None and torch.isfinite(grad).all()
    if covariance == "diagonal":
        assert (grad != 0).all()
    else:
        lower = torch.ones(3, 3, dtype=torch.bool).tril()
        assert (grad[:, lower] != 0).all()
        assert (grad[:, ~lower] == 0).all()


def _random_tril(g: torch.Generator, batch: int, d: int) -> torch.Tensor:
    diag = 0.01 + 5.0 * torch.rand(batch, d, generator=g)  # scales from 0.01 to 5: both softplus regimes
    return torch.randn(batch, d, d, generator=g).tril(-1) + torch.diag_embed(diag)


@pytest.mark.parametrize("source", ["diagonal", "full", "full-shared-covariance"])
def test_from_distribution_round_trip(source: str) -> None:
    """from_distribution(q) reproduces q's type, loc and covariance to 1e-12, including an MVN given by its
    precision with one covariance shared by the batch (like LinearGaussian.posterior); the guide's parameters
    are fresh leaves, so training the guide cannot move q."""
    g = torch.Generator().manual_seed(7)
    loc = torch.randn(5, 3, generator=g).requires_grad_(True)
    if source == "diagonal":
        q: Distribution = Independent(Normal(loc, 0.01 + 5.0 * torch.rand(5, 3, generator=g)), 1)
    elif source == "full":
        q = MultivariateNormal(loc, scale_tril=_random_tril(g, 5, 3))
    else:
        tril = _random_tril(g, 1, 3)[0]
        q = MultivariateNormal(loc, precision_matrix=torch.linalg.inv(tril @ tril.T))
    guide = LocalGaussian.from_distribution(q)
    assert guide.num_points == 5 and guide.covariance == ("diagonal" if source == "diagonal" else "full")
    back = guide(torch.zeros(5, 1))
    assert type(back) is type(q) and back.batch_shape == (5,) and back.event_shape == (3,)
    np.testing.assert_allclose(_np(back.mean), _np(q.mean), rtol=0, atol=1e-12)
    np.testing.assert_allclose(_np(_covariance(back)), _np(_covariance(q).expand(5, 3, 3)), rtol=1e-12,
                               atol=1e-12)
    assert guide.loc.is_leaf and guide.loc.requires_grad
    with torch.no_grad():
        guide.loc.add_(1.0)
    assert not torch.equal(guide.loc, loc)  # a copy, not a view of q's loc


def test_from_distribution_rejects_non_gaussian() -> None:
    with pytest.raises(TypeError, match="got Independent"):
        LocalGaussian.from_distribution(Independent(Laplace(torch.zeros(2, 3), torch.ones(2, 3)), 1))


def test_local_rejects_wrong_batch() -> None:
    """Calling a guide of N = 4 points with x of batch 6 is an error naming both sizes (and select)."""
    guide = LocalGaussian(4, 2)
    with pytest.raises(ValueError, match=r"holds 4 data points; x has batch 6.*select\(index\)"):
        guide(torch.zeros(6, 3))


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((3, 2), {"covariance": "banana"}, "covariance must be 'diagonal' or 'full', got 'banana'"),
    ((3, 0), {}, "num_points and latent_dim must be >= 1, got 3 and 0"),
    ((0, 2), {}, "num_points and latent_dim must be >= 1, got 0 and 2"),
    ((3, 2), {"init_scale": 0.0}, "init_scale must be > 0, got 0.0"),
    ((3, 2), {"init_scale": -1.0}, "init_scale must be > 0, got -1.0"),
    ((3, 2), {"init_loc": torch.zeros(2, 3)}, "init_loc must have shape (3, 2), got (2, 3)"),
])
def test_local_rejects_bad_arguments(args: tuple[int, int], kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        LocalGaussian(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_local_gaussian_lives_on_the_device_of_its_initial_means(covariance: str) -> None:
    """Every parameter follows init_loc's device (checked with the meta device, which needs no GPU)."""
    guide = LocalGaussian(3, 2, covariance=covariance, init_loc=torch.zeros(3, 2, device="meta"))  # type: ignore[arg-type]
    assert {p.device.type for p in guide.parameters()} == {"meta"}
