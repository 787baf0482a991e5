"""Fixed-point encoding of float tensors into the integers modulo 2^64.

A value ``x`` is encoded as ``round(x * 2^f)`` (an int64) viewed as a uint64; sums of
encoded values wrap modulo 2^64 (numpy uint64 arithmetic on arrays wraps silently). The
sum of ``n`` values with ``|x| <= max_abs`` stays below ``2^62`` in absolute value when
``n * max_abs * 2^f <= 2^62`` (one headroom bit below int64's range), so viewing the
uint64 total as int64 and dividing by ``2^f`` decodes it exactly up to the rounding of
each value (at most ``n * 2^-(f+1)`` in total). Values outside ``[-max_abs, max_abs]`` or
non-finite values are refused, never clamped.

Tensors of a member's vector are laid out by :data:`Layout`: names sorted, each flattened
in C order, concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Self

import numpy as np

from fedprompt.secagg.errors import EncodingRangeError, SecAggError

#: ``((name, shape), ...)`` with names sorted: the flattened order of a masked vector.
Layout = tuple[tuple[str, tuple[int, ...]], ...]

#: Smallest number of fraction bits accepted (precision ``2^-16`` per value).
MIN_FRACTION_BITS = 16
#: Largest encoded magnitude of a sum: one headroom bit below int64's range.
SUM_BOUND = 2**62


def layout_of(tensors: Mapping[str, np.ndarray]) -> Layout:
    """Return the layout (names sorted, shapes) of ``tensors``.

    Parameters
    ----------
    tensors
        Named arrays (any dtype).

    Returns
    -------
    Layout
        ``((name, shape), ...)`` sorted by name.
    """
    return tuple((name, tuple(int(d) for d in np.shape(tensors[name]))) for name in sorted(tensors))


def layout_size(layout: Layout) -> int:
    """Return the number of values of a flattened vector of ``layout``."""
    return sum(math.prod(shape) for _, shape in layout)


def check_layout(layout: Layout) -> None:
    """Raise :class:`SecAggError` unless ``layout`` is non-empty, sorted, unique and valid."""
    if not layout:
        raise SecAggError("secagg layout is empty")
    names = [name for name, _ in layout]
    if names != sorted(names) or len(set(names)) != len(names):
        raise SecAggError("secagg layout names must be sorted and unique")
    for name, shape in layout:
        if not isinstance(name, str) or not name:
            raise SecAggError("secagg layout names must be non-empty strings")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SecAggError(f"secagg layout shape of {name!r} is invalid")


def flatten(tensors: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
    """Concatenate uint64 ``tensors`` in ``layout`` order into one new uint64 vector.

    The result never shares memory with ``tensors``.

    Raises
    ------
    SecAggError
        If the names, shapes or dtype differ from the layout (uint64 expected).
    """
    if set(tensors) != {name for name, _ in layout}:
        raise SecAggError("secagg tensors do not match the layout's names")
    parts = []
    for name, shape in layout:
        array = np.asarray(tensors[name])
        if array.dtype != np.uint64:
            raise SecAggError(f"secagg tensor {name!r} must be uint64, not {array.dtype}")
        if array.shape != shape:
            raise SecAggError(f"secagg tensor {name!r} has shape {array.shape}, expected {shape}")
        parts.append(array.reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def unflatten(vector: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """Split a flat vector back into named arrays of ``layout`` (copies)."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name, shape in layout:
        size = math.prod(shape)
        out[name] = vector[offset : offset + size].reshape(shape).copy()
        offset += size
    return out


@dataclass(frozen=True)
class FixedPoint:
    """Fixed-point code with ``fraction_bits`` bits after the point, modulus 2^64.

    Parameters
    ----------
    fraction_bits
        ``f``: a value ``x`` is encoded as ``round(x * 2^f)``.
    """

    fraction_bits: int

    def __post_init__(self) -> None:
        if not isinstance(self.fraction_bits, int) or isinstance(self.fraction_bits, bool):
            raise EncodingRangeError("fraction_bits must be an integer")
        if self.fraction_bits < MIN_FRACTION_BITS:
            raise EncodingRangeError(
                f"fraction_bits {self.fraction_bits} < {MIN_FRACTION_BITS}: too little precision"
            )
        if self.fraction_bits > 1000:
            raise EncodingRangeError(f"fraction_bits {self.fraction_bits} is out of range")

    @classmethod
    def for_sum(cls, *, members: int, max_abs: float) -> Self:
        """Return the code with the most fraction bits whose sum cannot overflow.

        ``f`` is the largest integer with ``members * max_abs * 2^f <= 2^62``.

        Parameters
        ----------
        members
            Number of values summed (the group's size).
        max_abs
            Bound on the absolute value of every encoded value.

        Raises
        ------
        EncodingRangeError
            If ``f < 16`` (the range is too wide for 16 bits of precision), or the
            arguments are not positive and finite.
        """
        if not isinstance(members, int) or members < 1:
            raise EncodingRangeError(f"members must be a positive integer, got {members!r}")
        if not (math.isfinite(max_abs) and max_abs > 0):
            raise EncodingRangeError(f"max_abs must be positive and finite, got {max_abs!r}")
        bound = Fraction(max_abs) * members  # exact: no float rounding of the product
        f = 62 - math.frexp(float(bound))[1]  # estimate, then exact correction
        while bound * Fraction(2) ** (f + 1) <= SUM_BOUND:
            f += 1
        while bound * Fraction(2) ** f > SUM_BOUND:
            f -= 1
        if f < MIN_FRACTION_BITS:
            raise EncodingRangeError(
                f"secure aggregation cannot encode {members} values of magnitude up to "
                f"{max_abs:g}: only {f} fraction bits would fit in 2^62 (minimum "
                f"{MIN_FRACTION_BITS}); lower the clipping bound or the group size"
            )
        return cls(min(f, 1000))

    @property
    def scale(self) -> float:
        """``2^f``."""
        return math.ldexp(1.0, self.fraction_bits)

    def encode(self, x: np.ndarray, *, max_abs: float) -> np.ndarray:
        """Encode float values into uint64 (two's complement of ``round(x * 2^f)``).

        Parameters
        ----------
        x
            Float values (any shape).
        max_abs
            Bound the values must respect: ``|x| <= max_abs``.

        Returns
        -------
        numpy.ndarray
            uint64 array of the same shape.

        Raises
        ------
        EncodingRangeError
            If a value is non-finite or exceeds ``max_abs`` (nothing is clamped), or if
            ``max_abs * 2^f > 2^62``.
        """
        if not (math.isfinite(max_abs) and max_abs > 0):
            raise EncodingRangeError(f"max_abs must be positive and finite, got {max_abs!r}")
        if math.ldexp(max_abs, self.fraction_bits) > SUM_BOUND:
            raise EncodingRangeError(
                f"max_abs {max_abs:g} does not fit {self.fraction_bits} fraction bits"
            )
        values = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise EncodingRangeError("secagg cannot encode non-finite values")
        if values.size and float(np.max(np.abs(values))) > max_abs:
            raise EncodingRangeError(
                f"a value exceeds the secure-aggregation bound {max_abs:g} "
                "(clip before encoding; nothing is clamped silently)"
            )
        scaled = np.rint(values * self.scale)
        return scaled.astype(np.int64).view(np.uint64)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Decode a uint64 (sum of encoded values) into float64.

        Raises
        ------
        SecAggError
            If ``total`` is not uint64.
        """
        array = np.asarray(total)
        if array.dtype != np.uint64:
            raise SecAggError(f"secagg decode expects uint64, not {array.dtype}")
        return array.view(np.int64).astype(np.float64) / self.scale
