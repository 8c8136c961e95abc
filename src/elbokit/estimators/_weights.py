r"""The one shared primitive: per-sample log weights log p(x, z_k) - log q(z_k | x).

Every bound in :mod:`elbokit.estimators` is a function of the (K, B) arrays built here:

.. math::
    \log w_k = \underbrace{\log p(x \mid z_k)}_{\texttt{log\_px\_given\_z}}
      + \underbrace{\log p(z_k)}_{\texttt{log\_pz}} - \underbrace{\log q(z_k \mid x)}_{\texttt{log\_qz}},
    \qquad z_k \sim q(z \mid x).

How gradients flow is the caller's named choice (``path``):

- ``"reparam"``: z = g(eps; phi) carries gradient and so does log q's parameter dependence.
- ``"score"``: z is sampled without gradient; only log q(z) and log p(x, z) carry it (for REINFORCE).
- ``"path"``: z carries gradient, log q is evaluated with its parameters detached, log q_{stop(phi)}(z)
  (sticking the landing, Roeder et al. 2017, and DReG, Tucker et al. 2018).

Large K is split into chunks of samples. Without autograd each chunk's activations are freed at once; with
autograd each chunk is wrapped in activation checkpointing, so only its inputs and its (k, B) outputs are
kept and the decoder is re-run during the backward pass: memory scales with the chunk, not with K.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.utils.checkpoint import checkpoint

from elbokit.distributions import detach_parameters, unvalidated
from elbokit.models._checks import check_batch, check_values, dtype_and_device
from elbokit.models._checks import check_nonnegative as check_nonnegative  # re-exported for the estimators
from elbokit.models._checks import check_positive_int as check_positive_int
from elbokit.models.base import Guide, LatentModel
from elbokit.models.likelihoods import Likelihood

Path = Literal["reparam", "score", "path"]

#: Elements of one (k, B, *event) likelihood parameter tensor above which samples are chunked: the memory bound.
CHUNK_ELEMENTS = 1 << 24
#: The smaller bound for CPU tensors without autograd, where nothing is kept between chunks and the chunk is sized
#: for the cache instead: log p(x) at k = 5000 on 100 MNIST points ran 1.6 x faster with 2^21-element chunks
#: (8 MB) than with 2^24 (64 MB, a page fault on every fresh tensor) on a 2-core CPU (``benchmarks/log_px.py``).
#: Under autograd a chunk is checkpointed and its decoder re-run, so training-sized calls keep the larger bound.
CPU_EVAL_CHUNK_ELEMENTS = 1 << 21


class LogWeights(NamedTuple):
    """Per-sample terms of the log importance weights, each (K, B)."""

    log_px_given_z: Tensor
    log_pz: Tensor
    log_qz: Tensor

    @property
    def log_w(self) -> Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x): (K, B)."""
        return self.log_px_given_z + self.log_pz - self.log_qz


def check_model(model: LatentModel) -> None:
    """Raise unless ``model`` has the LatentModel protocol's methods (a guide passed as the model, say)."""
    if not (callable(getattr(model, "prior", None)) and callable(getattr(model, "likelihood", None))):
        raise ValueError(f"model must be a LatentModel with prior() and likelihood(z), got {type(model).__name__}")


def model_prior(model: LatentModel) -> Distribution:
    """p(z), after checking that ``model`` is a LatentModel."""
    check_model(model)
    return model.prior()


def check_data(model: LatentModel, guide: Guide | None, x: Tensor) -> None:
    """Check x against the model (and the guide, where given) before either sees it: a non-empty batch
    (B, *event) of the model's event shape, dtype and device, and, while torch.distributions' argument checks
    are on, finite and inside the likelihood's support.

    The value checks cost a device-to-host sync; they follow torch.distributions' own switch
    (``Distribution._validate_args``, off inside :func:`elbokit.distributions.unvalidated`), so the training loop,
    which checks its data once when a run starts, pays only for the metadata checks here.
    """
    check_model(model)
    model_dtype = dtype_and_device(model)
    dtype, device = model_dtype if model_dtype is not None else (None, None)
    check_batch(x, event_shape=getattr(model, "event_shape", None), dtype=dtype, device=device)
    guide_dtype = None if guide is None else dtype_and_device(guide)  # the model's own encoder: the same
    if guide_dtype is not None and guide_dtype != model_dtype:
        check_batch(x, dtype=guide_dtype[0], device=guide_dtype[1], owner="the guide")
    if Distribution._validate_args:
        observation = getattr(model, "observation", None)
        if isinstance(observation, Likelihood):
            observation.check(x)  # finite and inside the support
        else:
            check_values(x)


def guide_distribution(model: LatentModel, guide: Guide, x: Tensor, prior: Distribution | None = None) -> Distribution:
    """Call the guide on x after checking x (:func:`check_data`), and check that q matches x's batch and p(z)'s
    event (``prior``: the model's p(z) if the caller already holds it)."""
    if not callable(guide):
        raise ValueError(f"guide must be a callable x -> q(z|x), got {type(guide).__name__}")
    check_data(model, guide, x)
    q = guide(x)
    if not isinstance(q, Distribution):
        raise ValueError(f"the guide must return a torch Distribution, got {type(q).__name__}")
    batch = x.shape[:1]
    if q.batch_shape != batch:
        raise ValueError(
            f"the guide's q must have batch shape {tuple(batch)} to match x, got {tuple(q.batch_shape)}"
        )
    prior_event = (model.prior() if prior is None else prior).event_shape
    if q.event_shape != prior_event:
        raise ValueError(
            f"the guide's q must have the prior's event shape {tuple(prior_event)}, got {tuple(q.event_shape)}"
        )
    return q


def default_chunk(k: int, x: Tensor) -> int:
    """Samples per chunk so that one (chunk, B, *event) tensor stays under CHUNK_ELEMENTS elements, or under
    CPU_EVAL_CHUNK_ELEMENTS for a CPU tensor without autograd."""
    per_sample = max(1, x.numel())
    limit = CHUNK_ELEMENTS
    if x.device.type == "cpu" and not torch.is_grad_enabled():
        limit = min(limit, CPU_EVAL_CHUNK_ELEMENTS)
    return max(1, min(k, limit // per_sample))


ChunkFn = Callable[[Tensor, int, int], tuple[Tensor, ...]]


def _over_chunks(fn: ChunkFn, x: Tensor, k: int, chunk_size: int | None) -> tuple[Tensor, ...]:
    """Run ``fn(x, start, stop)`` over chunks of the K samples and concatenate its (n, B) outputs."""
    chunk = default_chunk(k, x) if chunk_size is None else chunk_size
    check_positive_int("chunk_size", chunk)
    if chunk >= k:
        return fn(x, 0, k)
    parts: list[tuple[Tensor, ...]] = []
    for start in range(0, k, chunk):
        stop = min(k, start + chunk)
        # The first chunk checks x and the distributions' arguments; the others repeat the same calls on
        # samples of the same q, so torch.distributions' checks (a host sync each on a GPU) are off for them.
        with nullcontext() if start == 0 else unvalidated():
            if torch.is_grad_enabled():
                # x goes in as an argument so that checkpoint stashes and restores the RNG state of x's device
                # (it does so only for devices of tensor arguments): the re-run must draw the same z, on CUDA.
                parts.append(checkpoint(fn, x, start, stop, use_reentrant=False))
            else:
                parts.append(fn(x, start, stop))
    return tuple(torch.cat(terms) for terms in zip(*parts, strict=True))


def _likelihood_log_prob(model: LatentModel, z: Tensor, x: Tensor) -> Tensor:
    """log p(x | z): (n, B), after checking x against the likelihood's event shape."""
    likelihood = model.likelihood(z)
    if likelihood.event_shape != x.shape[1:]:
        raise ValueError(
            f"x must have the likelihood's event shape {tuple(likelihood.event_shape)}, got {tuple(x.shape[1:])}"
        )
    return likelihood.log_prob(x)


def _check_path(q: Distribution, path: Path) -> None:
    if path in ("reparam", "path") and not q.has_rsample:
        raise ValueError(
            f"{type(q).__name__} has no reparameterized sampler: use a score-function estimator "
            "(gradient='score' for ek.elbo, gradient='vimco' for ek.iwae)"
        )


def log_weights(
    model: LatentModel,
    q: Distribution,
    x: Tensor,
    k: int,
    *,
    path: Path = "reparam",
    chunk_size: int | None = None,
    on_sample: Callable[[Tensor, int, int], None] | None = None,
    prior: Distribution | None = None,
) -> LogWeights:
    """Draw z_1..z_K ~ q and return the three (K, B) terms of log w.

    Args:
        model: p(z) and p(x|z).
        q: the guide's distribution for this x, batch (B,), event (d,).
        x: (B, *event) data.
        k: samples per data point.
        path: how gradients flow (see the module docstring).
        chunk_size: samples per chunk; ``None`` picks one from the data size.
        on_sample: called once per chunk as ``on_sample(z, start, stop)`` with z of shape (stop - start, B, d)
            before it is used, e.g. to register a gradient hook on z (DReG).
        prior: the model's p(z), if the caller already holds it.

    Returns:
        LogWeights with three (K, B) tensors.
    """
    check_positive_int("k", k)
    _check_path(q, path)
    log_q_dist = detach_parameters(q) if path == "path" else q
    p_z = model.prior() if prior is None else prior
    hooked: set[int] = set()

    def one_chunk(data: Tensor, start: int, stop: int) -> tuple[Tensor, ...]:
        z = q.sample((stop - start,)) if path == "score" else q.rsample((stop - start,))  # (n, B, d)
        if on_sample is not None and start not in hooked:  # not again when a checkpoint re-runs the chunk
            hooked.add(start)
            on_sample(z, start, stop)
        return _likelihood_log_prob(model, z, data), p_z.log_prob(z), log_q_dist.log_prob(z)  # each (n, B)

    return LogWeights(*_over_chunks(one_chunk, x, k, chunk_size))


def log_likelihood_samples(
    model: LatentModel, q: Distribution, x: Tensor, k: int, *, chunk_size: int | None = None
) -> Tensor:
    """log p(x | z_k) for z_1..z_K ~ q drawn by reparameterization: (K, B).

    The reconstruction term alone, for bounds whose KL is in closed form: neither p(z) nor q is evaluated at z.
    """
    check_positive_int("k", k)
    _check_path(q, "reparam")

    def one_chunk(data: Tensor, start: int, stop: int) -> tuple[Tensor, ...]:
        return (_likelihood_log_prob(model, q.rsample((stop - start,)), data),)

    return _over_chunks(one_chunk, x, k, chunk_size)[0]


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """log (1/K) sum_k exp(log_w_k), by a stable logsumexp."""
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])
