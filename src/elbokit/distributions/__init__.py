"""Additions to torch.distributions: extra KL pairs (registered on import) and parameter detaching."""

from elbokit.distributions import kl as _kl  # noqa: F401  (registers the KL pairs)
from elbokit.distributions._detach import detach_parameters

__all__ = ["detach_parameters"]
