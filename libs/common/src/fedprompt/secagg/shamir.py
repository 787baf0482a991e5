"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

A share is ``x`` (4 bytes, big-endian, ``x >= 1``: the holder's index) followed by ``y``
(66 bytes, big-endian, ``y < p``). ``combine`` needs at least ``threshold`` shares; it uses
the extra ones, if any, to check that every share lies on the same polynomial.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from fedprompt.secagg.errors import NotEnoughSharesError, SecAggError

#: The Mersenne prime 2^521 - 1.
PRIME = 2**521 - 1
SECRET_BYTES = 32
_X_BYTES = 4
_Y_BYTES = 66
#: Length of one encoded share.
SHARE_BYTES = _X_BYTES + _Y_BYTES


def encode_share(x: int, y: int) -> bytes:
    """Encode one share ``(x, y)``."""
    return x.to_bytes(_X_BYTES, "big") + y.to_bytes(_Y_BYTES, "big")


def decode_share(share: bytes) -> tuple[int, int]:
    """Decode one share into ``(x, y)``.

    Raises
    ------
    SecAggError
        If the share is malformed (length, ``x = 0``, ``y >= p``).
    """
    if not isinstance(share, bytes | bytearray) or len(share) != SHARE_BYTES:
        raise SecAggError(f"a secagg share must be {SHARE_BYTES} bytes")
    x = int.from_bytes(share[:_X_BYTES], "big")
    y = int.from_bytes(share[_X_BYTES:], "big")
    if x == 0 or y >= PRIME:
        raise SecAggError("a secagg share is out of range")
    return x, y


def split(secret: bytes, *, xs: Iterable[int], threshold: int) -> dict[int, bytes]:
    """Split ``secret`` into shares at the points ``xs``; any ``threshold`` of them recover it.

    Parameters
    ----------
    secret
        32 bytes.
    xs
        Distinct positive evaluation points (the holders' indices).
    threshold
        Shares needed to reconstruct (``1 <= threshold <= len(xs)``).

    Returns
    -------
    dict
        x -> encoded share.
    """
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a secagg secret must be {SECRET_BYTES} bytes")
    points = list(xs)
    if len(set(points)) != len(points) or any(x < 1 or x >= 2 ** (8 * _X_BYTES) for x in points):
        raise SecAggError("share points must be distinct and positive")
    if not 1 <= threshold <= len(points):
        raise SecAggError(f"threshold {threshold} is not in [1, {len(points)}]")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares: dict[int, bytes] = {}
    for x in points:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares[x] = encode_share(x, y)
    return shares


def _interpolate(points: list[tuple[int, int]], at: int) -> int:
    """Value at ``at`` of the polynomial through ``points`` (Lagrange, mod p)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: Iterable[bytes], *, threshold: int) -> bytes:
    """Reconstruct the 32-byte secret from at least ``threshold`` shares.

    Raises
    ------
    NotEnoughSharesError
        If fewer than ``threshold`` distinct shares are given.
    SecAggError
        If shares are malformed, two shares share an ``x`` with different ``y``, the
        shares beyond the threshold are inconsistent, or the result is not a 32-byte
        secret (tampered shares).
    """
    by_x: dict[int, int] = {}
    for share in shares:
        x, y = decode_share(share)
        if by_x.get(x, y) != y:
            raise SecAggError("two different shares claim the same holder")
        by_x[x] = y
    if threshold < 1:
        raise SecAggError(f"threshold must be positive, got {threshold}")
    if len(by_x) < threshold:
        raise NotEnoughSharesError(
            f"{len(by_x)} shares cannot reconstruct a secret of threshold {threshold}"
        )
    points = sorted(by_x.items())
    basis, extra = points[:threshold], points[threshold:]
    for x, y in extra:
        if _interpolate(basis, x) != y:
            raise SecAggError("secagg shares are inconsistent (a share was tampered with)")
    value = _interpolate(basis, 0)
    if value >= 2 ** (8 * SECRET_BYTES):
        raise SecAggError("secagg shares do not reconstruct a valid secret")
    return value.to_bytes(SECRET_BYTES, "big")
