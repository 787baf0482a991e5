"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

A share is ``x`` (4 bytes, big-endian, ``x >= 1``: the holder's index) followed by ``y``
(66 bytes, big-endian, ``y < p``). ``combine`` needs at least ``threshold`` shares. A
tampered share among the ``threshold`` it interpolates makes the value at 0 a random field
element, refused as not a 32-byte secret (it passes with probability 2^-265); up to
:data:`CHECKED_EXTRA_SHARES` shares beyond those are checked against the polynomial, which
names a tampered set as inconsistent (a tampered share beyond them is not used at all).
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
#: Shares beyond the threshold that ``combine`` checks against the polynomial (each check
#: costs a modular inversion: checking all 40 spare shares of a group of 100 took seconds).
CHECKED_EXTRA_SHARES = 8


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


def _batch_inverse(values: list[int]) -> list[int]:
    """Inverses mod p of non-zero ``values`` with one modular inversion (Montgomery's trick)."""
    prefix = [1] * (len(values) + 1)
    for i, v in enumerate(values):
        prefix[i + 1] = prefix[i] * v % PRIME
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % PRIME
        inv = inv * values[i] % PRIME
    return out


class _Polynomial:
    """The polynomial through ``points``, evaluated in the barycentric form.

    The weights ``w_i = 1 / Π_{j≠i} (x_i - x_j)`` cost O(t²) once; each evaluation then costs
    O(t) with a single modular inversion, so checking every share beyond the threshold stays
    linear in their number (a group of 100 rebuilds its secrets in milliseconds, not seconds).
    """

    def __init__(self, points: list[tuple[int, int]]) -> None:
        self.xs = [x for x, _ in points]
        self.ys = [y for _, y in points]
        dens = []
        for i, xi in enumerate(self.xs):
            den = 1
            for j, xj in enumerate(self.xs):
                if i != j:
                    den = den * (xi - xj) % PRIME
            dens.append(den)
        self.weights = _batch_inverse(dens)

    def __call__(self, at: int) -> int:
        if at in self.xs:
            return self.ys[self.xs.index(at)]
        diffs = [(at - x) % PRIME for x in self.xs]
        inverses = _batch_inverse(diffs)
        ell = 1
        for d in diffs:
            ell = ell * d % PRIME
        total = 0
        for w, y, inv in zip(self.weights, self.ys, inverses, strict=True):
            total = (total + w * y % PRIME * inv) % PRIME
        return ell * total % PRIME


def _interpolate(points: list[tuple[int, int]], at: int) -> int:
    """Value at ``at`` of the polynomial through ``points`` (mod p)."""
    return _Polynomial(points)(at)


def combine(shares: Iterable[bytes], *, threshold: int) -> bytes:
    """Reconstruct the 32-byte secret from at least ``threshold`` shares.

    Raises
    ------
    NotEnoughSharesError
        If fewer than ``threshold`` distinct shares are given.
    SecAggError
        If shares are malformed, two shares share an ``x`` with different ``y``, the
        checked shares beyond the threshold are inconsistent, or the result is not a
        32-byte secret (tampered shares).
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
    basis, extra = points[:threshold], points[threshold : threshold + CHECKED_EXTRA_SHARES]
    polynomial = _Polynomial(basis)
    for x, y in extra:
        if polynomial(x) != y:
            raise SecAggError("secagg shares are inconsistent (a share was tampered with)")
    value = polynomial(0)
    if value >= 2 ** (8 * SECRET_BYTES):
        raise SecAggError("secagg shares do not reconstruct a valid secret")
    return value.to_bytes(SECRET_BYTES, "big")
