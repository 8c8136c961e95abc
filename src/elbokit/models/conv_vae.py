"""The convolutional VAE: :class:`ConvEncoder` under the guide, :class:`ConvDecoder` for p(x|z) (:meth:`VAE.conv`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from torch import nn

from elbokit.models._checks import check_guide_options, check_positive_int
from elbokit.models.conv import CONV_CHANNELS, CONV_HIDDEN, ConvDecoder, ConvEncoder, check_sizes, conv_sides
from elbokit.models.counts import CountLikelihood
from elbokit.models.likelihoods import Likelihood, make_likelihood
from elbokit.models.vae import VAE

if TYPE_CHECKING:
    from elbokit.guides import Covariance


def conv_vae(
    image_shape: tuple[int, int],
    latent_dim: int,
    *,
    channels: Sequence[int] = CONV_CHANNELS,
    hidden: Sequence[int] = CONV_HIDDEN,
    activation: type[nn.Module] = nn.ReLU,
    likelihood: str | Likelihood = "bernoulli",
    covariance: Covariance = "diagonal",
    min_scale: float = 1e-5,
    guide: Literal["gaussian", "flow", "local"] = "gaussian",
    transforms: int = 4,
    num_points: int | None = None,
) -> VAE:
    """:meth:`VAE.conv`: the arguments are its."""
    from elbokit.guides import AmortizedFlow, AmortizedGaussian, NonAmortizedGaussian

    check_guide_options(latent_dim, min_scale, guide, covariance, num_points)
    channels = check_sizes("channels", channels, empty=False)
    conv_sides(image_shape, len(channels))  # the image's sides must halve at least once
    hidden = tuple(hidden)
    if guide == "flow" and not hidden:
        raise ValueError("a flow guide is conditioned on the encoder's last hidden layer: hidden must not be empty")
    data_dim = image_shape[0] * image_shape[1]
    observation = make_likelihood(likelihood, data_dim) if isinstance(likelihood, str) else likelihood
    if isinstance(observation, CountLikelihood):
        raise ValueError(f"arch conv models images; the {observation.name} count likelihood needs arch mlp")
    out = observation.output_size(data_dim)
    if out % data_dim:
        raise ValueError(f"the {observation.name} likelihood's {out} outputs are not whole channels of {data_dim}")
    shape = dict(channels=channels, hidden=hidden, activation=activation)
    encoder: nn.Module
    if guide == "local":
        assert num_points is not None
        check_positive_int("num_points", num_points)
        encoder = NonAmortizedGaussian(num_points, latent_dim, covariance=covariance)
    elif guide == "flow":
        trunk = ConvEncoder(image_shape, hidden[-1], final=False, **shape)  # type: ignore[arg-type]
        encoder = AmortizedFlow(trunk, latent_dim, context_dim=hidden[-1], transforms=transforms, min_scale=min_scale)
    else:
        head = AmortizedGaussian.output_size(latent_dim, covariance)
        encoder = AmortizedGaussian(ConvEncoder(image_shape, head, **shape),  # type: ignore[arg-type]
                                    latent_dim, covariance=covariance, min_scale=min_scale)  # fmt: skip
    decoder = ConvDecoder(latent_dim, image_shape, out_channels=out // data_dim, **shape)  # type: ignore[arg-type]
    return VAE(encoder, decoder, observation, latent_dim=latent_dim, data_dim=data_dim)
