"""Disentanglement metrics (MIG, DCI, FactorVAE) on synthetic factors with known answers.

Four factors with 3, 5, 8 and 10 values, N = 5000 points, seeded. Three codes:

* aligned: each factor is one latent (in a permuted order) through a monotone map (affine, or exp(v / 4)),
  plus noise of std 1e-3, far below the spacing of the values, so each latent identifies its factor;
* random: standard normal latents independent of the factors;
* mixed: the standardised factors rotated by a random orthogonal matrix, so each latent mixes all factors.

Thresholds for random codes: the histogram estimate of I(z_j; v_k) is biased up by about
(B - 1)(V - 1) / (2N) <= 19 * 9 / 10000 ~ 0.017 nats (Miller 1955) and all latents share this bias, so the
top-two gap is of the order of its fluctuation, divided by H(v_k) >= log 3 ~ 1.1 nats: MIG < 0.05 leaves a
margin of 3. Importances of latents that carry nothing are spread near-uniformly over the latents (a forest
splits on each alike), so D and C are near 0; < 0.2 leaves room for the split. The FactorVAE vote of random
codes is independent of the factor: the held-out accuracy is 1 / F in expectation, with standard error
sqrt(p(1 - p) / 400) for 400 held-out votes; the bound is Z standard errors above chance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import entropy
from sklearn.metrics import mutual_info_score
from torch import Tensor

from conftest import Z
from elbokit.diagnostics.disentanglement import (
    DCI,
    MIG,
    FactorVAEScore,
    dci,
    dci_scores,
    factor_vae_score,
    histogram_discretize,
    mig,
)

N = 5000
SIZES = (3, 5, 8, 10)
PERMUTATION = (2, 0, 3, 1)  # latent j carries factor PERMUTATION[j]


@pytest.fixture(scope="module")
def data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    factors = torch.stack([torch.randint(s, (N,), generator=g) for s in SIZES], dim=1)  # (N, F)
    v = factors[:, list(PERMUTATION)].to(torch.float64)
    aligned = torch.stack([0.5 * v[:, 0] + 1, torch.exp(v[:, 1] / 4), -2 * v[:, 2] + 3, v[:, 3]], dim=1)
    aligned = aligned + 1e-3 * torch.randn(N, 4, generator=g, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    mixed = ((v - v.mean(0)) / v.std(0)) @ rotation.T
    return {
        "factors": factors,
        "aligned": aligned,
        "random": torch.randn(N, 4, generator=g, dtype=torch.float64),
        "mixed": mixed,
    }


@pytest.fixture(scope="module")
def scores(data: dict[str, Tensor]) -> dict[str, tuple[MIG, DCI, FactorVAEScore]]:
    return {
        name: (mig(data[name], data["factors"]), dci(data[name], data["factors"]),
               factor_vae_score(data[name], data["factors"]))
        for name in ("aligned", "random", "mixed")
    }  # fmt: skip


def test_aligned_codes_score_high(scores: dict[str, tuple[MIG, DCI, FactorVAEScore]]) -> None:
    m, d, f = scores["aligned"]
    assert m.value > 0.9 and m.skipped == 0
    # the top latent of each factor is the one that carries it
    assert m.mutual_information.argmax(0).tolist() == [PERMUTATION.index(k) for k in range(len(SIZES))]
    assert float((m.mutual_information.max(0).values - m.entropy).abs().max()) < 1e-12  # I(z_j; v_k) = H(v_k)
    assert d.disentanglement > 0.9 and d.completeness > 0.9 and d.informativeness > 0.99
    assert f.value > 0.95 and f.active_dims == [0, 1, 2, 3]


def test_random_codes_score_near_zero(scores: dict[str, tuple[MIG, DCI, FactorVAEScore]]) -> None:
    m, d, f = scores["random"]
    assert m.value < 0.05
    assert d.disentanglement < 0.2 and d.completeness < 0.2
    chance = 1 / len(SIZES)
    n_test = 400  # votes=800: half train the classifier
    assert d.informativeness < chance + 0.1  # guessing among >= 3 values
    assert f.value < chance + Z * math.sqrt(chance * (1 - chance) / n_test)


def test_mixed_codes_score_lower(scores: dict[str, tuple[MIG, DCI, FactorVAEScore]]) -> None:
    aligned, mixed = scores["aligned"], scores["mixed"]
    assert mixed[0].value < aligned[0].value - 0.3
    assert mixed[1].disentanglement < aligned[1].disentanglement - 0.3
    assert mixed[1].informativeness > 0.9  # the information is all there, only not aligned


def test_dci_lasso(data: dict[str, Tensor]) -> None:
    aligned = dci(data["aligned"], data["factors"], regressor="lasso")
    mixed = dci(data["mixed"], data["factors"], regressor="lasso")
    assert aligned.disentanglement > 0.9 and aligned.completeness > 0.9
    assert mixed.disentanglement < aligned.disentanglement - 0.3
    np.testing.assert_allclose(aligned.importance.sum(0).numpy(), 1.0, rtol=0, atol=1e-12)


def test_mig_against_numpy_reference(data: dict[str, Tensor]) -> None:
    """I(z_j; v_k) from numpy's histogram edges and scikit-learn's mutual_info_score, H(v_k) from scipy."""
    g = torch.Generator().manual_seed(3)
    z = data["mixed"] + 0.3 * torch.randn(N, 4, generator=g, dtype=torch.float64)
    factors = data["factors"] * 7  # sparse values: MI depends on the partition only
    bins = 13
    m = mig(z, factors, bins=bins)
    z_np, f_np = z.numpy(), factors.numpy()
    binned = np.stack([np.digitize(col, np.histogram(col, bins)[1][:-1]) for col in z_np.T], axis=1)  # 1..bins
    np.testing.assert_array_equal(binned - 1, histogram_discretize(z, bins=bins).numpy())
    reference = np.array([[mutual_info_score(binned[:, j], f_np[:, k]) for k in range(4)] for j in range(4)])
    np.testing.assert_allclose(m.mutual_information.numpy(), reference, rtol=0, atol=1e-6)
    h = np.array([entropy(np.unique(col, return_counts=True)[1]) for col in f_np.T])
    np.testing.assert_allclose(m.entropy.numpy(), h, rtol=0, atol=1e-12)
    top = np.sort(reference, axis=0)[::-1]
    per_factor = (top[0] - top[1]) / h
    np.testing.assert_allclose(m.per_factor.numpy(), per_factor, rtol=0, atol=1e-6)
    assert math.isclose(m.value, per_factor.mean(), abs_tol=1e-6)


def test_dci_scores_against_hand_entropies() -> None:
    r = torch.tensor([[0.8, 0.1, 0.0], [0.2, 0.0, 0.5], [0.0, 0.9, 0.5], [0.0, 0.0, 0.0]])  # (d=4, F=3)
    d_j, c_k, d, c = dci_scores(r)
    rn = r.numpy()
    rows = rn[:3]  # the last latent has no importance: ρ = 0
    expected_d_j = np.r_[1 - entropy(rows.T, base=3), 0.0]  # scipy normalises each column of rows.T
    expected_c_k = 1 - entropy(rn, base=4)
    rho = rn.sum(1) / rn.sum()
    np.testing.assert_allclose(d_j.numpy(), expected_d_j, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_k.numpy(), expected_c_k, rtol=0, atol=1e-12)
    assert math.isclose(d, float((rho * expected_d_j).sum()), abs_tol=1e-12)
    assert math.isclose(c, float(expected_c_k.mean()), abs_tol=1e-12)
    # the extremes: a permutation is perfectly disentangled and complete; a uniform matrix not at all
    assert dci_scores(torch.eye(3)[[2, 0, 1]])[2:] == pytest.approx((1.0, 1.0), abs=1e-12)
    assert dci_scores(torch.ones(3, 3))[2:] == pytest.approx((0.0, 0.0), abs=1e-12)
    # a zero column (a constant factor) is nan and left out of C; a single factor gives D = 1
    d_j, c_k, d, c = dci_scores(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert math.isnan(c_k[1]) and c == pytest.approx(0.0, abs=1e-12) and d == pytest.approx(1.0)
    assert dci_scores(torch.tensor([[0.3], [0.7]]))[2] == 1.0


def test_constant_factor_is_skipped_and_collapsed_latent_pruned(data: dict[str, Tensor]) -> None:
    factors = torch.cat([data["factors"], torch.full((N, 1), 4)], dim=1)  # a fifth factor that never varies
    z = torch.cat([data["aligned"], torch.full((N, 1), 2.0) + 1e-6 * data["random"][:, :1]], dim=1)  # collapsed
    m = mig(z, factors)
    assert m.skipped == 1 and math.isnan(m.per_factor[4]) and m.entropy[4] == 0 and m.value > 0.9
    d = dci(z, factors)
    assert d.skipped == 1 and bool((d.importance[:, 4] == 0).all()) and d.disentanglement > 0.9
    f = factor_vae_score(z, factors)
    assert f.active_dims == [0, 1, 2, 3] and f.value > 0.95


def test_factor_vae_is_seeded(data: dict[str, Tensor]) -> None:
    a = factor_vae_score(data["random"], data["factors"], votes=200, seed=1)
    b = factor_vae_score(data["random"], data["factors"], votes=200, seed=1)
    assert a == b


@pytest.mark.parametrize(
    ("z", "factors", "kwargs", "match"),
    [
        (torch.randn(10), torch.zeros(10, 2, dtype=torch.long), {}, "z must be a floating-point tensor"),
        (torch.randn(10, 2), torch.zeros(10, 2), {}, "factors must be an integer tensor"),
        (torch.randn(10, 2), torch.zeros(9, 2, dtype=torch.long), {}, "same number of points"),
        (torch.randn(1, 2), torch.zeros(1, 2, dtype=torch.long), {}, "at least 2 points"),
        (torch.tensor([[0.0, math.nan], [1.0, 2.0]]), torch.zeros(2, 1, dtype=torch.long), {}, "finite"),
        (torch.randn(2, 2), torch.tensor([[0], [-1]]), {}, "non-negative"),
    ],
)
def test_bad_inputs(z: Tensor, factors: Tensor, kwargs: dict[str, Any], match: str) -> None:
    for metric in (mig, dci, factor_vae_score):
        with pytest.raises(ValueError, match=match):
            metric(z, factors, **kwargs)


def test_bad_options() -> None:
    z, factors = torch.randn(20, 2), torch.arange(20).remainder(2).unsqueeze(1)
    with pytest.raises(ValueError, match="bins must be a positive int"):
        mig(z, factors, bins=0)
    with pytest.raises(ValueError, match="at least 2 latent dimensions"):
        mig(z[:, :1], factors)
    with pytest.raises(ValueError, match="every factor takes a single value"):
        mig(z, torch.zeros(20, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="train_fraction must be in"):
        dci(z, factors, train_fraction=1.0)
    with pytest.raises(ValueError, match="regressor must be"):
        dci(z, factors, regressor="boosting")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="votes must be an int >= 2"):
        factor_vae_score(z, factors, votes=1)
    with pytest.raises(ValueError, match="z is constant"):
        factor_vae_score(torch.ones(20, 2), factors)
    with pytest.raises(ValueError, match="importance must have shape"):
        dci_scores(torch.ones(3))
