"""The convolutional VAE (``VAE.conv``, ``--arch conv``): the networks' shapes and parameter count against Burgess et
al. (2018)'s architecture counted by hand, the estimators' shape convention, and the run-level path."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import elbokit as ek
from elbokit.config import RunConfig
from elbokit.models import VAE
from elbokit.models.conv import ConvDecoder, ConvEncoder, conv_sides


@pytest.mark.parametrize(
    ("shape", "sides"),
    [((64, 64), [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]), ((32, 32), [(32, 32), (16, 16), (8, 8), (4, 4)]),
     ((28, 28), [(28, 28), (14, 14), (7, 7)]), ((8, 8), [(8, 8), (4, 4)]), ((64, 32), [(64, 32), (32, 16),
     (16, 8), (8, 4)])],
)  # fmt: skip
def test_each_convolution_halves_the_sides_while_even_and_above_four(
    shape: tuple[int, int], sides: list[tuple[int, int]]
) -> None:
    assert conv_sides(shape, 4) == sides
    encoder = ConvEncoder(shape, 20)
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == len(sides) - 1
    x = torch.rand(3, shape[0] * shape[1])
    assert encoder(x).shape == (3, 20)
    decoder = ConvDecoder(10, shape)
    assert decoder(torch.randn(3, 10)).shape == (3, shape[0] * shape[1])


def test_burgess_architecture_has_the_hand_counted_parameters() -> None:
    # Encoder: conv 1->32 (4x4) and three 32->32, each with bias; FC 32*4*4=512 -> 256 -> 256 -> 2d (d = 10).
    encoder = 1 * 32 * 16 + 32 + 3 * (32 * 32 * 16 + 32) + (512 * 256 + 256) + (256 * 256 + 256) + (256 * 20 + 20)
    # Decoder: FC 10 -> 256 -> 256 -> 512, three 32->32 transposed convs with bias, a last 32->1 without, and
    # one bias per output pixel.
    decoder = (10 * 256 + 256) + (256 * 256 + 256) + (256 * 512 + 512) + 3 * (32 * 32 * 16 + 32) + 32 * 16 + 64 * 64
    model = VAE.conv((64, 64), 10)
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    assert all(isinstance(m, nn.ReLU) for m in model.modules() if isinstance(m, (nn.ReLU, nn.Tanh)))


def test_decoder_acts_on_samples_first_like_a_linear_layer() -> None:
    torch.manual_seed(0)
    decoder = ConvDecoder(4, (16, 16), out_channels=2)
    z = torch.randn(3, 5, 4)  # (K, B, d)
    out = decoder(z)
    assert out.shape == (3, 5, 2 * 256)
    torch.testing.assert_close(out[1], decoder(z[1]), rtol=1e-5, atol=1e-6)
    encoder = ConvEncoder((16, 16), 6)
    x = torch.rand(3, 5, 256)
    torch.testing.assert_close(encoder(x)[2], encoder(x[2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("guide", ["gaussian", "full", "flow"])
def test_bounds_and_gradients_reach_every_parameter(guide: str) -> None:
    torch.manual_seed(0)
    kind = "flow" if guide == "flow" else "gaussian"
    covariance = "full" if guide == "full" else "diagonal"
    model = VAE.conv((16, 16), 3, channels=(8, 8), hidden=(32,), guide=kind, covariance=covariance)  # type: ignore[arg-type]
    x = torch.rand(6, 256).bernoulli()
    bound = ek.elbo(model, model.encoder, x, samples=2)
    iwae = ek.iwae(model, model.encoder, x, k=4)
    assert bound.value.shape == iwae.value.shape == (6,)
    assert bool(torch.isfinite(bound.value).all())
    bound.loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_decoder_scale_and_output_bias() -> None:
    model = VAE.conv((16, 16), 2, channels=(4,), hidden=(8,), likelihood="gaussian:decoder")
    assert model.decoder.out_channels == 2  # a mean and a scale per pixel
    mean = torch.rand(256) * 0.8 + 0.1
    model.init_output_bias(mean)
    torch.testing.assert_close(model.decoder.output_bias[:256].detach(), mean)  # the Gaussian's mean: itself
    bernoulli = VAE.conv((16, 16), 2, channels=(4,), hidden=(8,))
    bernoulli.init_output_bias(mean)
    torch.testing.assert_close(bernoulli.decoder.output_bias.detach(), torch.logit(mean))


@pytest.mark.parametrize(
    ("build", "message"),
    [(lambda: VAE.conv((5, 5), 2), "must be even and above 4"),
     (lambda: VAE.conv((4, 4), 2), "must be even and above 4"),
     (lambda: VAE.conv((16, 16), 2, likelihood="poisson"), "count likelihood needs arch mlp"),
     (lambda: VAE.conv((16, 16), 2, channels=()), "channels must be a non-empty list"),
     (lambda: VAE.conv((16, 16), 2, hidden=(), guide="flow"), "hidden must not be empty"),
     (lambda: VAE.conv((16, 16), 0), "latent_dim"),
     (lambda: ConvEncoder((16, 16), 4)(torch.rand(2, 255)), "16x16 images")],
)  # fmt: skip
def test_bad_arguments_are_one_line_errors(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_run_config_fills_in_each_archs_defaults() -> None:
    assert (RunConfig().hidden, RunConfig().activation) == ((200, 200), "tanh")
    conv = RunConfig(arch="conv")
    assert (conv.hidden, conv.activation) == ((256, 256), "relu")
    assert RunConfig(arch="conv", hidden=(64,), activation="elu").hidden == (64,)
    assert RunConfig.from_dict(json.loads(json.dumps(conv.to_dict()))) == conv  # config.json round trip
    old = RunConfig().to_dict()
    del old["arch"]  # a run written before the field existed is an mlp run
    assert RunConfig.from_dict(old).arch == "mlp"
    with pytest.raises(ValueError, match="arch must be one of mlp, conv"):
        RunConfig(arch="cnn")
    with pytest.raises(ValueError, match="arch applies to model vae"):
        RunConfig(model="bnn", arch="conv")
