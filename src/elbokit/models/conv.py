r"""Convolutional encoder and decoder networks for images, after Burgess et al. (2018).

.. math::
    x \in [0, 1]^{H \times W} \xrightarrow{\ \text{conv } 4{\times}4,\ \text{stride } 2\ (\times L)\ }
    \mathbb R^{C \times H / 2^L \times W / 2^L} \xrightarrow{\ \text{linear} \ } \mathbb R^{256}
    \xrightarrow{\ \text{linear} \ } \mathbb R^{256} \to q\text{'s parameters}

and the decoder the same in reverse, with transposed convolutions. On 64×64 images with ``channels=(32, 32, 32,
32)`` and ``hidden=(256, 256)`` this is the β-VAE architecture of Burgess et al. (2018), appendix A.1: four
32-channel 4×4 convolutions of stride 2 (64 → 32 → 16 → 8 → 4), two fully connected layers of 256, ReLU.
Each convolution halves both sides, so an image takes as many of them as its sides halve while even and above 4,
at most ``len(channels)``: 64×64 four, 32×32 three, 28×28 two (28 → 14 → 7), 8×8 one.

Both networks keep the estimators' shape convention: the encoder takes flat images (..., H W), the decoder maps
z (..., d) to flat outputs (..., C_out H W) for any leading dimensions, e.g. (K, B, d) samples.

References:
    Burgess et al., "Understanding disentangling in β-VAE", NIPS 2017 workshop on learning disentangled
    representations (arXiv:1804.03599, 2018).
    Higgins et al., "β-VAE: learning basic visual concepts with a constrained variational framework", ICLR 2017.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from elbokit.models.mlp import mlp

#: Burgess et al. (2018)'s convolution channels and fully connected widths.
CONV_CHANNELS: tuple[int, ...] = (32, 32, 32, 32)
CONV_HIDDEN: tuple[int, ...] = (256, 256)
_KERNEL, _STRIDE, _PADDING = 4, 2, 1  # each convolution maps a side n to n / 2 (n even)


def conv_sides(image_shape: tuple[int, int], layers: int) -> list[tuple[int, int]]:
    """The feature maps' sides, the image's first: halved while both are even and above 4, at most ``layers``
    times. ValueError when the image's sides do not halve even once (an odd side, or at most 4)."""
    if (len(image_shape) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_shape)):
        raise ValueError(f"image_shape must be (H, W) with H, W integers >= 1, got {image_shape!r}")
    sides = [tuple(image_shape)]
    while len(sides) <= layers and all(s % 2 == 0 and s > 4 for s in sides[-1]):
        h, w = sides[-1]
        sides.append((h // 2, w // 2))
    if len(sides) == 1:
        raise ValueError(f"a convolutional network halves the image's sides, which must be even and above 4; "
                         f"got {image_shape[0]}x{image_shape[1]}")  # fmt: skip
    return sides  # type: ignore[return-value]


def check_sizes(name: str, sizes: Sequence[int], *, empty: bool) -> tuple[int, ...]:
    sizes = tuple(sizes)
    if (not sizes and not empty) or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ValueError(f"{name} must be {'' if empty else 'a non-empty list of '}integers >= 1, got {sizes}")
    return sizes


class ConvEncoder(nn.Module):
    """Flat images (..., H W) -> (..., out_features): convolutions, then fully connected layers.

    Args:
        image_shape: (H, W).
        out_features: the width of the output (q's parameters, or a flow's context when ``final=False``).
        channels: output channels of each convolution, as many used as the image's sides allow.
        hidden: widths of the fully connected layers after the convolutions.
        activation: the nonlinearity after every layer but the last.
        final: whether the last layer is a linear head to ``out_features`` (True) or the output is the last hidden
            layer after its activation (False: ``out_features`` must equal ``hidden[-1]``; a flow guide's trunk).
    """

    def __init__(
        self, image_shape: tuple[int, int], out_features: int, *, channels: Sequence[int] = CONV_CHANNELS,
        hidden: Sequence[int] = CONV_HIDDEN, activation: type[nn.Module] = nn.ReLU, final: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        channels = check_sizes("channels", channels, empty=False)
        hidden = check_sizes("hidden", hidden, empty=not final)
        sides = conv_sides(image_shape, len(channels))
        self.image_shape = tuple(image_shape)
        self.out_features = out_features
        layers: list[nn.Module] = []
        for c_in, c_out in zip((1, *channels), channels[: len(sides) - 1], strict=False):
            layers += [nn.Conv2d(c_in, c_out, _KERNEL, _STRIDE, _PADDING), activation()]
        h, w = sides[-1]
        flat = channels[len(sides) - 2] * h * w
        layers.append(nn.Flatten())
        if final:
            layers.append(mlp((flat, *hidden, out_features), activation=activation))
        else:
            if not hidden or hidden[-1] != out_features:
                raise ValueError(f"a trunk's output is its last hidden layer: out_features must be hidden[-1], "
                                 f"got {out_features} and {hidden}")  # fmt: skip
            layers += [mlp((flat, *hidden), activation=activation), activation()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., H W) -> (..., out_features)."""
        h, w = self.image_shape
        if x.shape[-1] != h * w:
            raise ValueError(f"x must hold {h}x{w} images, flat (..., {h * w}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        out = self.net(x.reshape(-1, 1, h, w))  # (N, out_features)
        return out.reshape(*lead, out.shape[-1])


class ConvDecoder(nn.Module):
    """z (..., d) -> (..., out_channels H W): fully connected layers, then transposed convolutions.

    The output's entries are channel-major (all H W of channel 0, then channel 1, ...), as the likelihoods read
    them (means first, then per-point scales). The last convolution has no bias; ``output_bias`` (out_channels H
    W,) adds one per output entry instead, so that :meth:`elbokit.models.VAE.init_output_bias` can set E[x|z] to
    the data mean at the start as it does for an MLP decoder.

    Args:
        latent_dim: d.
        image_shape: (H, W).
        out_channels: output values per pixel (1 for a Bernoulli; 2 for a Gaussian with a decoder scale).
        channels: the encoder's convolution channels, mirrored here.
        hidden: the encoder's fully connected widths, mirrored here.
        activation: the nonlinearity after every layer but the last.
    """

    def __init__(
        self, latent_dim: int, image_shape: tuple[int, int], *, out_channels: int = 1,
        channels: Sequence[int] = CONV_CHANNELS, hidden: Sequence[int] = CONV_HIDDEN,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:  # fmt: skip
        super().__init__()
        channels = check_sizes("channels", channels, empty=False)
        hidden = check_sizes("hidden", hidden, empty=True)
        sides = conv_sides(image_shape, len(channels))
        used = channels[: len(sides) - 1][::-1]  # the deepest first
        self.image_shape = tuple(image_shape)
        self.out_channels = out_channels
        self._start = (used[0], *sides[-1])  # (C, h, w) the first transposed convolution takes
        h, w = sides[-1]
        self.dense = nn.Sequential(mlp((latent_dim, *hidden[::-1], used[0] * h * w), activation=activation),
                                   activation())  # fmt: skip
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(used, (*used[1:], out_channels), strict=True)):
            last = i == len(used) - 1
            layers.append(nn.ConvTranspose2d(c_in, c_out, _KERNEL, _STRIDE, _PADDING, bias=not last))
            if not last:
                layers.append(activation())
        self.deconv = nn.Sequential(*layers)
        self.output_bias = nn.Parameter(torch.zeros(out_channels * image_shape[0] * image_shape[1]))

    def forward(self, z: Tensor) -> Tensor:
        """z (..., d) -> (..., out_channels H W)."""
        lead = z.shape[:-1]
        h = self.dense(z.reshape(-1, z.shape[-1])).view(-1, *self._start)  # (N, C, h, w)
        out = self.deconv(h).flatten(1) + self.output_bias  # (N, out_channels H W)
        return out.reshape(*lead, out.shape[-1])
