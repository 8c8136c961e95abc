"""Additions to torch.distributions: extra KL pairs (registered on import), parameter detaching, and
switching argument checks off."""

from elbokit.distributions import kl as _kl  # noqa: F401  (registers the KL pairs)
from elbokit.distributions._detach import detach_parameters
from elbokit.distributions._validate import unvalidated

__all__ = ["detach_parameters", "unvalidated"]
