"""Reverse KL (the ELBO's direction) locks onto one mode; forward KL covers both (Minka 2005; Bishop 2006
§10.1.2). Expected optima are computed independently: the reverse-KL optimum by numpy quadrature and scipy's
optimiser, the forward-KL optimum as the mixture's moments."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from elbokit.diagnostics.mode_seeking import (
    ModeSeekingResult,
    fit_forward_kl,
    fit_reverse_kl,
    mode_seeking,
    moment_match,
    two_modes,
)

MU, SIGMA = 3.0, 1.0  # modes at ±MU, component sd SIGMA
MIXTURE_SD = math.sqrt(SIGMA**2 + MU**2)


def _reverse_kl(m: float, s: float) -> float:
    """KL(N(m, s^2) || ½N(-MU, SIGMA^2) + ½N(MU, SIGMA^2)) by the trapezoid rule in numpy."""
    z = np.linspace(m - 12 * s, m + 12 * s, 40001)
    log_q = -0.5 * ((z - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    comps = [-0.5 * ((z - c) / SIGMA) ** 2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi) for c in (-MU, MU)]
    log_p = np.logaddexp(*comps) - math.log(2)
    return float(np.trapezoid(np.exp(log_q) * (log_q - log_p), z))


@pytest.fixture(scope="module")
def reverse_optimum() -> tuple[float, float]:
    """(m, s) minimising the reverse KL near the mode at +MU: m = 2.984, s = 1.023 (the far mode's tail pulls)."""
    res = minimize(lambda v: _reverse_kl(v[0], math.exp(v[1])), x0=[MU, 0.0], method="Nelder-Mead",
                   options={"xatol": 1e-6, "fatol": 1e-12})  # fmt: skip
    return float(res.x[0]), math.exp(float(res.x[1]))


@pytest.mark.parametrize("start", [(-4.0, 0.5), (-1.0, 0.5), (1.0, 0.5), (2.5, 2.0), (0.4, 0.3)])
def test_reverse_kl_locks_onto_the_nearer_mode(
    start: tuple[float, float], reverse_optimum: tuple[float, float]
) -> None:
    """From each start the ELBO-maximising q sits in the nearer mode: its mean within 0.05 σ of the quadrature
    optimum (so within 0.1 σ of the mode), its sd within 2% of the optimum's (3% of σ). Measured: m = ±2.98 to
    ±2.99, s = 1.024-1.026."""
    init_loc, init_scale = start
    loc, scale = fit_reverse_kl(two_modes(2 * MU, SIGMA), init_loc=init_loc, init_scale=init_scale, steps=800)
    sign = math.copysign(1.0, init_loc)
    m_star, s_star = reverse_optimum
    assert abs(loc - sign * m_star) < 0.05 * SIGMA
    assert abs(loc - sign * MU) < 0.1 * SIGMA
    assert abs(scale / s_star - 1) < 0.02
    assert abs(scale / SIGMA - 1) < 0.05


def test_the_reverse_kl_optimum_is_near_but_not_at_the_mode(reverse_optimum: tuple[float, float]) -> None:
    m_star, s_star = reverse_optimum
    assert 0 < MU - m_star < 0.05 and 0 < s_star - SIGMA < 0.05
    assert _reverse_kl(m_star, s_star) < _reverse_kl(MU, SIGMA) < math.log(2) + 1e-3


def test_a_broad_central_start_stops_at_the_symmetric_local_optimum() -> None:
    """Reverse KL is not convex: m = 0, s ≈ 2.74 is a local minimum (KL 0.84 against 0.69 in a mode), found
    from a broad start at the centre. It is still narrower than the forward-KL (moment-matched) fit."""
    loc, scale = fit_reverse_kl(two_modes(2 * MU, SIGMA), init_loc=0.5, init_scale=1.0, steps=800)
    assert abs(loc) < 0.3 and abs(scale - 2.74) < 0.05
    assert _reverse_kl(0.0, 2.74) > _reverse_kl(MU, SIGMA) + 0.1
    assert scale < MIXTURE_SD - 0.3


def test_forward_kl_matches_the_mixture_moments() -> None:
    target = two_modes(2 * MU, SIGMA)
    mean, sd = moment_match(target)
    assert mean == pytest.approx(0.0, abs=1e-12) and sd == pytest.approx(MIXTURE_SD, rel=1e-6)
    skewed = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=torch.tensor([0.25, 0.75])),
        torch.distributions.Normal(torch.tensor([-1.0, 2.0]), torch.tensor([0.5, 1.5])),
    )
    mean2 = 0.25 * -1.0 + 0.75 * 2.0
    var2 = 0.25 * (0.25 + 1.0) + 0.75 * (2.25 + 4.0) - mean2**2
    assert moment_match(skewed) == pytest.approx((mean2, math.sqrt(var2)), rel=1e-6)
    loc, scale = fit_forward_kl(target, init_loc=-4.0, init_scale=0.5, steps=1500)
    assert abs(loc) < 0.03 * MIXTURE_SD and abs(scale / MIXTURE_SD - 1) < 0.01


def test_mode_seeking_result_carries_both_fits_and_what_a_plot_needs() -> None:
    r = mode_seeking(two_modes(2 * MU, SIGMA), init_loc=-1.0, init_scale=0.5, steps=800, seed=0, grid_size=201)
    assert isinstance(r, ModeSeekingResult)
    assert r.modes == (-MU, MU) and r.mode_scale == SIGMA and r.radius == 2 * SIGMA
    assert (r.mixture_mean, r.mixture_scale) == pytest.approx((0.0, MIXTURE_SD))
    # Reverse KL: nearly all mass in one mode (Φ(2) - Φ(-2) = 0.954 for q = the component), none in the other.
    near, far = r.reverse.mass_near_modes
    assert near > 0.93 and far < 1e-3
    # Forward KL: mass on both modes, equally for the closed form (0.319 each) and nearly so for SGD.
    for fit in (r.forward, r.forward_sgd):
        assert min(fit.mass_near_modes) > 0.28
    assert r.forward.mass_near_modes[0] == pytest.approx(r.forward.mass_near_modes[1], rel=1e-9)
    assert (r.reverse.method, r.forward.method, r.forward_sgd.method) == ("reverse-kl", "forward-kl", "forward-kl-sgd")
    for density in (r.target_log_density, r.reverse_log_density, r.forward_log_density):
        assert density.shape == r.grid.shape == (201,)
        mass = float(torch.trapezoid(density.exp(), r.grid))
        assert mass == pytest.approx(1.0, abs=2e-3)
    assert r.reverse.distribution().mean.item() == pytest.approx(r.reverse.loc)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="separation must be > 0"):
        two_modes(0.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        fit_reverse_kl(two_modes(), steps=1)
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        fit_forward_kl(two_modes(), init_scale=0.0)


def test_the_example_runs() -> None:
    script = Path(__file__).resolve().parents[1] / "examples" / "mode_seeking.py"
    result = subprocess.run([sys.executable, str(script), "--steps", "20"], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "reverse-kl" in result.stdout and "forward-kl" in result.stdout
