r"""A Pyro model and guide as an elbokit model and guide, read through Pyro's effect handlers.

The Pyro program must have the usual VAE / factor-analysis shape: one latent sample site per data point inside a
plate over the data, and one observed site,

.. code-block:: python

    def model_fn(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], d), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide_fn(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

so that p(x, z) = p(z) p(x|z) and q(z|x) factorise over the points. :func:`from_pyro` turns the pair into
elbokit's protocol: ``prior()`` is the latent site's distribution (one point's, batch ()), ``likelihood(z)`` the
observed site's distribution with the latent conditioned on z (``pyro.poutine.condition``), and the guide is the
latent site's distribution in the guide's trace (``pyro.poutine.trace``). Every trace is taken with the latent
site conditioned, so reading a distribution draws nothing from torch's random generator.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent

from elbokit.guides._iaf import MissingExtraError

try:
    import pyro.poutine as poutine
    from pyro.poutine.util import site_is_subsample
except ImportError:
    raise MissingExtraError("elbokit.interop.pyro needs the optional extra: pip install 'elbokit[pyro]'") from None

PyroFn = Callable[[Tensor], Any]

# Parameters of which a distribution takes exactly one, in the order preferred when a rebuild finds several.
_EXCLUSIVE = (("logits", "probs"), ("scale_tril", "covariance_matrix", "precision_matrix"))


def _sample_sites(fn: PyroFn, x: Tensor, condition: dict[str, Tensor] | None = None) -> dict[str, Any]:
    """The sample sites of one run of ``fn(x)`` (with ``condition``'s sites fixed), in order, by name."""
    program = fn if condition is None else poutine.condition(fn, data=condition)
    trace = poutine.trace(program).get_trace(x)
    return {
        name: site for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)
    }  # not the plates' own sites


def _parameters(d: Distribution) -> dict[str, Tensor]:
    """The tensors a distribution was built from, by their constructor's names."""
    own = vars(d)
    params = {}
    for name in d.arg_constraints:
        if isinstance(own.get(name), Tensor):
            params[name] = own[name]
        elif isinstance(inspect.getattr_static(type(d), name, None), property):
            params[name] = getattr(d, name)
    for group in _EXCLUSIVE:
        present = [name for name in group if name in params]
        for name in present[1:]:
            del params[name]
    return params


def reshape_batch(d: Distribution, batch_shape: torch.Size) -> Distribution:
    """The same distribution with its batch dimensions reshaped to ``batch_shape`` (the same number of elements),
    rebuilt from its parameters; Independent wrappers are kept."""
    batch_shape = torch.Size(batch_shape)
    if d.batch_shape == batch_shape:
        return d
    if isinstance(d, Independent):
        inner = d.base_dist.batch_shape[len(d.batch_shape) :]  # the base's batch dims reinterpreted as event
        return type(d)(reshape_batch(d.base_dist, batch_shape + inner), d.reinterpreted_batch_ndims)
    n = len(d.batch_shape)
    try:
        params = {name: t.reshape(batch_shape + t.shape[n:]) for name, t in _parameters(d).items()}
        rebuilt = type(d)(**params, validate_args=False)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"cannot reshape a {type(d).__name__} of batch shape {tuple(d.batch_shape)} to {tuple(batch_shape)} "
            f"from its parameters ({error})"
        ) from None
    if rebuilt.batch_shape != batch_shape or rebuilt.event_shape != d.event_shape:
        raise ValueError(f"cannot reshape a {type(d).__name__} from its parameters: rebuilt with other shapes")
    return rebuilt


def _names(sites: dict[str, Any]) -> str:
    return ", ".join(f"{name!r} ({'observed' if site['is_observed'] else 'latent'})" for name, site in sites.items())


def _check_latent_site(owner: str, sites: dict[str, Any], latent: str, b: int) -> None:
    """Exactly one latent site, named ``latent``, in a plate of size b, with batch shape (b,)."""
    found = _names(sites) or "none"
    hidden = [name for name, site in sites.items() if not site["is_observed"]]
    if latent not in sites or sites[latent]["is_observed"]:
        raise ValueError(f"the Pyro {owner} has no latent sample site named {latent!r}; its sample sites: {found}")
    if hidden != [latent]:
        raise ValueError(f"the Pyro {owner} must have exactly one latent sample site, {latent!r}; found {found}")
    site = sites[latent]
    plates = [f.size for f in site["cond_indep_stack"] if f.vectorized]
    if b not in plates:
        raise ValueError(
            f"the Pyro {owner}'s latent site {latent!r} must be inside a plate over the {b} data points; "
            f"it is inside plates of sizes {plates or 'none'}"
        )
    fn = site["fn"]
    if fn.batch_shape != (b,) or len(fn.event_shape) != 1:
        raise ValueError(
            f"the Pyro {owner}'s latent site {latent!r} must have batch shape ({b},) and one event dimension, "
            f"got batch {tuple(fn.batch_shape)}, event {tuple(fn.event_shape)} (use .to_event(1))"
        )


class PyroModel:
    """p(z) p(x|z) of a Pyro model, as an elbokit LatentModel (made by :func:`from_pyro`).

    ``prior()`` is the latent site's distribution for one point, batch (), event (d,); ``likelihood(z)`` takes z of
    shape (*batch, d) (the estimators pass samples-first (K, B, d)), runs the model once on the prod(batch) points
    with the latent site conditioned on z, and returns the observed site's distribution reshaped to batch ``batch``
    with the data's event shape. The decoder therefore sees a flat (N, d) z, as in training. ``decode``,
    ``encode``, ``sample`` and ``reconstruct`` are what the report draws images and latent figures with.
    """

    def __init__(self, model_fn: PyroFn, guide: PyroGuide, example: Tensor, *, latent: str, observed: str,
                 latent_dim: int) -> None:  # fmt: skip
        self.model_fn = model_fn
        self.guide = guide
        self.latent = latent
        self.observed = observed
        self.latent_dim = latent_dim
        self.event_shape = example.shape[1:]
        self._row = example[:1].detach()  # a valid data point: the observed site's value when only its law is read

    def _trace(self, z: Tensor) -> dict[str, Any]:
        """The model's sample sites with the latent conditioned on z (N, d), on N copies of one data point."""
        x = self._row.expand(z.shape[0], *self.event_shape)
        return _sample_sites(self.model_fn, x, {self.latent: z})

    def prior(self) -> Distribution:
        """p(z): the latent site's distribution for one point, batch (), event (d,)."""
        row = self._row
        fn = self._trace(row.new_zeros(1, self.latent_dim))[self.latent]["fn"]  # batch (1,)
        return reshape_batch(fn, torch.Size())

    def likelihood(self, z: Tensor) -> Distribution:
        """p(x|z) for z of shape (*batch, d): batch ``batch``, the data's event shape."""
        batch = z.shape[:-1]
        flat = z.reshape(math.prod(batch), self.latent_dim)  # (N, d)
        fn = self._trace(flat)[self.observed]["fn"]  # batch (N,)
        return reshape_batch(fn, batch)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """E[x|z]: (..., d) -> (..., *event)."""
        return self.likelihood(z).mean

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """E_q[z|x] under the guide: (B, *event) -> (B, d)."""
        return self.guide(x).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = E_q z]: (B, *event) -> (B, *event)."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None, mean: bool = True) -> Tensor:
        """z ~ p(z) decoded to E[x|z] (``mean``) or to a draw x ~ p(x|z): (n, *event). torch.distributions draw
        from the global generator; ``generator`` seeds it for this call (and the global state is restored)."""
        with torch.random.fork_rng(devices=[]):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
            z = self.prior().sample((n,))  # (n, d)
            return self.decode(z) if mean else self.likelihood(z).sample()


class PyroGuide:
    """q(z|x) of a Pyro guide: the latent site's distribution in the guide's trace on x, batch (B,), event (d,)."""

    def __init__(self, guide_fn: PyroFn, *, latent: str, latent_dim: int) -> None:
        self.guide_fn = guide_fn
        self.latent = latent
        self.latent_dim = latent_dim

    def __call__(self, x: Tensor) -> Distribution:
        # The latent is conditioned on zeros: the site's distribution is read without drawing from it.
        zeros = x.new_zeros(x.shape[0], self.latent_dim)
        fn: Distribution = _sample_sites(self.guide_fn, x, {self.latent: zeros})[self.latent]["fn"]
        return fn


def from_pyro(
    model_fn: PyroFn, guide_fn: PyroFn, x: Tensor, *, latent: str = "z", observed: str = "x"
) -> tuple[PyroModel, PyroGuide]:
    r"""A Pyro model and guide, each called as ``fn(x)``, as an elbokit model and guide.

    .. math::
        p(x, z) = \prod_{i=1}^B p(z_i)\, p(x_i \mid z_i), \qquad q(z \mid x) = \prod_{i=1}^B q(z_i \mid x_i)

    Both programs are run once on ``x`` (torch's global random state is restored afterwards) to check their shape:
    the model has exactly one latent sample site, ``latent``, inside a plate over the B points with batch (B,) and
    event (d,), and an observed site ``observed`` with batch (B,) and x's event shape; the guide has ``latent`` as
    its only latent sample site, in such a plate, with the model's event shape; and the latent site's distribution
    is the same for every point (p(z) is read for one). Parameters live where Pyro keeps them (``pyro.module``,
    the param store): train with Pyro's SVI, or with elbokit on the modules' parameters, and the converted pair
    follows.

    Args:
        model_fn: the Pyro model, ``model_fn(x)`` with x (B, *event).
        guide_fn: the Pyro guide, ``guide_fn(x)``.
        x: (B, *event) example data, e.g. the batch to diagnose: the programs are checked on it and its first
            point is the observed site's value whenever only its distribution is read.
        latent: the latent site's name.
        observed: the observed site's name.

    Returns:
        ``(model, guide)``: a :class:`PyroModel` (``prior()``, ``likelihood(z)``) and a :class:`PyroGuide`
        (x -> q(z|x)), which every elbokit estimator, diagnostic and the report take.

    Raises:
        ValueError: one line naming the sites found, when either program does not have that shape.
    """
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty tensor of shape (B, *event), got {getattr(x, 'shape', type(x))}")
    b = x.shape[0]
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), torch.no_grad():
        model_sites = _sample_sites(model_fn, x)
        guide_sites = _sample_sites(guide_fn, x)
    _check_latent_site("model", model_sites, latent, b)
    found = _names(model_sites)
    if observed not in model_sites or not model_sites[observed]["is_observed"]:
        raise ValueError(f"the Pyro model has no observed sample site named {observed!r}; its sample sites: {found}")
    obs = model_sites[observed]["fn"]
    if obs.batch_shape != (b,) or obs.event_shape != x.shape[1:]:
        raise ValueError(
            f"the Pyro model's observed site {observed!r} must have batch shape ({b},) and event shape "
            f"{tuple(x.shape[1:])}, got batch {tuple(obs.batch_shape)}, event {tuple(obs.event_shape)}"
        )
    _check_latent_site("guide", guide_sites, latent, b)
    d = model_sites[latent]["fn"].event_shape
    if guide_sites[latent]["fn"].event_shape != d:
        raise ValueError(
            f"the Pyro guide's latent site {latent!r} has event shape {tuple(guide_sites[latent]['fn'].event_shape)}, "
            f"the model's {tuple(d)}"
        )
    guide = PyroGuide(guide_fn, latent=latent, latent_dim=d[0])
    model = PyroModel(model_fn, guide, x, latent=latent, observed=observed, latent_dim=d[0])
    with torch.no_grad():  # p(z) is read for one point: it must be every point's
        z = model_sites[latent]["value"]  # (B, d), drawn from the model's own site
        if not torch.allclose(model_sites[latent]["fn"].log_prob(z), model.prior().log_prob(z)):
            raise ValueError(
                f"the Pyro model's latent site {latent!r} has a different distribution for different data points; "
                "elbokit's p(z) is one distribution shared by all of them"
            )
    return model, guide


__all__ = ["PyroGuide", "PyroModel", "from_pyro", "reshape_batch"]
