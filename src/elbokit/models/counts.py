r"""Likelihoods for counts (gene expression: cells x genes of UMI counts), as single-cell VAEs use them (scVI,
Lopez et al. 2018).

The decoder's first D outputs are the logits of the expression proportions ρ = softmax(η) (they sum to 1 over
the genes), and the mean count of gene j is μ_j = ℓ ρ_j with ℓ the cell's library size. With ``library=
"observed"`` (scVI's ``use_observed_lib_size``, the default) ℓ is the cell's own total count Σ_j x_j, read
from the x whose density is evaluated; p(x | z) is then the density of x given z and its total, as scVI's. With
``library="latent"`` (spec suffix ``:latent``) log ℓ is the last coordinate of z, with the prior N(m, s²) of the
training cells' log totals (scVI's ``use_observed_lib_size=False``, one batch), inferred by the encoder with the
rest of z: a proper density over x, which generates cells of varying depth. Then

.. math::
    \text{poisson:}\ x_j \sim \mathrm{Poisson}(\mu_j), \qquad
    \text{nb:}\ x_j \sim \mathrm{NB}(\mu_j, \theta_j),\
    \mathrm E x_j = \mu_j,\ \mathrm{Var}\, x_j = \mu_j + \mu_j^2/\theta_j,

.. math::
    \text{zinb:}\ p(x_j) = \pi_j [x_j = 0] + (1 - \pi_j)\, \mathrm{NB}(x_j; \mu_j, \theta_j), \quad
    \pi_j = \sigma(\eta^{\pi}_j).

The inverse dispersion θ is per gene (a free log θ_j shared by all cells, the default), per cell (the decoder
outputs D more values: log θ per cell and gene) or a fixed number (``"nb:10"``). ZINB's dropout logits are D
more decoder outputs. The encoder of a VAE with a count likelihood sees log(1 + x) (:attr:`CountLikelihood.
encoder_input`).

A count likelihood has no x to read a library from when it generates (``sample``, ``mean`` of p(x|z) alone): it
then uses ``library``, a buffer set to the median total count of the training cells (``VAE.init_output_bias``
sets it with the decoder's bias), so that samples from p(z) look like a typical cell. A reconstruction of a
given cell uses that cell's own total (:meth:`CountLikelihood.reconstruction`).

The NB log density is computed without the cancellation of torch's ``NegativeBinomial.log_prob``, whose
lgamma(x + θ) - lgamma(θ) loses ~1e-4 nats in float32 at θ = 1e3 and ~1 nat at θ = 1e6: see
:func:`elbokit.distributions.counts.nb_log_prob`.

References:
    Lopez, Regier, Cole, Jordan & Yosef, "Deep generative modeling for single-cell transcriptomics", Nature
    Methods 15, 2018.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Poisson, constraints

from elbokit.distributions.counts import NegativeBinomialMean, ZeroInflatedNegativeBinomial, nb_log_prob_log_mean
from elbokit.models.likelihoods import Likelihood

COUNT_LIKELIHOODS: tuple[str, ...] = ("poisson", "nb", "zinb")
_NO_SHAPE = torch.Size()
DISPERSIONS = ("gene", "cell")
LIBRARIES = ("observed", "latent")

class CountDistribution(Distribution):
    """p(x | z) of a count likelihood over cells: batch (...), event (D,), the genes independent given z and
    the library. ``log_prob(x)`` takes each cell's library from x itself (observed library) unless one is fixed;
    ``sample`` and ``mean`` use the fixed library (or the likelihood's default)."""

    support = constraints.independent(constraints.nonnegative_integer, 1)
    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012 (torch's Distribution declares it so)

    def __init__(self, family: str, logits: Tensor, theta: Tensor | None, gate_logits: Tensor | None,
                 library: Tensor | None, default_library: Tensor) -> None:  # fmt: skip
        self.family, self.logits, self.theta, self.gate_logits = family, logits, theta, gate_logits
        self.library, self.default_library = library, default_library
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def _per_gene(self, library: Tensor) -> Distribution:
        """The distribution of each gene's count at this library (broadcast against the proportions)."""
        mu = library * torch.softmax(self.logits, dim=-1)
        if self.family == "poisson":
            return Poisson(mu, validate_args=False)
        assert self.theta is not None
        if self.family == "nb":
            return NegativeBinomialMean(mu, self.theta, validate_args=False)
        assert self.gate_logits is not None
        return ZeroInflatedNegativeBinomial(mu, self.theta, self.gate_logits, validate_args=False)

    def _fixed_library(self) -> Tensor:
        return self.default_library if self.library is None else self.library

    def log_prob(self, value: Tensor) -> Tensor:
        """Σ_j log p(x_j | z), from log μ = log ℓ + log softmax(η) directly (no μ formed and logged again)."""
        library = value.sum(-1, keepdim=True) if self.library is None else self.library
        log_mu = torch.log(library) + torch.log_softmax(self.logits, dim=-1)
        if self.family == "poisson":
            per_gene = value * log_mu - torch.exp(log_mu) - torch.lgamma(value + 1)
        else:
            assert self.theta is not None
            per_gene = nb_log_prob_log_mean(value, log_mu, self.theta)
            if self.family == "zinb":
                assert self.gate_logits is not None
                log_keep = F.logsigmoid(-self.gate_logits)  # log(1 - π)
                zero = torch.logaddexp(F.logsigmoid(self.gate_logits), log_keep + per_gene)
                per_gene = torch.where(value == 0, zero, log_keep + per_gene)
        return per_gene.sum(-1)

    @property
    def mean(self) -> Tensor:
        return Independent(self._per_gene(self._fixed_library()), 1).mean

    @property
    def variance(self) -> Tensor:
        return Independent(self._per_gene(self._fixed_library()), 1).variance

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = _NO_SHAPE) -> Tensor:
        return self._per_gene(self._fixed_library()).sample(torch.Size(sample_shape))

    def at_library(self, library: Tensor) -> CountDistribution:
        """The same p(x | z) with each cell's library fixed to ``library`` (..., 1)."""
        return CountDistribution(self.family, self.logits, self.theta, self.gate_logits, library,
                                 self.default_library)  # fmt: skip


class CountLikelihood(Likelihood):
    """Poisson, negative-binomial or zero-inflated NB counts with mean ℓ softmax(η) (see the module docstring).

    Args:
        family: ``"poisson"``, ``"nb"`` or ``"zinb"``.
        dispersion: θ (NB and ZINB): ``"gene"`` (a free θ_j per gene, starting at 1; needs ``data_dim``),
            ``"cell"`` (from the decoder, per cell and gene) or a fixed number > 0.
        data_dim: D.
    """

    support = "count"
    encoder_input = "log1p"  # the encoder of a VAE with this likelihood sees log(1 + x)
    library: Tensor
    log_library_prior: Tensor

    def __init__(self, family: str = "nb", dispersion: str | float = "gene", *, data_dim: int | None = None,
                 library: str = "observed") -> None:  # fmt: skip
        super().__init__()
        if family not in COUNT_LIKELIHOODS:
            raise ValueError(f"a count likelihood is one of {', '.join(COUNT_LIKELIHOODS)}, got {family!r}")
        if library not in LIBRARIES:
            raise ValueError(f"library must be observed or latent, got {library!r}")
        self.name = family
        self.library_kind = library
        self.log_theta: nn.Parameter | None = None
        self.dispersion: str | float | None = None
        if family != "poisson":
            if isinstance(dispersion, str):
                if dispersion not in DISPERSIONS:
                    raise ValueError(f"dispersion must be gene, cell or a number > 0, got {dispersion!r}")
            elif isinstance(dispersion, bool) or not isinstance(dispersion, (int, float)) or not (
                0 < dispersion < math.inf
            ):
                raise ValueError(f"dispersion must be gene, cell or a number > 0, got {dispersion!r}")
            self.dispersion = dispersion if isinstance(dispersion, str) else float(dispersion)
            if dispersion == "gene":
                if data_dim is None or isinstance(data_dim, bool) or not isinstance(data_dim, int) or data_dim < 1:
                    raise ValueError(f"a per-gene dispersion needs data_dim, an integer >= 1, got {data_dim!r}")
                self.log_theta = nn.Parameter(torch.zeros(data_dim))
        # The library used where no x gives one (generation): the training cells' median total (a buffer, saved).
        self.register_buffer("library", torch.tensor(1.0))
        # A latent library's prior, log ℓ ~ N(loc, scale²): the training cells' log totals' mean and sd (saved).
        self.register_buffer("log_library_prior", torch.tensor([0.0, 1.0]))

    def output_size(self, data_dim: int) -> int:
        """D proportion logits, then D log θ (per-cell dispersion), then D dropout logits (ZINB); then, for a
        latent library, log ℓ (the decoder passes z's last coordinate through: :class:`LibraryDecoder`)."""
        return data_dim * (1 + (self.dispersion == "cell") + (self.name == "zinb")) + (self.library_kind == "latent")

    @property
    def latent_library(self) -> bool:
        """Whether the library is a latent variable (the last coordinate of z, log ℓ) rather than observed."""
        return self.library_kind == "latent"

    def _parts(self, out: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if self.latent_library:
            out = out[..., :-1]
        d = out.shape[-1] // (1 + (self.dispersion == "cell") + (self.name == "zinb"))
        logits, rest = out[..., :d], out[..., d:]
        theta: Tensor | None = None
        if self.dispersion == "cell":
            theta, rest = torch.exp(rest[..., :d]), rest[..., d:]
        elif self.log_theta is not None:
            if self.log_theta.shape[0] != d:
                raise ValueError(f"this likelihood has {self.log_theta.shape[0]} genes' dispersions; the decoder "
                                 f"gave {d} genes")  # fmt: skip
            theta = torch.exp(self.log_theta)
        elif isinstance(self.dispersion, float):
            theta = logits.new_tensor(self.dispersion)
        gate = rest if self.name == "zinb" else None
        return logits, theta, gate

    def forward(self, out: Tensor) -> Distribution:
        logits, theta, gate = self._parts(out)
        library = torch.exp(out[..., -1:]) if self.latent_library else None
        return CountDistribution(self.name, logits, theta, gate, library, self.library.to(out.dtype))

    def mean(self, out: Tensor) -> Tensor:
        """E[x | z] at the default library (the training cells' median total): (..., D)."""
        return self(out).mean

    def reconstruction(self, out: Tensor, x: Tensor, *, mean: bool = True) -> Tensor:
        """E[x | z] (or a draw) at the library of the cells x, whose reconstruction this is: (..., D)."""
        p = self(out)
        assert isinstance(p, CountDistribution)
        at = p if self.latent_library else p.at_library(x.sum(-1, keepdim=True))  # latent: the inferred ℓ
        return at.mean if mean else at.sample()

    def inverse_mean(self, mean: Tensor) -> Tensor:
        """Proportion logits log(mean / Σ mean): ρ at the data's mean proportions (``VAE.init_output_bias`` also
        sets the default library to the mean total, Σ mean, unless one was set)."""
        mean = mean.clamp(min=1e-8)
        return torch.log(mean / mean.sum())

    def set_library(self, library: float) -> None:
        """The library size used for generation (``sample``, ``mean``): typically the training cells' median total."""
        if not math.isfinite(library) or library <= 0:
            raise ValueError(f"library must be a finite number > 0, got {library!r}")
        self.library.fill_(library)

    @property
    def theta(self) -> Tensor | None:
        """θ per gene (D,) for ``dispersion="gene"``, the fixed θ, or None (Poisson, per-cell θ)."""
        if self.log_theta is not None:
            return torch.exp(self.log_theta)
        return None if not isinstance(self.dispersion, float) else torch.tensor(self.dispersion)

    def check(self, x: Tensor) -> None:
        """Finite, non-negative integer counts, and (observed library) no cell without a count: its library
        would be 0."""
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            raise ValueError(f"the {self.name} likelihood needs finite counts; {int((~finite).sum())} values are NaN "
                             "or infinite")  # fmt: skip
        negative = x < 0
        if bool(negative.any()):
            raise ValueError(f"the {self.name} likelihood needs counts >= 0; {int(negative.sum())} values are "
                             f"negative (smallest {float(x.min())})")  # fmt: skip
        fractional = x != torch.round(x)
        if bool(fractional.any()):
            first = float(x[fractional][0])
            raise ValueError(f"the {self.name} likelihood needs integer counts; {int(fractional.sum())} values are "
                             f"not integers (e.g. {first})")  # fmt: skip
        if self.latent_library:  # a cell without counts is possible under a latent library
            return
        empty = x.reshape(-1, x.shape[-1]).sum(-1) == 0 if x.dim() >= 1 and x.numel() else None
        if empty is not None and bool(empty.any()):
            rows = empty.nonzero().flatten()
            raise ValueError(f"the {self.name} likelihood takes each cell's library from its total count; "
                             f"{int(empty.sum())} cells have no counts at all (first: row {int(rows[0])})")  # fmt: skip

    def set_library_prior(self, log_totals: Tensor) -> None:
        """A latent library's prior log ℓ ~ N(mean, sd²) of the training cells' log total counts."""
        loc, scale = float(log_totals.mean()), float(log_totals.std()) if log_totals.numel() > 1 else 1.0
        self.log_library_prior.copy_(torch.tensor([loc, max(scale, 1e-3)]))

    def spec(self) -> str:
        suffix = ":latent" if self.latent_library else ""
        if self.name == "poisson":
            return "poisson" + suffix
        if isinstance(self.dispersion, float):
            return f"{self.name}:{self.dispersion!r}{suffix}"
        return (self.name if self.dispersion == "gene" else f"{self.name}:{self.dispersion}") + suffix


class Log1pFlatten(nn.Module):
    """x (B, *event) -> log(1 + x) flattened to (B, D): the input layer of a count VAE's encoder (scVI's)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.log1p(x.flatten(1))


class LibraryDecoder(nn.Module):
    """The decoder of a VAE with a latent library: z = (z_1..z_d, log ℓ) -> (net(z_1..z_d), log ℓ)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, z: Tensor) -> Tensor:
        return torch.cat([self.net(z[..., :-1]), z[..., -1:]], dim=-1)


def make_count_likelihood(name: str, options: list[str], data_dim: int | None) -> CountLikelihood:
    """``poisson``, ``nb[:gene|cell|THETA]``, ``zinb[:gene|cell|THETA]``, each with an optional last ``:latent``
    (a latent library; the default is the observed one), options already split off the name."""
    library = "observed"
    if options and options[-1] in LIBRARIES:
        library = options.pop()
    if name == "poisson":
        if options:
            raise ValueError(f"unknown likelihood 'poisson:{':'.join(options)}': poisson takes no options")
        return CountLikelihood("poisson", library=library)
    if len(options) > 1:
        raise ValueError(f"unknown likelihood {':'.join([name, *options])!r}: {name}[:gene|cell|THETA][:latent]")
    dispersion: str | float = options[0] if options else "gene"
    if dispersion not in DISPERSIONS:
        try:
            dispersion = float(dispersion)
        except ValueError:
            raise ValueError(f"unknown likelihood {':'.join([name, *options])!r}: the dispersion must be gene, "
                             "cell or a number") from None  # fmt: skip
    return CountLikelihood(name, dispersion, data_dim=data_dim, library=library)
