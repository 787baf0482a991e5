"""Errors of the secure-aggregation protocol objects.

All of them are :class:`~fedprompt.errors.InvalidArgumentError` subclasses: a bad or
out-of-order protocol message is a bad request. Messages never carry secrets, shares or
tensor values.
"""

from __future__ import annotations

from fedprompt.errors import InvalidArgumentError


class SecAggError(InvalidArgumentError):
    """Bad input to a secure-aggregation object (wrong stage, non-member, malformed data)."""


class SecAggRefusedError(SecAggError):
    """A member refuses a request that could reveal more than the group's sum.

    Raised before anything secret is produced: a refused request reveals nothing.
    """


class NotEnoughSharesError(SecAggError):
    """Too few members (or shares) remain to unmask the sum: the group is skipped.

    Nothing about an individual member is returned when this is raised.
    """


class EncodingRangeError(SecAggError):
    """A value cannot be encoded without overflow (too large, non-finite, too few bits)."""
