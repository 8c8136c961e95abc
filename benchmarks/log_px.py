r"""log p(x) of a trained VAE at k = 5000 importance samples on 1,000 test images, four ways in one process:
``ek.log_marginal``, pythae's per-point ``VAE.get_nll`` loop, Pyro's ``vectorized_importance_weights``, and the
FLOP floor of the job. Seconds, the estimates, and whether the estimates agree.

.. math::
    \log \hat p(x) = \log \frac1K \sum_{k=1}^K \frac{p(x \mid z_k)\, p(z_k)}{q(z_k \mid x)}, \qquad z_k \sim q(z \mid x)

The model is the run at ``runs/demo`` (``make demo``: Burda et al. (2016)'s 784-200-200-50 tanh VAE with a
Bernoulli decoder, 10 epochs on dynamically binarized MNIST), or ``--run DIR``; without either, one is trained
first into a temporary folder (``elbokit fit --epochs 10``, about 30 s). All four use its float32 weights and the
first ``--limit`` binarized test images, under ``torch.inference_mode()``:

1. **elbokit**: ``ek.log_marginal(model, model.encoder, x, k=k, chunk_size=..., warn=False)`` over batches of
   ``--elbokit-batch`` = 100 points, ``--elbokit-chunk`` = 20 samples drawn at once: (20 * 100, 784) logits,
   6 MB (10 to 50 ran within 10 % of it). ``--elbokit-chunk auto`` is the library's own choice, 2^21 elements on a
   CPU without autograd (26 samples, 8 MB tensors); its earlier 2^24 (213 samples, 64 MB tensors) ran about
   1.6 x slower on a 2-core CPU (cache misses, and page faults on every fresh 64 MB tensor). Its per-point
   delta-method standard errors give the standard error of the mean, sqrt(sum se^2) / n.
2. **pythae**: ``pythae.models.VAE.get_nll`` (pythae 0.1.2, ``pythae/models/vae/vae_model.py``), called point by
   point, with the elbokit VAE's modules wrapped in pythae's ``BaseEncoder`` / ``BaseDecoder`` (the encoder
   returns mu and log sigma^2 of the same q; the decoder returns sigmoid(logits), since pythae's "bce" loss
   takes probabilities). For each point it replicates the point ``batch_size`` = 100 times (pythae's default),
   re-encodes every replica, draws one z per replica, accumulates log p(x|z) + log p(z) - log q(z|x) over
   k // 100 such batches, then takes log-mean-exp: k = 5000 is exactly 50 batches. ``--pythae port`` runs this
   script's line-for-line re-implementation of that loop instead (the default, ``auto``, uses the real pythae
   when it imports); the port also returns the weights, and so a delta-method standard error. The real
   ``get_nll`` does not switch autograd off; it runs here under the same ``inference_mode`` as the others.
   Its standard error is pooled over repetitions (each repetition draws with its own seed): the per-point
   variance over repetitions, summed over points, sqrt(sum var) / n.
3. **Pyro**: ``pyro.infer.importance.vectorized_importance_weights(model, guide, x, num_samples=s,
   max_plate_nesting=1)`` with a Pyro model and guide built on the same modules (as in
   ``benchmarks/vae_vs_pyro.py``, without ``pyro.module``: nothing is trained), over batches of ``--pyro-batch``
   = 100 points and chunks of ``--pyro-samples`` = 20 samples (its fastest of 10 to 250, as for elbokit).
   Its returned weights are summed over the data plate, so the per-point weights are read from the returned
   traces (the sites' ``log_prob``, (s, B) each): log p(x|z) + log p(z) - log q(z|x), then log-mean-exp over
   the k samples and the delta-method standard error. Pyro's validation stays as it is by default (on).
4. **The decoder's own work**, timed in the same repetitions at elbokit's batch and chunk sizes on preallocated
   random inputs: ``matmuls`` (the decoder's ``addmm`` calls alone) and ``decoder`` (the decoder module: matmuls,
   biases and tanh). No method can take less than ``decoder``; their floor fractions bound the target.
5. **FLOP floor**: 2 in out FLOPs per ``nn.Linear`` per row, the encoder once per point and the decoder k times
   per point (``model_gflop``), divided by the float32 GEMM rate measured in the same run (``gemm_gflops``:
   median of timed ``torch.mm`` of 2048 x 2048 matrices after a warm-up, measured in every repetition).
   ``floor_s`` ignores everything but the matrix products (tanh, the likelihood, sampling, reductions).

Each repetition runs every method once, in a fresh random order (no position advantage), each method seeded
with ``--seed + repetition``; times are medians over repetitions, speed-ups ratios of medians (and medians of
per-repetition ratios, which cancel load that drifts between repetitions). The estimates reported are the first
repetition's (seed ``--seed``). With the defaults elbokit and Pyro draw the same z (the same seed, the same
batches of points and samples per chunk, and both draw (samples, B, d) standard normals from torch's global
generator): their estimates then coincide to float32 rounding, a check that both compute the same thing.
pythae draws in another order, so its estimates differ from theirs by Monte-Carlo noise (``--seeds own`` gives
every method its own seed). ``agree`` asks every pairwise difference of the means to lie within 3 combined
standard errors, sqrt(se_a^2 + se_b^2), as for independent draws; the per-point differences give a second
standard error, sd(diff) / sqrt(n), which needs no model of the noise and is about 0 for shared draws
(``agree_paired``: within 3 of those, plus 1e-4 nats of rounding). ``stderr_over_repetitions`` gives every
method's standard error pooled over the repetitions as well: where the weights are heavy-tailed it exceeds the
delta-method one, which then makes ``agree`` strict. Prints a table, then one JSON object as the last line with
--json.

    python benchmarks/log_px.py --json
    python benchmarks/log_px.py --limit 100 --repeats 2 --skip pyro pythae   # quick

Targets (this script only measures): elbokit reaches at least 75 % of the FLOP floor's
rate (``elbokit_floor_fraction`` >= 0.75) and is at least 2.5 x faster than the per-point loop
(``speedup_vs_pythae`` >= 2.5). Reference points on this machine class (CPU, 2 cores): a simple vectorised log
p(x) reaches about 52 % of the floor and is about 1.9 x faster than the per-point loop that re-encodes every
replicated point. The machine is shared and timings are noisy: compare ratios measured in one run.

References:
    Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
    Chadebec, Vincent & Allassonniere, "Pythae: unifying generative autoencoders in Python", NeurIPS 2022.
    Bingham et al., "Pyro: deep universal probabilistic programming", JMLR 2019.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import elbokit as ek
from elbokit.estimators._weights import default_chunk
from elbokit.models import VAE
from elbokit.runs import open_run

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN = ROOT / "runs" / "demo"
METHODS = ("elbokit", "pythae", "pyro")
PYTHAE_BATCH = 100  # pythae's default batch_size of get_nll
GEMM_SIZE = 2048
#: Differences below this (nats) are float32 rounding: the paired check passes on them even where the paired
#: standard error is smaller still (elbokit and Pyro with shared draws compute the same numbers).
ROUNDING = 1e-4


@dataclass(frozen=True)
class Points:
    """One method's per-point results of one repetition: each (n,), nats."""

    log_px: Tensor
    stderr: Tensor | None  # delta-method Monte-Carlo standard error of each point's estimate, if available
    seconds: float


# ---- weights -> estimate -------------------------------------------------------------------------------------


def estimate_from_log_w(log_w: Tensor) -> tuple[Tensor, Tensor]:
    r"""log-mean-exp of (K, B) log weights and its delta-method standard error, sd(w) / (sqrt(K) mean(w)): (B,)."""
    log_w = log_w.double()
    k = log_w.shape[0]
    shift = log_w.max(0).values
    scaled = (log_w - shift).exp()  # w / max w: (K, B)
    mean = scaled.mean(0)
    var = scaled.var(0)  # unbiased, as ek.log_marginal's
    return (shift + mean.log()).float(), (var / (k * mean.square())).sqrt().float()


# ---- 1. elbokit ----------------------------------------------------------------------------------------------


def elbokit_points(model: VAE, x_all: Tensor, *, k: int, batch: int, chunk: int | None) -> tuple[Tensor, Tensor]:
    values, errors = [], []
    for start in range(0, x_all.shape[0], batch):
        estimate = ek.log_marginal(model, model.encoder, x_all[start : start + batch], k=k, chunk_size=chunk,
                                   warn=False)  # fmt: skip
        values.append(estimate.value)
        errors.append(estimate.stderr)
    return torch.cat(values), torch.cat(errors)


# ---- 2. pythae -----------------------------------------------------------------------------------------------


def split_guide(model: VAE) -> tuple[nn.Module, int, float]:
    """The encoder network, d and the scale floor of the VAE's diagonal AmortizedGaussian guide."""
    guide = model.encoder
    if not isinstance(guide, ek.AmortizedGaussian) or guide.covariance != "diagonal":
        raise ValueError(f"expected a diagonal AmortizedGaussian encoder, got {type(guide).__name__}")
    return guide.encoder, guide.latent_dim, guide.min_scale


def pythae_heads(model: VAE) -> tuple[Callable[[Tensor], tuple[Tensor, Tensor]], Callable[[Tensor], Tensor]]:
    """x -> (mu, log sigma^2) of the VAE's q, and z -> Bernoulli means sigmoid(logits): pythae's two outputs."""
    net, d, min_scale = split_guide(model)
    decoder = model.decoder

    def encode(x: Tensor) -> tuple[Tensor, Tensor]:
        out = net(x)  # (B, 2d): means, then raw scales
        return out[..., :d], 2.0 * (F.softplus(out[..., d:]) + min_scale).log()

    def decode(z: Tensor) -> Tensor:
        return torch.sigmoid(decoder(z))

    return encode, decode


def real_pythae(model: VAE) -> Any:
    """A ``pythae.models.VAE`` on the elbokit VAE's modules (and so its weights); ImportError without pythae."""
    from pythae.models import VAE as PythaeVAE
    from pythae.models import VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    encode, decode = pythae_heads(model)

    class Encoder(BaseEncoder):  # type: ignore[misc]
        def __init__(self) -> None:
            BaseEncoder.__init__(self)
            self.net = model.encoder  # registered, so that .to() and .eval() reach the weights

        def forward(self, x: Tensor) -> Any:
            mu, log_var = encode(x)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):  # type: ignore[misc]
        def __init__(self) -> None:
            BaseDecoder.__init__(self)
            self.net = model.decoder

        def forward(self, z: Tensor) -> Any:
            return ModelOutput(reconstruction=decode(z))

    data_dim = model.decoder[-1].out_features
    config = VAEConfig(input_dim=(data_dim,), latent_dim=model.latent_dim, reconstruction_loss="bce")
    return PythaeVAE(config, encoder=Encoder(), decoder=Decoder()).eval()


def pythae_points_real(vae: Any, x_all: Tensor, *, k: int) -> Tensor:
    """pythae's ``get_nll`` one point at a time (its own loop is over points too; it returns only their mean)."""
    return torch.tensor([float(vae.get_nll(x_all[i : i + 1], n_samples=k, batch_size=PYTHAE_BATCH))
                         for i in range(x_all.shape[0])])  # fmt: skip


def pythae_points_port(model: VAE, x_all: Tensor, *, k: int) -> tuple[Tensor, Tensor]:
    """A line-for-line re-implementation of pythae 0.1.2's ``VAE.get_nll`` ("bce"), keeping the weights.

    Same operations in the same order (and so the same draws) as ``pythae/models/vae/vae_model.py``: for each
    point, ``n_samples // batch_size`` batches of ``batch_size`` replicas, each re-encoded; log q and log p(z)
    without their (equal) 2 pi constants; log p(x|z) as minus the binary cross-entropy of sigmoid(logits).
    """
    encode, decode = pythae_heads(model)
    n_full = 1 if k <= PYTHAE_BATCH else k // PYTHAE_BATCH
    values, errors = [], []
    for i in range(x_all.shape[0]):
        x = x_all[i].unsqueeze(0)  # (1, D)
        log_p_x = []
        for _ in range(n_full):
            x_rep = torch.cat(PYTHAE_BATCH * [x])  # (batch, D)
            mu, log_var = encode(x_rep)
            std = torch.exp(0.5 * log_var)
            z = mu + torch.randn_like(std) * std  # pythae's _sample_gauss
            log_q_z_given_x = -0.5 * (log_var + (z - mu) ** 2 / torch.exp(log_var)).sum(dim=-1)
            log_p_z = -0.5 * (z**2).sum(dim=-1)
            recon_x = decode(z)
            log_p_x_given_z = -F.binary_cross_entropy(recon_x.reshape(x_rep.shape[0], -1),
                                                      x_rep.reshape(x_rep.shape[0], -1), reduction="none").sum(-1)
            log_p_x.append(log_p_x_given_z + log_p_z - log_q_z_given_x)  # (batch,)
        log_w = torch.cat(log_p_x)  # (K,)
        _, error = estimate_from_log_w(log_w.unsqueeze(1))
        values.append(float(torch.logsumexp(log_w, 0) - math.log(len(log_w))))  # pythae's own value
        errors.append(error)
    return torch.tensor(values), torch.cat(errors)


# ---- 3. Pyro -------------------------------------------------------------------------------------------------


class PyroVae:
    r"""The VAE as a Pyro model and guide on its own modules (``benchmarks/vae_vs_pyro.py``'s, for evaluation).

    .. math::
        z_n \sim \mathcal N(0, I_d), \quad x_n \mid z_n \sim \mathrm{Bernoulli}(\mathrm{logits} = \mathrm{dec}(z_n)),
        \quad q(z_n \mid x_n) = \mathcal N(m(x_n), \mathrm{softplus}(r(x_n)) + s_{\min})
    """

    def __init__(self, vae: VAE) -> None:
        self.encoder, self.latent_dim, self.min_scale = split_guide(vae)
        self.decoder: nn.Module = vae.decoder
        self.prior_loc = torch.zeros(vae.latent_dim)
        self.prior_scale = torch.ones(vae.latent_dim)

    def model(self, x: Tensor) -> None:
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.prior_loc, self.prior_scale).to_event(1))  # (s, B, d)
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", x.shape[0]):
            out = self.encoder(x)  # (B, 2d): means, then raw scales
            loc, raw = out[..., : self.latent_dim], out[..., self.latent_dim :]
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + self.min_scale).to_event(1))


def pyro_points(pyro_vae: PyroVae, x_all: Tensor, *, k: int, batch: int, samples: int) -> tuple[Tensor, Tensor]:
    from pyro.infer.importance import vectorized_importance_weights

    values, errors = [], []
    for start in range(0, x_all.shape[0], batch):
        x = x_all[start : start + batch]
        parts = []
        for first in range(0, k, samples):
            s = min(samples, k - first)
            total, model_trace, guide_trace = vectorized_importance_weights(
                pyro_vae.model, pyro_vae.guide, x, num_samples=s, max_plate_nesting=1
            )
            log_w = (model_trace.nodes["x"]["log_prob"] + model_trace.nodes["z"]["log_prob"]
                     - guide_trace.nodes["z"]["log_prob"])  # (s, B)  # fmt: skip
            if start == 0 and first == 0 and not torch.allclose(log_w.sum(-1), total.reshape(s), rtol=1e-4):
                raise RuntimeError("the per-point log weights read from Pyro's traces do not sum to its weights")
            parts.append(log_w.reshape(s, x.shape[0]))
        value, error = estimate_from_log_w(torch.cat(parts))  # (k, B) -> (B,)
        values.append(value)
        errors.append(error)
    return torch.cat(values), torch.cat(errors)


# ---- 4. FLOP floor -------------------------------------------------------------------------------------------


def linear_flops(module: nn.Module) -> int:
    """FLOPs of one row through every nn.Linear of a module: sum of 2 in out."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def job_flops(model: VAE, *, n: int, k: int) -> int:
    """The encoder once per point and the decoder once per sample of every point."""
    return n * linear_flops(model.encoder) + n * k * linear_flops(model.decoder)


def gemm_seconds(a: Tensor, b: Tensor, *, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - started)
    return times


def decoder_seconds(model: VAE, *, n: int, k: int, batch: int, chunk: int, matmuls_only: bool) -> float:
    """Seconds of the job's decoder work alone, in elbokit's batches and chunks, on preallocated random inputs:
    the decoder's matrix products alone (``matmuls_only``: ``addmm`` at each Linear's shapes), or the decoder
    module itself (matmuls, biases and tanh). What any implementation of the estimate must spend."""
    batch = min(batch, n)
    rows = batch * chunk
    calls = math.ceil(n / batch) * math.ceil(k / chunk)
    linears = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    inputs = [torch.randn(rows, m.in_features) for m in linears]
    z = torch.randn(rows, model.latent_dim)
    started = time.perf_counter()
    for _ in range(calls):
        if matmuls_only:
            for h, m in zip(inputs, linears, strict=True):
                torch.addmm(m.bias, h, m.weight.t())
        else:
            model.decoder(z)
    return time.perf_counter() - started


# ---- the run -------------------------------------------------------------------------------------------------


def open_model(run_dir: Path | None) -> tuple[VAE, Tensor, str]:
    """The trained VAE and its binarized test images: ``--run``, else runs/demo, else a fresh 10-epoch run."""
    if run_dir is None and not DEFAULT_RUN.is_dir():
        folder = Path(tempfile.mkdtemp(prefix="elbokit-log-px-"))
        print(f"no {DEFAULT_RUN}: training one into {folder} (elbokit fit, 10 epochs)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "elbokit.cli", "fit", "--data", "binarized-mnist", "--out",
                        str(folder), "--epochs", "10", "--quiet"], check=True)  # fmt: skip
        run_dir = folder
    run = open_run(run_dir or DEFAULT_RUN, device="cpu")
    if run.config.likelihood != "bernoulli":
        raise ValueError(f"this benchmark needs a Bernoulli VAE, got likelihood {run.config.likelihood!r}")
    return run.model, run.data.test, str(run.path)


def pooled_stderr(values: list[Tensor]) -> float:
    """Standard error of one repetition's mean over points, from each point's variance over R >= 2 repetitions."""
    if len(values) < 2:
        return math.nan
    var = torch.stack(values).double().var(0)  # (n,)
    return float(var.sum().sqrt()) / var.shape[0]


def mean_stderr(se: Tensor) -> float:
    """Standard error of the mean over points from per-point standard errors: sqrt(sum se^2) / n."""
    return float(se.double().square().sum().sqrt()) / se.shape[0]


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    model, test, run_path = open_model(args.run)
    model = model.float().eval()
    x_all = test[: args.limit].float()
    n, k = x_all.shape[0], args.k
    methods = [m for m in METHODS if m not in args.skip]

    pythae_impl = None
    pythae_vae = None
    if "pythae" in methods:
        if args.pythae in ("auto", "real"):
            try:
                pythae_vae = real_pythae(model)
            except ImportError:
                if args.pythae == "real":
                    raise SystemExit("--pythae real needs pythae: pip install pythae") from None
        pythae_impl = "pythae.models.VAE.get_nll" if pythae_vae is not None else "port of pythae 0.1.2 get_nll"
    pyro_vae = None
    if "pyro" in methods:
        try:
            import pyro
        except ImportError:
            raise SystemExit("Pyro is missing: pip install pyro-ppl (the project's `bench` extra), "
                             "or --skip pyro") from None  # fmt: skip
        pyro_vae = PyroVae(model)

    chunk = None if args.elbokit_chunk == "auto" else int(args.elbokit_chunk)

    def seed_of(method: str, repetition: int) -> int:
        own = 0 if args.seeds == "shared" else 100_003 * (1 + METHODS.index(method))
        return args.seed + repetition + own

    def call(method: str) -> tuple[Tensor, Tensor | None]:
        if method == "elbokit":
            return elbokit_points(model, x_all, k=k, batch=args.elbokit_batch, chunk=chunk)
        if method == "pythae":
            if pythae_vae is not None:
                return pythae_points_real(pythae_vae, x_all, k=k), None
            return pythae_points_port(model, x_all, k=k)
        assert pyro_vae is not None
        return pyro_points(pyro_vae, x_all, k=k, batch=args.pyro_batch, samples=args.pyro_samples)

    a, b = torch.randn(GEMM_SIZE, GEMM_SIZE), torch.randn(GEMM_SIZE, GEMM_SIZE)
    results: dict[str, list[Points]] = {m: [] for m in methods}
    gemm_times: list[float] = []
    kernel_times: dict[str, list[float]] = {"matmuls": [], "decoder": []}
    kernel_chunk = chunk if chunk is not None else default_chunk(k, x_all[: args.elbokit_batch])
    order = random.Random(args.seed)
    with torch.inference_mode():
        gemm_seconds(a, b, repeats=3)  # warm-up
        for method in methods:  # warm-up on a few points (first-call allocations, pythae's and Pyro's imports)
            torch.manual_seed(args.seed)
            with_k = max(2, min(k, 200))
            if method == "elbokit":
                elbokit_points(model, x_all[:2], k=with_k, batch=args.elbokit_batch, chunk=chunk)
            elif method == "pythae" and pythae_vae is not None:
                pythae_points_real(pythae_vae, x_all[:2], k=with_k)
            elif method == "pythae":
                pythae_points_port(model, x_all[:2], k=with_k)
            else:
                assert pyro_vae is not None
                pyro_points(pyro_vae, x_all[:2], k=with_k, batch=args.pyro_batch, samples=args.pyro_samples)
        for repetition in range(args.repeats):
            items = [*methods, "gemm", "matmuls", "decoder"]
            for item in order.sample(items, len(items)):  # a fresh random order each time
                if item == "gemm":
                    gemm_times += gemm_seconds(a, b, repeats=5)
                    continue
                if item in ("matmuls", "decoder"):
                    kernel_times[item].append(decoder_seconds(
                        model, n=n, k=k, batch=args.elbokit_batch, chunk=kernel_chunk, matmuls_only=item == "matmuls"
                    ))  # fmt: skip
                    continue
                torch.manual_seed(seed_of(item, repetition))
                started = time.perf_counter()
                value, stderr = call(item)
                seconds = time.perf_counter() - started
                results[item].append(Points(value, stderr, seconds))
                print(f"repetition {repetition + 1}/{args.repeats}  {item:<8} {seconds:8.2f} s", file=sys.stderr)

    gemm_gflops = 2 * GEMM_SIZE**3 / statistics.median(gemm_times) / 1e9
    flops = job_flops(model, n=n, k=k)
    floor_s = flops / (gemm_gflops * 1e9)
    out: dict[str, Any] = {"n": n, "k": k, "threads": torch.get_num_threads()}
    seconds = {m: statistics.median(p.seconds for p in results[m]) for m in methods}
    for m in ("elbokit", "pythae", "pyro"):
        out[f"{m}_s"] = seconds.get(m)
    out |= {"floor_s": floor_s, "gemm_gflops": gemm_gflops, "model_gflop": flops / 1e9}
    out["elbokit_floor_fraction"] = floor_s / seconds["elbokit"] if "elbokit" in seconds else None
    # The decoder's work alone at elbokit's shapes: its matmuls, then the module with its tanh. Their floor
    # fractions bound what any implementation of the estimate reaches on this machine.
    for name in ("matmuls", "decoder"):
        out[f"{name}_s"] = statistics.median(kernel_times[name])
        out[f"{name}_floor_fraction"] = floor_s / out[f"{name}_s"]
    out["kernel_chunk"] = kernel_chunk
    for m in ("pythae", "pyro"):
        out[f"speedup_vs_{m}"] = seconds[m] / seconds["elbokit"] if m in seconds and "elbokit" in seconds else None
    estimates: dict[str, tuple[Tensor, float]] = {}
    for m in ("elbokit", "pythae", "pyro"):
        if m not in results:
            out[f"{m}_log_px"] = out[f"{m}_stderr"] = None
            continue
        first = results[m][0]
        se = mean_stderr(first.stderr) if first.stderr is not None else pooled_stderr([p.log_px for p in results[m]])
        estimates[m] = (first.log_px, se)
        out[f"{m}_log_px"] = float(first.log_px.double().mean())
        out[f"{m}_stderr"] = None if math.isnan(se) else se  # NaN: the real pythae with --repeats 1
    pairs = {}
    agree: bool | None = True
    agree_paired: bool | None = True
    for m1, m2 in itertools.combinations(estimates, 2):
        (v1, se1), (v2, se2) = estimates[m1], estimates[m2]
        diff = (v1 - v2).double()  # (n,), per point
        combined = math.sqrt(se1**2 + se2**2)
        paired = float(diff.std()) / math.sqrt(n) if n > 1 else math.nan
        mean = float(diff.mean())
        # no verdict without a standard error (the real pythae with --repeats 1; one point for the paired one)
        agree = None if agree is None or math.isnan(combined) else agree and abs(mean) <= 3 * combined
        agree_paired = (None if agree_paired is None or math.isnan(paired)
                        else agree_paired and abs(mean) <= 3 * paired + ROUNDING)  # fmt: skip
        pairs[f"{m1}-{m2}"] = {"difference": mean, "combined_stderr": None if math.isnan(combined) else combined,
                               "paired_stderr": None if math.isnan(paired) else paired}  # fmt: skip
    out["agree"] = agree if len(estimates) > 1 else None
    out["agree_paired"] = agree_paired if len(estimates) > 1 else None
    out["differences"] = pairs
    # the standard error of every method pooled over repetitions, as a check on the delta-method ones
    out["stderr_over_repetitions"] = {m: pooled_stderr([p.log_px for p in results[m]]) if args.repeats > 1 else None
                                      for m in methods}  # fmt: skip
    out["seconds"] = {m: [p.seconds for p in results[m]] for m in methods}
    for m in ("pythae", "pyro"):
        if m in methods and "elbokit" in methods:
            out[f"median_ratio_vs_{m}"] = statistics.median(
                p.seconds / e.seconds for p, e in zip(results[m], results["elbokit"], strict=True)
            )
    if "elbokit" in seconds:
        out["elbokit_gflops"] = flops / seconds["elbokit"] / 1e9
    out |= {
        "elbokit_batch": args.elbokit_batch, "elbokit_chunk": args.elbokit_chunk, "pythae_impl": pythae_impl,
        "pythae_batch_size": PYTHAE_BATCH, "pyro_batch": args.pyro_batch, "pyro_samples": args.pyro_samples,
        "repeats": args.repeats, "seed": args.seed, "seeds": args.seeds, "run": run_path, "torch": torch.__version__,
        "pyro": pyro.__version__ if pyro_vae is not None else None,
        "pyro_validation": pyro.infer.util.is_validation_enabled() if pyro_vae is not None else None,
        "date": datetime.date.today().isoformat(),
    }  # fmt: skip
    return out


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(out: dict[str, Any]) -> None:
    print(f"log p(x), k = {out['k']}, {out['n']} test points, {out['threads']} threads, medians of {out['repeats']} "
          f"interleaved repetitions; GEMM {out['gemm_gflops']:.1f} GFLOP/s, job {out['model_gflop']:.1f} GFLOP")
    print(f"{'method':<9} {'seconds':>9} {'x floor':>8} {'log p(x)':>10} {'± se':>7}")
    print(f"{'floor':<9} {out['floor_s']:>9.2f} {1.0:>8.2f}")
    for name in ("matmuls", "decoder"):  # the decoder's own work: no method can take less
        print(f"{name:<9} {out[f'{name}_s']:>9.2f} {out[f'{name}_s'] / out['floor_s']:>8.2f}")
    for m in METHODS:
        if out[f"{m}_s"] is None:
            continue
        print(f"{m:<9} {out[f'{m}_s']:>9.2f} {out[f'{m}_s'] / out['floor_s']:>8.2f} {out[f'{m}_log_px']:>10.3f} "
              f"{fmt(out[f'{m}_stderr'], '>7.3f'):>7}")
    if out["elbokit_floor_fraction"] is not None:
        print(f"elbokit reaches {100 * out['elbokit_floor_fraction']:.0f} % of the floor's rate (target >= 75 %)")
    for m in ("pythae", "pyro"):
        if out[f"speedup_vs_{m}"] is not None:
            print(f"elbokit is {out[f'speedup_vs_{m}']:.2f} x faster than {m} (median of per-repetition ratios "
                  f"{out[f'median_ratio_vs_{m}']:.2f})")
    for pair, d in out["differences"].items():
        print(f"{pair}: {d['difference']:+.4f} ± {fmt(d['combined_stderr'], '.4f')} (combined), "
              f"± {fmt(d['paired_stderr'], '.4f')} "
              "(paired)")
    print(f"agree (3 combined se): {out['agree']}; agree (3 paired se): {out['agree_paired']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="run directory (default runs/demo)")
    parser.add_argument("--limit", type=int, default=1000, help="the first N test images")
    parser.add_argument("--k", type=int, default=5000, help="importance samples per point")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of every method")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="Monte-Carlo seed of the first repetition")
    parser.add_argument("--skip", nargs="*", choices=("pythae", "pyro"), default=[], help="methods to leave out")
    parser.add_argument("--elbokit-batch", type=int, default=100, help="points per ek.log_marginal call")
    parser.add_argument("--elbokit-chunk", default="20", help="ek.log_marginal's chunk_size, or auto")
    parser.add_argument("--pythae", choices=("auto", "real", "port"), default="auto",
                        help="the real pythae (auto: when it imports) or this script's port of its get_nll")
    parser.add_argument("--pyro-batch", type=int, default=100, help="points per vectorized_importance_weights call")
    parser.add_argument("--pyro-samples", type=int, default=20, help="samples per vectorized_importance_weights call")
    parser.add_argument("--seeds", choices=("shared", "own"), default="shared",
                        help="every method seeded alike in a repetition, or each with its own seed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for name, least in (("limit", 1), ("k", 2), ("repeats", 1), ("threads", 1), ("elbokit_batch", 1),
                        ("pyro_batch", 1), ("pyro_samples", 1)):  # fmt: skip
        if getattr(args, name) < least:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
    if args.elbokit_chunk != "auto" and not (args.elbokit_chunk.isdigit() and int(args.elbokit_chunk) >= 1):
        raise SystemExit(f"--elbokit-chunk must be an integer >= 1 or auto, got {args.elbokit_chunk!r}")
    out = run(args)
    print_table(out)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
