"""Shared fixtures and the seed policy.

Seed policy: every random quantity in a test comes from a fixed seed. Data and model parameters are drawn
from a ``torch.Generator`` created in the test (``torch.Generator().manual_seed(...)``). Sampling inside
``torch.distributions`` (``rsample``/``sample``) takes no generator argument and uses torch's global RNG, so
the autouse fixture below seeds it (``torch.manual_seed``) before every test and restores it afterwards;
results therefore do not depend on test order. Statistical assertions compare a Monte-Carlo estimate with an
exact value using a tolerance of a stated number of standard errors (``Z`` below, unless a test says
otherwise), the standard error itself estimated from the same samples. With fixed seeds each assertion is
deterministic; ``Z = 4`` makes a false failure under a fresh seed a < 1e-4 event per assertion.

Numerics tests run in float64 (set here as torch's default dtype).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import pytest
import torch

from elbokit.models import LinearGaussian

Z = 4.0  # standard errors allowed in statistical assertions

torch.set_default_dtype(torch.float64)


@pytest.fixture(autouse=True)
def _seed_global_rng() -> Iterator[None]:
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        yield


_VALIDATE = torch.distributions.Distribution._validate_args  # torch's default, before any test module's imports


@pytest.fixture(autouse=True)
def _keep_distribution_checks() -> Iterator[None]:
    """torch.distributions' argument checks on, as torch's default has them, in every test: importing zuko
    directly (as the flow tests do at collection) switches them off for the whole process."""
    torch.distributions.Distribution._validate_args = _VALIDATE
    yield
    torch.distributions.Distribution._validate_args = _VALIDATE


def random_linear_gaussian(
    generator: torch.Generator,
    data_dim: int = 5,
    latent_dim: int = 2,
    noise: Literal["diagonal", "scalar"] = "diagonal",
) -> LinearGaussian:
    """A random LinearGaussian with O(1) loadings and noise scales in [0.5, 1.5]."""
    weight = torch.randn(data_dim, latent_dim, generator=generator)
    bias = torch.randn(data_dim, generator=generator)
    if noise == "diagonal":
        scale = 0.5 + torch.rand(data_dim, generator=generator)
    else:
        scale = 0.5 + torch.rand((), generator=generator)
    return LinearGaussian(weight, bias, scale)


@pytest.fixture
def make_model() -> Callable[..., LinearGaussian]:
    """Factory: make_model(seed, data_dim=5, latent_dim=2, noise="diagonal")."""

    def make(
        seed: int, data_dim: int = 5, latent_dim: int = 2, noise: Literal["diagonal", "scalar"] = "diagonal"
    ) -> LinearGaussian:
        return random_linear_gaussian(torch.Generator().manual_seed(seed), data_dim, latent_dim, noise)

    return make


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-tensor work (AIS chains): extra threads only contend for the 2
    shared cores. Use as ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextmanager
def stop_requested_after(steps: int) -> Iterator[None]:
    """``elbokit.fit`` as if SIGINT arrived between step ``steps`` and the next (its stop check patched)."""
    import elbokit.train.loop as loop_module

    calls = {"n": 0}

    def requested() -> bool:
        calls["n"] += 1
        return calls["n"] > steps

    @contextmanager
    def requests() -> Iterator[Callable[[], bool]]:
        yield requested

    import elbokit.train.bnn as bnn_module

    originals = (loop_module._stop_requests, bnn_module._stop_requests)
    loop_module._stop_requests = bnn_module._stop_requests = requests  # type: ignore[assignment]
    try:
        yield
    finally:
        loop_module._stop_requests, bnn_module._stop_requests = originals
