"""The protocol's setup and messages: plain frozen values (the wire carries their bytes)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Self

from fedprompt.secagg.encoding import FixedPoint, Layout, check_layout
from fedprompt.secagg.errors import SecAggError
from fedprompt.secagg.graph import (
    SEED_BYTES,
    degree_for_dropout,
    harary_neighbours,
    min_survivors,
    secagg_plus_degree,
    share_threshold,
)

#: Smallest group secure aggregation runs on.
MIN_GROUP_SIZE = 2
_KEY_BYTES = 32


def check_id(value: object, what: str) -> str:
    """Return ``value`` if it is a non-empty id without ``|`` (the info/AAD separator)."""
    if not isinstance(value, str) or not value or "|" in value:
        raise SecAggError(f"{what} must be a non-empty string without '|'")
    return value


@dataclass(frozen=True)
class GroupSetup:
    """Parameters of one group's secure aggregation in one round (sent to every member).

    Parameters
    ----------
    round
        Round number.
    group
        Group name (e.g. ``"cluster-3"``).
    members
        Member ids, sorted and unique (at least 2).
    seed
        32-byte round seed that orders the neighbour ring.
    degree
        Neighbours per member: at least :func:`secagg_plus_degree` of the group size, at
        most ``n - 1``.
    threshold
        Shamir threshold: must equal :func:`share_threshold` of ``degree``.
    min_survivors
        Fewest members whose sum may be released (``threshold <= min_survivors <= n``).
    layout
        Flattened layout of every member's vector.
    fraction_bits
        Fixed-point fraction bits of the encoding (``>= 16``).

    Raises
    ------
    SecAggError
        If any parameter is inconsistent (members check a received setup this way).
    """

    round: int
    group: str
    members: tuple[str, ...]
    seed: bytes
    degree: int
    threshold: int
    min_survivors: int
    layout: Layout
    fraction_bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.round, int) or self.round < 0:
            raise SecAggError("secagg round must be a non-negative integer")
        check_id(self.group, "secagg group")
        members = self.members
        for m in members:
            check_id(m, "secagg member id")
        if list(members) != sorted(set(members)):
            raise SecAggError("secagg members must be sorted and unique")
        n = len(members)
        if n < MIN_GROUP_SIZE:
            raise SecAggError(f"secure aggregation needs at least {MIN_GROUP_SIZE} members")
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_BYTES:
            raise SecAggError(f"secagg seed must be {SEED_BYTES} bytes")
        if not secagg_plus_degree(n) <= self.degree <= n - 1:
            raise SecAggError(
                f"secagg degree {self.degree} is not in [{secagg_plus_degree(n)}, {n - 1}]"
            )
        if self.degree < n - 1 and self.degree % 2:
            raise SecAggError(f"secagg degree {self.degree} must be even below n - 1")
        if self.threshold != share_threshold(self.degree):
            raise SecAggError(
                f"secagg threshold {self.threshold} != {share_threshold(self.degree)} "
                f"(strict majority of {self.degree + 1} holders)"
            )
        if not self.threshold <= self.min_survivors <= n:
            raise SecAggError(f"secagg min_survivors {self.min_survivors} is out of range")
        check_layout(self.layout)
        FixedPoint(self.fraction_bits)

    @classmethod
    def create(
        cls,
        *,
        round: int,
        group: str,
        members: Sequence[str],
        layout: Layout,
        max_abs: float,
        seed: bytes | None = None,
        max_dropout: float = 0.3,
        degree: int | None = None,
    ) -> Self:
        """Return the setup of a group, with the design's degree, threshold and encoding.

        Parameters
        ----------
        round, group, members, layout
            As the fields (members in any order; they are sorted).
        max_abs
            Bound on every encoded value (sets ``fraction_bits``).
        seed
            Ring seed; a fresh random one when ``None``.
        max_dropout
            Fraction of the group that may drop out at random (sets ``min_survivors`` and
            the degree, :func:`~fedprompt.secagg.graph.degree_for_dropout`).
        degree
            A sparser (or denser) graph than ``max_dropout`` asks for, at least the privacy
            floor :func:`~fedprompt.secagg.graph.secagg_plus_degree` (checked with the
            fields); None: the dropout-driven degree.
        """
        ordered = tuple(sorted(members))
        if len(set(ordered)) != len(ordered):
            raise SecAggError("secagg members must be unique")
        n = len(ordered)
        if n < MIN_GROUP_SIZE:
            raise SecAggError(f"secure aggregation needs at least {MIN_GROUP_SIZE} members")
        if degree is None:
            degree = degree_for_dropout(n, max_dropout=max_dropout)
        else:
            degree = min(degree, n - 1)
        threshold = share_threshold(degree)
        return cls(
            round=round,
            group=group,
            members=ordered,
            seed=secrets.token_bytes(SEED_BYTES) if seed is None else seed,
            degree=degree,
            threshold=threshold,
            min_survivors=min_survivors(n, threshold, max_dropout=max_dropout),
            layout=layout,
            fraction_bits=FixedPoint.for_sum(members=n, max_abs=max_abs).fraction_bits,
        )

    @cached_property
    def graph(self) -> dict[str, tuple[str, ...]]:
        """Every member's neighbours (the Harary ring of ``degree`` ordered by ``seed``)."""
        return harary_neighbours(self.members, degree=self.degree, seed=self.seed)

    @cached_property
    def _indices(self) -> dict[str, int]:
        return {m: i + 1 for i, m in enumerate(self.members)}

    @property
    def fixed_point(self) -> FixedPoint:
        """The group's fixed-point code."""
        return FixedPoint(self.fraction_bits)

    def neighbours(self, member: str) -> tuple[str, ...]:
        """Return ``member``'s neighbours, sorted.

        Raises
        ------
        SecAggError
            If ``member`` is not in the group.
        """
        try:
            return self.graph[member]
        except KeyError:
            raise SecAggError(f"{member!r} is not a member of {self.group}") from None

    def holder_index(self, member: str) -> int:
        """Return ``member``'s Shamir evaluation point (its 1-based rank in ``members``)."""
        try:
            return self._indices[member]
        except KeyError:
            raise SecAggError(f"{member!r} is not a member of {self.group}") from None


@dataclass(frozen=True)
class PublicKeys:
    """A member's two raw X25519 public keys of the round.

    Parameters
    ----------
    c_pk
        Key agreeing the share-encryption keys.
    s_pk
        Key agreeing the pairwise mask seeds.
    """

    c_pk: bytes
    s_pk: bytes

    def __post_init__(self) -> None:
        for value in (self.c_pk, self.s_pk):
            if not isinstance(value, bytes) or len(value) != _KEY_BYTES:
                raise SecAggError(f"secagg public keys must be {_KEY_BYTES} bytes")
        if self.c_pk == self.s_pk:
            raise SecAggError("a member's two secagg public keys must differ")


@dataclass(frozen=True)
class UnmaskRequest:
    """The server's unmask request: the group-wide dropped (U2 \\ U3) and survivors (U3)."""

    dropped: tuple[str, ...]
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class UnmaskReply:
    """A member's answer to an unmask request.

    Parameters
    ----------
    s_sk_shares
        Dropped neighbour -> this member's share of its mask-agreement private key.
    b_shares
        Surviving holder-owner (neighbour or itself) -> this member's share of its
        self-mask seed.
    """

    s_sk_shares: dict[str, bytes]
    b_shares: dict[str, bytes]
