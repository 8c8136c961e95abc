"""Building a run's model from its config, and the resource checks made before anything runs."""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING

import torch
from torch import nn

from elbokit.config import AUTO_LIKELIHOOD, LIKELIHOOD_FOR_SUPPORT, RunConfig, parse_guide
from elbokit.data import Dataset, load
from elbokit.models import VAE, CountLikelihood
from elbokit.train.epochs import resolve_device

if TYPE_CHECKING:
    from elbokit.runs.run import Run


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "relu": nn.ReLU, "softplus": nn.Softplus, "elu": nn.ELU, "gelu": nn.GELU,
}  # fmt: skip


def load_data(config: RunConfig) -> Dataset:
    return load(config.data, data_dir=config.data_dir, binarize=config.binarize, seed=config.seed, layer=config.layer)


def resolve_likelihood(config: RunConfig, data: Dataset) -> RunConfig:
    """``config`` with ``likelihood="auto"`` replaced by the one that fits the data's values: Bernoulli for
    values in {0, 1} or [0, 1] (the continuous-Bernoulli is the exact density there, but the Bernoulli is the
    convention results are compared in), a Gaussian with a learned scale per dimension for other reals."""
    if config.likelihood != AUTO_LIKELIHOOD:
        return config
    return dataclasses.replace(config, likelihood=LIKELIHOOD_FOR_SUPPORT[data.support])


def training_points(config: RunConfig, data: Dataset) -> int:
    """N, the points a run trains on (the first ``limit`` of the training split)."""
    return int(data.train[: config.limit].shape[0])


def build_model(config: RunConfig, data_dim: int, num_points: int | None = None, *,
                image_shape: tuple[int, int] | None = None) -> VAE:  # fmt: skip
    """The VAE a config describes: MLP (or, for ``arch="conv"``, convolutional: ``image_shape`` then names the
    images' (H, W)) encoder, the guide (Gaussian or flow; for ``guide="local"`` a
    :class:`elbokit.NonAmortizedGaussian` over ``num_points`` training points) and mirrored decoder, the chosen
    likelihood; float32, the datasets' dtype, whatever torch's default dtype."""
    if config.likelihood == AUTO_LIKELIHOOD:
        raise ValueError("likelihood 'auto' follows the data: resolve it first with resolve_likelihood(config, data)")
    guide = parse_guide(config.guide)
    if guide.kind == "local" and num_points is None:
        raise ValueError("a local guide needs the number of training points (num_points)")
    options = dict(hidden=config.hidden, activation=ACTIVATIONS[config.activation], likelihood=config.likelihood,
                   covariance=guide.covariance, guide=guide.kind, transforms=guide.transforms,
                   num_points=num_points if guide.kind == "local" else None)  # fmt: skip
    if config.arch == "conv":
        if image_shape is None or image_shape[0] * image_shape[1] != data_dim:
            raise ValueError(f"arch conv is for images; {config.data} is not image data (use arch mlp)")
        model = VAE.conv(image_shape, config.latent_dim, **options)  # type: ignore[arg-type]
    else:
        model = VAE.mlp(data_dim, config.latent_dim, **options)  # type: ignore[arg-type]
    return model.to(torch.float32)


def new_model(config: RunConfig, data: Dataset) -> VAE:
    """The freshly initialised model of a run: seeded, checked against the data's support, and (an MLP) with the
    decoder's output bias at the training data's mean (Burda et al. 2016). A resumed run then loads its
    checkpoint over it."""
    config = resolve_likelihood(config, data)
    num_points = training_points(config, data)
    check_model_size(config, data.data_dim, resolve_device(config.device), num_points=num_points,
                     image_shape=data.image_shape)  # fmt: skip
    torch.manual_seed(config.seed)
    model = build_model(config, data.data_dim, num_points, image_shape=data.image_shape)
    check_data(model, data)
    train = data.train[: config.limit]
    if config.arch == "mlp":
        # Not for conv: on sparse images (sprites) a decoder that starts at the data mean is the collapsed model's,
        # and KL stayed at 0 for 14 epochs of dsprites-small where the default start left 0 after 4.
        model.init_output_bias(train.mean(0))
    if isinstance(model.observation, CountLikelihood):  # generation's library: the median training cell's total
        model.observation.set_library(float(train.sum(1).median()))
        model.observation.set_library_prior(torch.log(train.sum(1).double()))  # used by a latent library
    return model


def check_data(model: VAE, data: Dataset) -> None:
    """Refuse data outside the likelihood's support (e.g. values outside [0, 1] for a Bernoulli)."""
    for split in ("train", "validation", "test"):
        try:
            model.observation.check(data.split(split))
        except ValueError as err:
            raise ValueError(f"{data.name} ({split} split): {err}") from None


#: Bytes of memory a training step needs per parameter: the weights, their gradient and Adam's two moments.
BYTES_PER_PARAMETER = 16


def check_model_size(config: RunConfig, data_dim: int, device: torch.device, *, num_points: int = 0,
                     image_shape: tuple[int, int] | None = None) -> None:  # fmt: skip
    """Refuse a model whose parameters and optimizer state would not fit in the device's available memory."""
    hidden = list(config.hidden)
    guide, d = parse_guide(config.guide), config.latent_dim
    conv = 0  # a convolutional network's feature maps per point, and its layers' inputs to the hidden layers
    if config.arch == "conv" and image_shape is not None:
        from elbokit.models.conv import CONV_CHANNELS, conv_sides

        sides = conv_sides(image_shape, len(CONV_CHANNELS))
        conv = sum(c * h * w for c, (h, w) in zip(CONV_CHANNELS, sides[1:], strict=False))
        data_dim = CONV_CHANNELS[len(sides) - 2] * sides[-1][0] * sides[-1][1]  # what the hidden layers see
    if guide.kind == "local":  # a mean and a scale (or a d x d factor) per training point
        encoder = num_points * d * (2 if guide.covariance == "diagonal" else d + 1)
    else:
        encoder = _mlp_parameters([data_dim, *hidden, 2 * config.latent_dim])
    decoder = _mlp_parameters([config.latent_dim, *hidden[::-1], 2 * data_dim])
    activations = 4 * config.batch_size * config.k * (sum(config.hidden) * 2 + 3 * data_dim + 4 * conv) * 4
    needed = (encoder + decoder) * BYTES_PER_PARAMETER + activations
    available = available_memory(device)
    if available is not None and needed > available:
        raise ValueError(f"the model (hidden {','.join(map(str, config.hidden))}, latent_dim {config.latent_dim}, "
                         f"batch_size {config.batch_size}, k {config.k}) needs about {_gib(needed)} to train; "
                         f"{device.type} has {_gib(available)} available")  # fmt: skip


def _mlp_parameters(sizes: list[int]) -> int:
    """Weights and biases of an MLP with these layer sizes (an upper bound for every guide and likelihood's
    output heads, which are at most twice the width)."""
    return sum((a + 1) * b for a, b in itertools.pairwise(sizes))


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory free for new tensors on ``device`` (None where the OS does not say)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_sample_size(run: Run, n: int, *, image: bool) -> None:
    """Refuse ``n`` samples that would not fit in memory (or in one picture)."""
    if image and n > MAX_GRID:
        raise ValueError(f"a PNG grid holds at most {MAX_GRID} samples, got --n {n}; write more with --out FILE.npy")
    device = next(run.model.parameters()).device
    widths = run.config.latent_dim + sum(run.config.hidden) + 3 * run.data.data_dim
    needed, available = 4 * n * widths, available_memory(device)
    if available is not None and needed > available:
        raise ValueError(f"--n {n} samples need about {_gib(needed)}; {device.type} has {_gib(available)} available")


#: The most samples ``elbokit sample`` draws into one PNG grid.
MAX_GRID = 10_000



