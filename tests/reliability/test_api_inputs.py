"""Bad input to the Python API: a one-line ValueError that says what was expected and what was given.

Each row of ``BAD_INPUTS`` is one call with one bad argument, the exception it must raise (ValueError) and a
regex its message must match. Every row failed on the code before these checks were added; the comment on each
says how (``was:``): a raw error from deep inside (a matmul's RuntimeError, an AttributeError, a TypeError), a
multi-line ValueError from torch.distributions, or silent acceptance. The controls at the end show that good
input still works, and that the value checks (finiteness, the likelihood's support), which cost a device sync,
follow torch.distributions' switch: off inside ``elbokit.distributions.unvalidated()``, as in the training loop.

Models are tiny (D = 6, d = 2, one hidden layer of 8) and float64, torch's default in the tests (conftest);
float32 ones are converted explicitly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.distributions import Independent, Normal

import elbokit as ek
from conftest import random_linear_gaussian
from elbokit import diagnostics as dx
from elbokit.distributions import unvalidated
from elbokit.models import VAE, FixedGuide, LinearGaussian

D, LATENT, B = 6, 2, 4

# ---- builders (called inside each test, after conftest has seeded torch's global RNG) -----------------------


def _vae(likelihood: str = "bernoulli", dtype: torch.dtype = torch.float64) -> VAE:
    return VAE.mlp(D, LATENT, hidden=(8,), likelihood=likelihood).to(dtype)


def _x(dtype: torch.dtype = torch.float64, n: int = B, width: int = D) -> Tensor:
    """Binary data, in every likelihood's support."""
    return torch.bernoulli(torch.full((n, width), 0.5), generator=torch.Generator().manual_seed(0)).to(dtype)


def _with_nan(x: Tensor) -> Tensor:
    x = x.clone()
    x[1, 2] = math.nan
    return x


def _lg() -> LinearGaussian:
    return random_linear_gaussian(torch.Generator().manual_seed(0), data_dim=D, latent_dim=LATENT)


def _lg_x(n: int = B) -> Tensor:
    return _lg().sample(n, generator=torch.Generator().manual_seed(1)).x


def elbo_vae(x: Tensor, **kwargs: object) -> object:
    m = _vae()
    return ek.elbo(m, m.encoder, x, **kwargs)  # type: ignore[arg-type]


def iwae_vae(x: Tensor, **kwargs: object) -> object:
    m = _vae()
    return ek.iwae(m, m.encoder, x, k=2, **kwargs)  # type: ignore[arg-type]


def marginal_vae(x: object, model: VAE | None = None) -> object:
    m = _vae() if model is None else model
    return ek.log_marginal(m, m.encoder, x, k=3)  # type: ignore[arg-type]


def grad_var(x: Tensor, **kwargs: object) -> object:
    m = _vae()
    options: dict[str, object] = {"params": list(m.parameters()), "repeats": 2, **kwargs}
    return ek.gradient_variance(m, m.encoder, x, **options)  # type: ignore[arg-type]


def f32_vae_call(fn: Callable[[VAE, Tensor], object], x: Tensor) -> object:
    return fn(_vae(dtype=torch.float32), x)


# Shorthands for the regexes.
EVENT = r"x must have event shape \(6,\) for the model, got \(10,\)"
EMPTY = r"x must hold at least one data point, got an empty batch of shape \(0, 6\)"
OUTSIDE = r"the bernoulli likelihood needs x in \[0, 1\]; \d+ values lie outside, in \[2\.0, 2\.0\]"


def _dtype(expected: str, given: str, owner: str = "the model") -> str:
    convert = rf"convert it with x\.to\(torch\.{expected}\)"
    return rf"x must have {owner}'s dtype torch\.{expected}, got torch\.{given}: {convert}"


# (id, the call, the exception, a regex its one-line message must match)
BAD_INPUTS: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # ---- x against the model: the estimators (one shared check, estimators._weights.check_data) -------------
    # was: RuntimeError mat1 and mat2 shapes cannot be multiplied (4x10 and 6x8)
    ("elbo x wrong event", lambda: elbo_vae(_x(width=10)), ValueError, EVENT),
    # was: RuntimeError mat1 and mat2 shapes cannot be multiplied
    ("iwae x wrong event", lambda: iwae_vae(_x(width=10)), ValueError, EVENT),
    # was: RuntimeError mat1 and mat2 shapes cannot be multiplied
    ("log_marginal x wrong event", lambda: marginal_vae(_x(width=10)), ValueError, EVENT),
    # was: RuntimeError mat1 and mat2 shapes cannot be multiplied
    ("gradient_variance x wrong event", lambda: grad_var(_x(width=10)), ValueError, EVENT),
    # was: RuntimeError mat1 and mat2 must have the same dtype, but got Long and Double
    ("elbo x int64", lambda: elbo_vae(_x(torch.int64)), ValueError, _dtype("float64", "int64")),
    # was: RuntimeError mat1 and mat2 must have the same dtype, but got Byte and Double
    ("elbo x uint8", lambda: elbo_vae(_x(torch.uint8)), ValueError, _dtype("float64", "uint8")),
    # was: RuntimeError mat1 and mat2 must have the same dtype, but got Bool and Double
    ("elbo x bool", lambda: elbo_vae(_x(torch.bool)), ValueError, _dtype("float64", "bool")),
    # was: RuntimeError mat1 and mat2 must have the same dtype, but got Float and Double
    ("iwae x float32, model float64", lambda: iwae_vae(_x(torch.float32)), ValueError, _dtype("float64", "float32")),
    # was: RuntimeError mat1 and mat2 must have the same dtype, but got Double and Float
    (
        "elbo x float64, model float32",
        lambda: f32_vae_call(lambda m, x: ek.elbo(m, m.encoder, x), _x(torch.float64)),
        ValueError,
        _dtype("float32", "float64"),
    ),
    # was: RuntimeError mat1 and mat2 must have the same dtype, but got Double and Float
    (
        "log_marginal x float64, model float32",
        lambda: marginal_vae(_x(torch.float64), model=_vae(dtype=torch.float32)),
        ValueError,
        _dtype("float32", "float64"),
    ),
    # was: silently promoted to float64 (x - b promotes x before any matmul sees it)
    (
        "elbo linear-Gaussian x float32",
        lambda: ek.elbo(_lg(), lambda x: _lg().posterior(x), _lg_x().float()),
        ValueError,
        _dtype("float64", "float32"),
    ),
    # was: RuntimeError mat1 and mat2 must have the same dtype, but got Double and Float (in the guide)
    (
        "elbo guide float32, model and x float64",
        lambda: ek.elbo(_lg(), ek.AmortizedGaussian.mlp(D, LATENT, hidden=(8,)).float(), _lg_x()),
        ValueError,
        _dtype("float32", "float64", owner="the guide"),
    ),
    # was: RuntimeError cannot reshape tensor of 0 elements into shape [0, -1]
    ("elbo x empty batch", lambda: elbo_vae(_x(n=0)), ValueError, EMPTY),
    # was: RuntimeError cannot reshape tensor of 0 elements into shape [2, 0, -1]
    ("iwae x empty batch", lambda: iwae_vae(_x(n=0)), ValueError, EMPTY),
    # was: RuntimeError cannot reshape tensor of 0 elements into shape [3, 0, -1]
    ("log_marginal x empty batch", lambda: marginal_vae(_x(n=0)), ValueError, EMPTY),
    # was: RuntimeError Tensor.item() cannot be called on meta tensors
    (
        "elbo x on another device",
        lambda: elbo_vae(torch.zeros(B, D, dtype=torch.float64, device="meta")),
        ValueError,
        r"x must be on the model's device cpu, got meta",
    ),
    # was: AttributeError 'list' object has no attribute 'numel'
    ("log_marginal x a list", lambda: marginal_vae(_x().tolist()), ValueError, r"x must be a torch\.Tensor.*got list"),
    # ---- x against the likelihood's support (value checks, on while torch.distributions validates) ---------
    # was: silently accepted (a Bernoulli "log-likelihood" of x = 2)
    ("elbo bernoulli x = 2", lambda: elbo_vae(2 * _x()), ValueError, OUTSIDE),
    # was: silently accepted
    (
        "elbo bernoulli x < 0",
        lambda: elbo_vae(_x() - 0.5),
        ValueError,
        r"the bernoulli likelihood needs x in \[0, 1\]; \d+ values lie outside, in \[-0\.5, -0\.5\]",
    ),
    # was: silently accepted
    ("iwae bernoulli x = 2", lambda: iwae_vae(2 * _x()), ValueError, OUTSIDE),
    # was: silently accepted
    ("log_marginal bernoulli x = 2", lambda: marginal_vae(2 * _x()), ValueError, OUTSIDE),
    # was: silently accepted
    ("gradient_variance bernoulli x = 2", lambda: grad_var(2 * _x()), ValueError, OUTSIDE),
    # was: ValueError from torch.distributions, over several lines ("...but found invalid values:\ntensor(...")
    (
        "elbo continuous-bernoulli x = 2",
        lambda: ek.elbo(m := _vae("continuous-bernoulli"), m.encoder, 2 * _x()),
        ValueError,
        r"the continuous-bernoulli likelihood needs x in \[0, 1\]; \d+ values lie outside",
    ),
    # ---- the model and the guide themselves -----------------------------------------------------------------
    # was: AttributeError 'AmortizedGaussian' object has no attribute 'prior'
    (
        "elbo model and guide swapped",
        lambda: ek.elbo((m := _vae()).encoder, m, _x()),  # type: ignore[arg-type]
        ValueError,
        r"model must be a LatentModel with prior\(\) and likelihood\(z\), got AmortizedGaussian",
    ),
    # was: TypeError 'NoneType' object is not callable
    (
        "elbo guide None",
        lambda: ek.elbo(_vae(), None, _x()),  # type: ignore[arg-type]
        ValueError,
        r"guide must be a callable x -> q\(z\|x\), got NoneType",
    ),
    # was: silently accepted, FixedGuide(3) fails only when called
    (
        "FixedGuide of a non-distribution",
        lambda: FixedGuide(3),  # type: ignore[arg-type]
        ValueError,
        r"FixedGuide needs a torch Distribution q, got int",
    ),
    # ---- numbers ---------------------------------------------------------------------------------------------
    # was: silently accepted (an infinite KL weight: every bound -inf or nan)
    (
        "elbo beta = inf",
        lambda: elbo_vae(_x(), beta=math.inf),
        ValueError,
        r"beta must be a finite number >= 0, got inf",
    ),
    # was: TypeError 'float' object cannot be interpreted as an integer
    (
        "gradient_variance repeats = 2.5",
        lambda: grad_var(_x(), repeats=2.5),
        ValueError,
        r"repeats must be an integer >= 2, got 2\.5",
    ),
    # was: RuntimeError Boolean value of Tensor with more than one value is ambiguous
    (
        "gradient_variance params a tensor",
        lambda: grad_var(_x(), params=torch.zeros(3, requires_grad=True)),
        ValueError,
        r"params must be a sequence of tensors, got Tensor",
    ),
    # was: ValueError naming 'r', the string's first character, as the estimator
    (
        "gradient_variance gradients a string",
        lambda: grad_var(_x(), gradients="reparam"),
        ValueError,
        r"gradients must be a non-empty sequence of estimator names, got 'reparam'",
    ),
    # was: silently returned an empty dict
    (
        "gradient_variance gradients empty",
        lambda: grad_var(_x(), gradients=()),
        ValueError,
        r"gradients must be a non-empty sequence of estimator names, got \(\)",
    ),
    # ---- the linear-Gaussian model's own methods ------------------------------------------------------------
    # was: silently returned a scalar (one point without its batch dimension)
    (
        "lg log_evidence x 1-D",
        lambda: _lg().log_evidence(_lg_x()[0]),
        ValueError,
        r"x must have shape \(B, 6\), got shape \(6,\)",
    ),
    # was: silently returned a (2, 3) batch
    (
        "lg posterior x 3-D",
        lambda: _lg().posterior(_lg_x(6).reshape(2, 3, D)),
        ValueError,
        r"x must have shape \(B, 6\), got shape \(2, 3, 6\)",
    ),
    # was: silently promoted
    (
        "lg log_evidence x float32",
        lambda: _lg().log_evidence(_lg_x().float()),
        ValueError,
        _dtype("float64", "float32"),
    ),
    # was: silently promoted
    (
        "lg exact_elbo x float32",
        lambda: (lg := _lg()).exact_elbo(_lg_x().float(), lg.posterior(_lg_x())),
        ValueError,
        _dtype("float64", "float32"),
    ),
    # was: silently promoted
    (
        "lg posterior x int64",
        lambda: _lg().posterior(torch.ones(B, D, dtype=torch.int64)),
        ValueError,
        _dtype("float64", "int64"),
    ),
    # was: ValueError from torch.distributions over several lines (LowRankMultivariateNormal's support check)
    (
        "lg log_evidence x NaN",
        lambda: _lg().log_evidence(_with_nan(_lg_x())),
        ValueError,
        r"x must be finite, got 1 NaN or infinite value\(s\) in x of shape \(4, 6\)",
    ),
    # was: RuntimeError cannot reshape tensor of 0 elements
    ("lg log_evidence x empty", lambda: _lg().log_evidence(_lg_x()[:0]), ValueError, EMPTY),
    # was: ValueError from torch: "Value is not broadcastable with batch_shape+event_shape: ..."
    (
        "lg exact_elbo q batch != x batch",
        lambda: (lg := _lg()).exact_elbo(_lg_x(), lg.posterior(_lg_x(3))),
        ValueError,
        r"q must have batch shape \(4,\) to match x, or \(\) or \(1,\) to be shared, got \(3,\)",
    ),
    # was: TypeError randn() received an invalid combination of arguments
    ("lg sample n = 2.0", lambda: _lg().sample(2.0), ValueError, r"n must be an integer >= 1, got 2\.0"),  # type: ignore[arg-type]
    # was: TypeError randn() received an invalid combination of arguments
    ("lg sample n = True", lambda: _lg().sample(True), ValueError, r"n must be an integer >= 1, got True"),
    # was: TypeError slice indices must be integers
    (
        "lg fit_ppca latent_dim = 1.5",
        lambda: LinearGaussian.fit_ppca(_lg_x(10), 1.5),  # type: ignore[arg-type]
        ValueError,
        r"latent_dim must be in \[1, 5\], got 1\.5",
    ),
    # was: silently fitted one latent dimension
    (
        "lg fit_ppca latent_dim = True",
        lambda: LinearGaussian.fit_ppca(_lg_x(10), True),
        ValueError,
        r"latent_dim must be in \[1, 5\], got True",
    ),
    # was: RuntimeError mean(): could not infer output dtype
    (
        "lg fit_ppca x int64",
        lambda: LinearGaussian.fit_ppca(torch.ones(10, D, dtype=torch.int64), 1),
        ValueError,
        r"x must have a floating-point dtype, got torch\.int64",
    ),
    # was: torch.linalg.LinAlgError linalg.eigh failed to converge
    (
        "lg fit_ppca x NaN",
        lambda: LinearGaussian.fit_ppca(_with_nan(_lg_x(10)), 1),
        ValueError,
        r"x must be finite, got 1 NaN",
    ),
    # was: silently accepted (log p(x) = -inf or nan everywhere)
    (
        "lg constructor noise_scale = inf",
        lambda: LinearGaussian(torch.ones(D, LATENT), torch.zeros(D), math.inf),
        ValueError,
        r"noise_scale must be > 0 and finite everywhere, got values in \[inf, inf\]",
    ),
    # was: silently accepted
    (
        "lg constructor weight NaN",
        lambda: LinearGaussian(torch.full((D, LATENT), math.nan), torch.zeros(D), 1.0),
        ValueError,
        r"weight must be finite, got 12 NaN",
    ),
    # was: RuntimeError Only Tensors of floating point and complex dtype can require gradients
    (
        "lg constructor weight int64",
        lambda: LinearGaussian(torch.ones(D, LATENT, dtype=torch.int64), torch.zeros(D), 1.0),
        ValueError,
        r"weight must have a floating-point dtype, got torch\.int64",
    ),
    # was: silently accepted
    (
        "lg constructor bias NaN",
        lambda: LinearGaussian(torch.ones(D, LATENT), torch.full((D,), math.nan), 1.0),
        ValueError,
        r"bias must be finite, got 6 NaN",
    ),
    # ---- the VAE's own methods ------------------------------------------------------------------------------
    # was: silently accepted (the encoder's scales floored at nan)
    (
        "VAE.mlp min_scale = nan",
        lambda: VAE.mlp(D, LATENT, hidden=(8,), min_scale=math.nan),
        ValueError,
        r"min_scale must be a finite number >= 0, got nan",
    ),
    # was: RuntimeError mat1 and mat2 shapes cannot be multiplied
    ("VAE.encode x wrong event", lambda: _vae().encode(_x(width=10)), ValueError, EVENT),
    # was: RuntimeError mat1 and mat2 must have the same dtype
    ("VAE.reconstruct x int64", lambda: _vae().reconstruct(_x(torch.int64)), ValueError, _dtype("float64", "int64")),
    # was: RuntimeError mat1 and mat2 shapes cannot be multiplied (2x10 and 6x8)
    (
        "VAE.interpolate x wrong event",
        lambda: _vae().interpolate(_x(width=10)[0], _x(width=10)[1]),
        ValueError,
        r"x must have event shape \(6,\) for the model, got \(10,\)",
    ),
    # was: silently set the decoder's output bias to nan
    (
        "VAE.init_output_bias NaN mean",
        lambda: _vae().init_output_bias(torch.full((D,), math.nan)),
        ValueError,
        r"data_mean must be finite, got 6 NaN",
    ),
    # ---- the diagnostics' entry points (through the same check) ---------------------------------------------
    # was: RuntimeError mat1 and mat2 shapes cannot be multiplied
    ("dx.gaps x wrong event", lambda: dx.gaps(m := _vae(), m.encoder, _x(width=10), k=3, steps=1), ValueError, EVENT),
    # was: silently accepted (with more refinement steps: a multi-line ValueError once the refined loc went nan)
    ("dx.gaps bernoulli x = 2", lambda: dx.gaps(m := _vae(), m.encoder, 2 * _x(), k=3, steps=1), ValueError, OUTSIDE),
    # was: RuntimeError mat1 and mat2 must have the same dtype
    (
        "dx.collapse x int64",
        lambda: dx.collapse(m := _vae(), m.encoder, _x(torch.int64)),
        ValueError,
        _dtype("float64", "int64"),
    ),
    # was: silently accepted (no unit ever active)
    (
        "dx.collapse threshold = inf",
        lambda: dx.collapse(m := _vae(), m.encoder, _x(), threshold=math.inf),
        ValueError,
        r"threshold must be a finite number >= 0, got inf",
    ),
    # was: RuntimeError mat1 and mat2 must have the same dtype
    (
        "dx.surgery x float64, model float32",
        lambda: f32_vae_call(lambda m, x: dx.surgery(m, m.encoder, x), _x()),
        ValueError,
        _dtype("float32", "float64"),
    ),
    # was: RuntimeError cannot reshape tensor of 0 elements
    ("dx.surgery x empty batch", lambda: dx.surgery(m := _vae(), m.encoder, _x(n=0)), ValueError, EMPTY),
    # was: RuntimeError The size of tensor a (6) must match the size of tensor b (10)
    ("dx.ais x wrong event", lambda: dx.ais(_vae(), _x(width=10), steps=2, chains=2), ValueError, EVENT),
    # was: silently ran on float64 x with a float32 model
    (
        "dx.ais x float64, model float32",
        lambda: dx.ais(_vae(dtype=torch.float32), _x(), steps=2, chains=2),
        ValueError,
        _dtype("float32", "float64"),
    ),
    # was: silently accepted
    ("dx.ais bernoulli x = 2", lambda: dx.ais(_vae(), 2 * _x(), steps=2, chains=2), ValueError, OUTSIDE),
    # was: ValueError over several lines from torch.distributions (Normal's support check)
    (
        "dx.ais gaussian x NaN",
        lambda: dx.ais(_vae("gaussian"), _with_nan(_x()), steps=2, chains=2),
        ValueError,
        r"the gaussian likelihood needs finite x; 1 values are NaN or infinite",
    ),
    # was: RuntimeError The size of tensor a (6) must match the size of tensor b (10)
    (
        "dx.bdmc x wrong event",
        lambda: dx.bdmc(_vae(), _x(width=10), torch.zeros(B, LATENT), steps=2),
        ValueError,
        EVENT,
    ),
    # was: RuntimeError mat1 and mat2 must have the same dtype, but got Float and Double
    (
        "dx.bdmc z float32, x float64",
        lambda: dx.bdmc(_vae(), _x(), torch.zeros(B, LATENT, dtype=torch.float32), steps=2),
        ValueError,
        r"z must be a tensor of x's dtype torch\.float64, got torch\.float32",
    ),
    # was: AttributeError 'list' object has no attribute 'dim'
    (
        "dx.bdmc z a list",
        lambda: dx.bdmc(_vae(), _x(), [[0.0, 0.0]] * B, steps=2),  # type: ignore[arg-type]
        ValueError,
        r"z must be a tensor of x's dtype torch\.float64, got list",
    ),
    # was: silently accepted
    (
        "dx.rate_distortion bernoulli x = 2",
        lambda: dx.rate_distortion(m := _vae(), m.encoder, 2 * _x()),
        ValueError,
        OUTSIDE,
    ),
    # was: RuntimeError mat1 and mat2 must have the same dtype
    (
        "dx.rate_distortion x int64",
        lambda: dx.rate_distortion(m := _vae(), m.encoder, _x(torch.int64)),
        ValueError,
        _dtype("float64", "int64"),
    ),
    # was: RuntimeError mat1 and mat2 shapes cannot be multiplied
    ("dx.refine x wrong event", lambda: dx.refine(m := _vae(), m.encoder, _x(width=10), steps=1), ValueError, EVENT),
    # was: RuntimeError mat1 and mat2 must have the same dtype
    (
        "dx.refine x float64, model float32",
        lambda: f32_vae_call(lambda m, x: dx.refine(m, m.encoder, x, steps=1), _x()),
        ValueError,
        _dtype("float32", "float64"),
    ),
    # was: silently accepted
    (
        "dx.iwae_curve bernoulli x = 2",
        lambda: dx.iwae_curve(m := _vae(), m.encoder, 2 * _x(), ks=(1, 2), repeats=2),
        ValueError,
        OUTSIDE,
    ),
    ("NonAmortizedGaussian steps 0", lambda: ek.NonAmortizedGaussian(4, 2, steps=0), ValueError,
     r"steps must be an integer >= 1, got 0"),
    ("NonAmortizedGaussian lr 0", lambda: ek.NonAmortizedGaussian(4, 2, lr=0.0), ValueError, r"lr must be > 0"),
    ("NonAmortizedGaussian covariance", lambda: ek.NonAmortizedGaussian(4, 2, covariance="low-rank"),  # type: ignore[arg-type]
     ValueError, r"covariance must be"),
    ("NonAmortizedGaussian unbound", lambda: ek.NonAmortizedGaussian(4, 2)(_x()), ValueError,
     r"bound to no model: call bind\(model\)"),
    ("VAE.mlp local without num_points", lambda: VAE.mlp(6, 2, guide="local"), ValueError,
     r"num_points goes with guide='local'"),
    ("VAE.mlp num_points without local", lambda: VAE.mlp(6, 2, num_points=5), ValueError,
     r"num_points goes with guide='local'"),
    ("VAE.mlp local num_points 0", lambda: VAE.mlp(6, 2, guide="local", num_points=0), ValueError,
     r"num_points must be"),
    ("VAE.conv odd sides", lambda: VAE.conv((7, 7), 2), ValueError, r"must be even and above 4; got 7x7"),
    ("VAE.conv not a shape", lambda: VAE.conv((16,), 2), ValueError, r"image_shape must be \(H, W\)"),  # type: ignore[arg-type]
    ("VAE.conv channel 0", lambda: VAE.conv((16, 16), 2, channels=(8, 0)), ValueError, r"channels must be"),
    ("VAE.conv count likelihood", lambda: VAE.conv((16, 16), 2, likelihood="nb"), ValueError,
     r"count likelihood needs arch mlp"),
    ("VAE.conv flow and full", lambda: VAE.conv((16, 16), 2, guide="flow", covariance="full"), ValueError,
     r"flow guide's base is diagonal"),
    ("VAE.conv wrong image width", lambda: VAE.conv((16, 16), 2).encoder(_x()), ValueError,
     r"x must hold 16x16 images, flat \(\.\.\., 256\), got \(4, 6\)"),
    ("disentanglement point counts", lambda: dx.disentanglement(torch.randn(20, 2), torch.arange(20).view(10, 2) % 3),
     ValueError, r"same number of points"),
    ("disentanglement float factors", lambda: dx.disentanglement(torch.randn(20, 2), torch.rand(20, 2)),
     ValueError, r"factors must be an integer tensor"),
    ("disentanglement names count", lambda: dx.disentanglement(torch.randn(20, 2), torch.arange(40).view(20, 2) % 3,
                                                              names=("a",)), ValueError, r"names must be 2 strings"),
    ("RunConfig arch", lambda: ek.RunConfig(arch="resnet"), ValueError, r"arch must be one of mlp, conv"),
]


@pytest.mark.parametrize(("call", "error", "pattern"), [pytest.param(c, e, p, id=i) for i, c, e, p in BAD_INPUTS])
def test_bad_input_raises_one_line_error(call: Callable[[], object], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error  # not a subclass from deeper down
    message = str(info.value)
    assert "\n" not in message, message
    assert re.search(pattern, message), message


def test_table_ids_are_unique() -> None:
    ids = [row[0] for row in BAD_INPUTS]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


# ---- controls: good input still works -------------------------------------------------------------------------


def test_float32_bernoulli_vae_takes_binary_float32_x() -> None:
    model = _vae(dtype=torch.float32)
    x = _x(torch.float32)
    bound = ek.elbo(model, model.encoder, x)
    assert bound.value.shape == (B,) and bound.value.dtype == torch.float32 and bool(bound.value.isfinite().all())
    assert bool(ek.iwae(model, model.encoder, x, k=3).value.isfinite().all())


def test_bernoulli_vae_takes_grey_x_in_the_unit_interval() -> None:
    model = _vae()
    x = torch.rand(B, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # grey values, float64
    estimate = ek.log_marginal(model, model.encoder, x, k=4)
    assert bool(estimate.value.isfinite().all())


def test_linear_gaussian_float64_elbo_of_the_posterior_is_log_evidence() -> None:
    model, x = _lg(), _lg_x()
    bound = ek.elbo(model, lambda x_: model.posterior(x_), x, kl="mc")
    torch.testing.assert_close(bound.value, model.log_evidence(x), rtol=0, atol=1e-10)
    assert model.exact_elbo(x, model.prior()).shape == (B,)  # a q of batch () is shared by every point


def test_value_checks_follow_torch_distributions_switch() -> None:
    """Inside ``unvalidated()`` (the training loop) x's values are not read: out-of-support x is not refused
    there (the trainer checks its data once), while the metadata checks, free of device syncs, still run.

    A control for the first call; the two refusals failed before (was: RuntimeError from the encoder's matmul for
    int64 x, silent acceptance of x = 2)."""
    model = _vae()
    with unvalidated():
        ek.elbo(model, model.encoder, 2 * _x())
        with pytest.raises(ValueError, match=r"dtype torch\.float64, got torch\.int64"):
            ek.elbo(model, model.encoder, _x(torch.int64))
    assert torch.distributions.Distribution._validate_args  # restored
    with pytest.raises(ValueError, match=OUTSIDE):
        ek.elbo(model, model.encoder, 2 * _x())


def test_beta_and_samples_still_take_ints_and_floats() -> None:
    model = _vae()
    for beta in (0, 0.5, 2):
        assert bool(ek.elbo(model, model.encoder, _x(), beta=beta, samples=2).value.isfinite().all())
    check = dx.collapse(model, model.encoder, _x(), threshold=0)
    assert check.kl_per_dim.shape == (LATENT,)


def test_fixed_guide_and_linear_gaussian_sample_still_work() -> None:
    model = _lg()
    x = model.sample(3).x
    assert x.shape == (3, D) and x.dtype == torch.float64
    guide = FixedGuide(Independent(Normal(torch.zeros(3, LATENT, dtype=torch.float64), 1.0), 1))
    assert bool(ek.iwae(model, guide, x, k=2).value.isfinite().all())


# ---- RunConfig and fit(): the same checks as the command line and a TOML file --------------------------------

#: (id, settings, regex of the message); every row was accepted (or failed later, deep in training) before
#: RunConfig checked its own fields.
BAD_CONFIGS = [
    ("seed-text", {"seed": "x"}, r"seed must be an integer >= 0, got 'x'"),
    ("seed-float", {"seed": 1.5}, r"seed must be an integer"),
    ("seed-huge", {"seed": 2**40}, r"seed must be an integer in 0\.\.2\*\*32 - 1"),
    ("patience-float", {"patience": 1.5}, r"patience must be an integer >= 1, got 1\.5"),
    ("device-unknown", {"device": "foo"}, r"device must be auto, cpu or cuda\[:i\], got 'foo'"),
    ("lr-bool", {"lr": True}, r"lr must be a number, got True"),
    ("lr-text", {"lr": "1e-3"}, r"lr must be a number, got '1e-3'"),
    ("beta-inf", {"beta": math.inf}, r"beta must be a finite number >= 0, got inf"),
    ("hidden-int", {"hidden": 5}, r"hidden must be a list of layer sizes"),
    ("hidden-text", {"hidden": "200,200"}, r"hidden must be a list of layer sizes"),
    ("hidden-float", {"hidden": (200, 2.5)}, r"hidden sizes must be integers >= 1, got 2\.5"),
    ("epochs-bool", {"epochs": True}, r"epochs must be an integer >= 1, got True"),
    ("quiet-text", {"quiet": "no"}, r"quiet must be true or false, got 'no'"),
    ("data-int", {"data": 3}, r"data must be a string, got 3"),
    ("extra-list", {"extra": [1]}, r"extra must be a table"),
    ("extra-nan", {"extra": {"note": math.nan}}, r"extra must hold JSON values only"),
    ("anneal-typo", {"anneal": "bogus:3"}, r"unknown anneal spec 'bogus:3'"),
    ("likelihood-unknown", {"likelihood": "gamma"}, r"unknown likelihood 'gamma'"),
    ("iwae-beta", {"objective": "iwae", "k": 5, "beta": 0.5}, r"β and annealing apply to the elbo objective"),
    ("clip-zero", {"clip": 0}, r"clip must be a finite number > 0"),
    ("local-lr-text", {"local_lr": "0.1"}, r"local_lr must be a number, got '0\.1'"),
    ("local-lr-negative", {"local_lr": -1.0}, r"local_lr must be a finite number > 0"),
    ("guide-local-typo", {"guide": "locals"}, r"guide must be gaussian, full, flow\[:K\], local or local:full"),
    ("freebits-local-full", {"guide": "local:full", "anneal": "freebits:0.5"}, r"free bits needs the diagonal"),
]


@pytest.mark.parametrize(("settings", "pattern"), [pytest.param(s, p, id=i) for i, s, p in BAD_CONFIGS])
def test_run_config_refuses_bad_settings(settings: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern) as caught:
        ek.RunConfig(**settings)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=pattern):
        ek.RunConfig.from_dict(settings)


def test_run_config_changed_after_construction_is_checked_by_fit() -> None:
    from elbokit.data import load

    config = ek.RunConfig(data="synthetic", epochs=1, latent_dim=2, hidden=(8,), quiet=True, device="cpu")
    config.beta = math.inf  # a dataclass field set by hand: fit() checks the whole config again
    data = load("synthetic")
    model = VAE.mlp(data.data_dim, 2, hidden=(8,), likelihood="gaussian").to(torch.float32)
    with pytest.raises(ValueError, match=r"beta must be a finite number >= 0, got inf"):
        ek.fit(model, model.encoder, data, config)


def test_fit_refuses_data_outside_the_likelihoods_support() -> None:
    """The training loop skips the per-step value checks, so fit() checks the data once (was: trained on x = 3
    with a Bernoulli likelihood)."""
    from elbokit.data import Dataset

    x = torch.full((30, D), 3.0, dtype=torch.float32)
    data = Dataset("threes", x, x[:5], x[:5], None, None, None, None, "none", "real", "test")
    config = ek.RunConfig(data="threes", epochs=1, latent_dim=LATENT, hidden=(8,), quiet=True, device="cpu")
    model = _vae(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"threes \(train split\): the bernoulli likelihood needs x in \[0, 1\]"):
        ek.fit(model, model.encoder, data, config)
