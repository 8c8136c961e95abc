r"""The variational autoencoder: a decoder network for p(x|z) and an encoder network, the guide, for q(z|x).

.. math::
    z \sim \mathcal N(0, I_d), \qquad x \mid z \sim p(x \mid \mathrm{dec}_\theta(z)), \qquad
    q_\phi(z \mid x) = \mathcal N(m_\phi(x), S_\phi(x)) \ \text{(or that Gaussian pushed through a flow)}

(Kingma & Welling 2014; Rezende et al. 2014). A VAE is a :class:`~elbokit.models.LatentModel` (``prior()``,
``likelihood(z)``) whose ``encoder`` is a guide, so every estimator takes it as ``(vae, vae.encoder, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from elbokit.models._checks import check_batch, check_positive_int, check_values
from elbokit.models.likelihoods import Likelihood

if TYPE_CHECKING:
    from elbokit.guides import Covariance


class VAE(nn.Module):
    r"""p(z) = N(0, I_d), p(x|z) = ``likelihood(decoder(z))``, q(z|x) = ``encoder(x)``.

    Args:
        encoder: a guide, x (B, D) -> Distribution with batch (B,), event (d,), typically
            :class:`elbokit.AmortizedGaussian`.
        decoder: z (..., d) -> (..., likelihood.output_size(D)); it must act on the last dimension only, as
            ``nn.Linear`` does, because the estimators call it on (K, B, d) samples at once.
        likelihood: the observation model, stored as ``observation`` (``likelihood`` is the protocol's method).
        latent_dim: d.
        data_dim: D, if known (:meth:`mlp` knows it): the estimators then check x's event shape (D,) before the
            encoder sees it (``event_shape``), and the data-taking methods here do too.

    References:
        Kingma & Welling, "Auto-encoding variational Bayes", ICLR 2014.
        Rezende, Mohamed & Wierstra, "Stochastic backpropagation and approximate inference in deep generative
        models", ICML 2014.
    """

    _prior_loc: Tensor
    _prior_scale: Tensor

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood, *, latent_dim: int,
        data_dim: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        check_positive_int("latent_dim", latent_dim)
        if data_dim is not None:
            check_positive_int("data_dim", data_dim)
        if not isinstance(likelihood, Likelihood):
            raise ValueError(f"likelihood must be an elbokit Likelihood, got {type(likelihood).__name__}")
        self.encoder = encoder
        bind = getattr(encoder, "bind", None)
        if callable(bind):  # a guide that fits q under the model (NonAmortizedGaussian)
            bind(self)
        self.decoder = decoder
        self.observation = likelihood
        self.latent_dim = latent_dim
        self.data_dim = data_dim
        # Buffers, so that p(z) follows .to(device, dtype); not saved: they are constants.
        self.register_buffer("_prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("_prior_scale", torch.ones(latent_dim), persistent=False)

    @classmethod
    def mlp(
        cls,
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
        """An MLP VAE: encoder D -> hidden... -> q's parameters, decoder d -> reversed(hidden)... -> p's.

        With ``hidden=(200, 200)``, ``latent_dim=50`` and tanh this is Burda et al. (2016)'s 784-200-200-50
        architecture.

        Args:
            data_dim: D.
            latent_dim: d.
            hidden: encoder hidden widths; the decoder uses them in reverse.
            activation: nonlinearity between layers, in both networks.
            likelihood: a :class:`Likelihood` or its spec (``"bernoulli"``, ``"gaussian:learned"``, ...).
            covariance: q's covariance, ``"diagonal"`` or ``"full"`` (a Gaussian guide's; a flow's base is diagonal).
            min_scale: floor of q's (or its base's) standard deviations.
            guide: ``"gaussian"`` (:class:`elbokit.AmortizedGaussian`) or ``"flow"`` (:class:`elbokit.AmortizedFlow`:
                the encoder's Gaussian pushed through ``transforms`` IAF steps conditioned on its last hidden layer;
                needs the optional ``zuko``).
                Or ``"local"``: no encoder network but a :class:`elbokit.NonAmortizedGaussian` over ``num_points``
                training points (non-amortized VI; ``hidden`` then shapes the decoder alone).
            transforms: K, the flow's steps (``guide="flow"`` only).
            num_points: N, the training points of a ``"local"`` guide.

        References:
            Burda, Grosse & Salakhutdinov, "Importance weighted autoencoders", ICLR 2016.
        """
        from elbokit.models.mlp_vae import mlp_vae  # builds on this class

        return mlp_vae(data_dim, latent_dim, hidden=hidden, activation=activation, likelihood=likelihood,
                       covariance=covariance, min_scale=min_scale, guide=guide, transforms=transforms,
                       num_points=num_points)  # fmt: skip

    @classmethod
    def conv(
        cls,
        image_shape: tuple[int, int],
        latent_dim: int,
        *,
        channels: Sequence[int] = (32, 32, 32, 32),
        hidden: Sequence[int] = (256, 256),
        activation: type[nn.Module] = nn.ReLU,
        likelihood: str | Likelihood = "bernoulli",
        covariance: Covariance = "diagonal",
        min_scale: float = 1e-5,
        guide: Literal["gaussian", "flow", "local"] = "gaussian",
        transforms: int = 4,
        num_points: int | None = None,
    ) -> VAE:
        """A convolutional VAE for H×W images (:mod:`elbokit.models.conv`): 4×4 convolutions of stride 2 and fully
        connected layers in the encoder, the same in reverse in the decoder. The defaults on 64×64 images are
        Burgess et al. (2018)'s β-VAE network; ``channels``, ``hidden`` and the rest are :meth:`mlp`'s, with
        ``hidden`` the fully connected widths after the convolutions.

        References:
            Burgess et al., "Understanding disentangling in β-VAE", arXiv:1804.03599, 2018.
        """
        from elbokit.models.conv_vae import conv_vae  # builds on this class

        return conv_vae(image_shape, latent_dim, channels=channels, hidden=hidden, activation=activation,
                        likelihood=likelihood, covariance=covariance, min_scale=min_scale, guide=guide,
                        transforms=transforms, num_points=num_points)  # fmt: skip

    # ---- the model: LatentModel protocol ---------------------------------------------------------------------
    @property
    def event_shape(self) -> torch.Size | None:
        """Event shape of one data point x: (D,), or ``None`` where D was not given."""
        return None if self.data_dim is None else torch.Size((self.data_dim,))

    def _check_x(self, x: Tensor) -> None:
        """x must be a non-empty (B, D) batch of the model's dtype and device (metadata only: no device sync)."""
        loc = self._prior_loc
        check_batch(x, event_shape=self.event_shape, dtype=loc.dtype, device=loc.device)

    def _prior_parameters(self) -> tuple[Tensor, Tensor]:
        loc, scale = self._prior_loc, self._prior_scale
        library = getattr(self.observation, "log_library_prior", None)
        if getattr(self.observation, "latent_library", False) and isinstance(library, Tensor):
            # counts with a latent library: z's last coordinate is log ℓ ~ N(m, s²) of the training cells
            loc = torch.cat([loc[:-1], library[:1].to(loc)])
            scale = torch.cat([scale[:-1], library[1:].to(scale)])
        return loc, scale

    def prior(self) -> Distribution:
        """p(z) = N(0, I_d): batch (), event (d,), on the module's device and dtype (for a count likelihood with a
        latent library, the last coordinate is log ℓ with the likelihood's log-normal library prior)."""
        return Independent(Normal(*self._prior_parameters()), 1)

    def likelihood(self, z: Tensor) -> Distribution:
        """p(x|z) = observation(decoder(z)): z (..., d) -> batch (...), event (D,)."""
        return self.observation(self.decoder(z))  # decoder output: (..., output_size(D))

    def forward(self, x: Tensor) -> Distribution:
        """q(z|x) = encoder(x): batch (B,), event (d,)."""
        return self.encoder(x)

    # ---- initialisation ----------------------------------------------------------------------------------
    @torch.no_grad()
    def init_output_bias(self, data_mean: Tensor) -> None:
        """Set the decoder's last bias so that E[x|z] = data_mean wherever the last weights give 0.

        Bernoulli: logit(clamped mean) (as Burda et al. 2016 did); continuous Bernoulli: the logits whose CB
        mean is the data mean; Gaussian and Laplace: the mean itself (a decoder scale's raw outputs are left
        as they are).

        Args:
            data_mean: (D,) per-coordinate mean of the training data.

        Raises:
            TypeError: if the decoder's last module is not an ``nn.Linear`` with a bias.
        """
        net = getattr(self.decoder, "net", self.decoder)  # a LibraryDecoder's network (latent library)
        last = net[-1] if isinstance(net, nn.Sequential) else net
        bias = getattr(self.decoder, "output_bias", None)  # a ConvDecoder's bias per output entry
        if isinstance(bias, nn.Parameter):
            out_features = bias.shape[0]
        elif isinstance(last, nn.Linear) and last.bias is not None:
            bias, out_features = last.bias, last.out_features
        else:
            raise TypeError(f"init_output_bias needs a decoder ending in nn.Linear with a bias (or with an "
                            f"output_bias), got {type(last).__name__}")  # fmt: skip
        if not isinstance(data_mean, Tensor) or not data_mean.is_floating_point():
            given = data_mean.dtype if isinstance(data_mean, Tensor) else type(data_mean).__name__
            raise ValueError(f"data_mean must be a floating-point tensor, got {given}")
        data_mean = data_mean.reshape(-1)
        check_values(data_mean, "data_mean")
        d = data_mean.shape[0]
        passed = int(getattr(self.observation, "latent_library", False))  # log ℓ, passed by the decoder
        if self.observation.output_size(d) - passed != out_features:
            raise ValueError(
                f"data_mean has {d} entries; the decoder outputs {out_features}, "
                f"not {self.observation.output_size(d)} as the {self.observation.name} likelihood needs for D = {d}"
            )
        target = data_mean.to(dtype=bias.dtype, device=bias.device)
        bias[:d] = self.observation.inverse_mean(target)
        set_library = getattr(self.observation, "set_library", None)
        if callable(set_library):  # counts: generation's library, the mean total until a better one is set
            set_library(float(target.sum()))

    # ---- utilities -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """E[x|z]: z (..., d) -> (..., D)."""
        return self.observation.mean(self.decoder(z))

    def _decode_or_draw(self, z: Tensor, mean: bool) -> Tensor:
        return self.decode(z) if mean else self.likelihood(z).sample()

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, mean: bool = True) -> Tensor:
        """z_i ~ p(z), i = 1..n, decoded to E[x|z_i] (``mean=True``) or to a draw x_i ~ p(x|z_i): (n, D).

        z follows ``generator``; a draw of x uses torch's global RNG (torch.distributions takes no generator).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        loc, scale = self._prior_parameters()
        z = loc + scale * torch.randn(n, self.latent_dim, generator=generator, device=loc.device, dtype=loc.dtype)
        return self._decode_or_draw(z, mean)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """A point summary of q(z|x), (B, d): its mean E_q z; for a flow guide, whose q has no closed-form mean,
        the base's mean pushed through the flow (``FlowDistribution.location``; E_q z while the flow is affine)."""
        self._check_x(x)
        q = self.encoder(x)
        try:
            return q.mean
        except NotImplementedError:
            location = getattr(q, "location", None)
            if not isinstance(location, Tensor):
                raise TypeError(f"{type(q).__name__} has neither a mean nor a location to encode x by") from None
            return location

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, mean: bool = True) -> Tensor:
        """Decode the encoding of x (:meth:`encode`, E_q z for a Gaussian guide): E[x | z] (``mean=True``) or a
        draw from p(x | z): (B, D)."""
        z = self.encode(x)  # (B, d)
        reconstruction = getattr(self.observation, "reconstruction", None)
        if callable(reconstruction):  # counts: at the cell's own library
            return reconstruction(self.decoder(z), x, mean=mean)
        return self._decode_or_draw(z, mean)

    @torch.no_grad()
    def interpolate(self, x_a: Tensor, x_b: Tensor, steps: int = 8) -> Tensor:
        """E[x|z] along the segment between the encodings of x_a and x_b (:meth:`encode`, E_q[z|x] for a
        Gaussian guide), endpoints included: (steps, D).

        Args:
            x_a: (D,) or (1, D).
            x_b: (D,) or (1, D).
            steps: points on the segment, >= 2.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
        ends = []
        for name, x in (("x_a", x_a), ("x_b", x_b)):
            if x.dim() == 1:
                x = x.unsqueeze(0)
            if x.dim() != 2 or x.shape[0] != 1:
                raise ValueError(f"{name} must have shape (D,) or (1, D), got {tuple(x.shape)}")
            ends.append(x)
        m = self.encode(torch.cat(ends))  # (2, d)
        t = torch.linspace(0, 1, steps, dtype=m.dtype, device=m.device).unsqueeze(-1)  # (steps, 1)
        z = torch.lerp(m[:1], m[1:], t)  # (steps, d), exactly m[0] at t = 0 and m[1] at t = 1
        return self.decode(z)
