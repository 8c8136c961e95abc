"""The MLP VAE: fully connected encoder and mirrored decoder (:meth:`VAE.mlp`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from torch import nn

from elbokit.models._checks import check_guide_options, check_positive_int
from elbokit.models.likelihoods import Likelihood, make_likelihood
from elbokit.models.mlp import mlp
from elbokit.models.vae import VAE

if TYPE_CHECKING:
    from elbokit.guides import Covariance


def mlp_vae(
    data_dim: int,
    latent_dim: int,
    *,
    hidden: Sequence[int] = (200, 200),
    activation: type[nn.Module] = nn.Tanh,
    likelihood: str | Likelihood = "bernoulli",
    covariance: Covariance = "diagonal",
    min_scale: float = 1e-5,
    guide: Literal["gaussian", "flow", "local"] = "gaussian",
    transforms: int = 4,
    num_points: int | None = None,
) -> VAE:
    """:meth:`VAE.mlp`: the arguments are its."""
    # not at module level: guides imports models
    from elbokit.guides import AmortizedFlow, AmortizedGaussian, NonAmortizedGaussian

    check_positive_int("data_dim", data_dim)
    check_guide_options(latent_dim, min_scale, guide, covariance, num_points)
    observation = make_likelihood(likelihood, data_dim) if isinstance(likelihood, str) else likelihood
    hidden = tuple(hidden)
    # counts with a latent library: z gains a last coordinate, log ℓ, that the decoder passes through
    library = 1 if getattr(observation, "latent_library", False) else 0
    decoded_dim, latent_dim = latent_dim, latent_dim + library
    encoder: nn.Module
    if guide == "local":
        assert num_points is not None
        check_positive_int("num_points", num_points)
        encoder = NonAmortizedGaussian(num_points, latent_dim, covariance=covariance)
    elif guide == "flow":
        encoder = AmortizedFlow.mlp(
            data_dim, latent_dim, hidden=hidden, transforms=transforms, activation=activation, min_scale=min_scale
        )
    else:
        encoder = AmortizedGaussian.mlp(
            data_dim, latent_dim, hidden=hidden, covariance=covariance, activation=activation, min_scale=min_scale
        )
    if getattr(observation, "encoder_input", None) == "log1p" and isinstance(encoder, nn.Module):
        from elbokit.models.counts import Log1pFlatten

        net = getattr(encoder, "encoder", None)  # an MLP guide's network starts with its Flatten
        if isinstance(net, nn.Sequential) and isinstance(net[0], nn.Flatten):
            net[0] = Log1pFlatten()  # counts: the encoder sees log(1 + x), as scVI's
    decoder: nn.Module = mlp((decoded_dim, *reversed(hidden), observation.output_size(data_dim) - library),
                             activation=activation)  # fmt: skip
    if library:
        from elbokit.models.counts import LibraryDecoder

        decoder = LibraryDecoder(decoder)
    return VAE(encoder, decoder, observation, latent_dim=latent_dim, data_dim=data_dim)
