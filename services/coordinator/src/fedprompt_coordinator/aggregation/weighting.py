"""Aggregation weights with a cap: no member's share of a mean exceeds a bound.

A member's raw weight is its sample count (the smaller of its Join and upload counts, set
by the upload intake) or 1 (``uniform``), times any factor the aggregator adds (fpl's
contrastive alignment). The sample count is what the member *says*; alone it would let one
member that declares 10^9 examples take a share of 1.0 of every mean. :func:`cap_shares`
therefore caps the normalised weights at a bound ``s`` by water-filling: the members over
the cap get exactly ``s``, the others keep their proportions and share the rest.

:class:`ShareCap` holds the policy: ``s(n) = max(1/n, min(max_share, max_multiple / n))``
for a mean over ``n`` members (the fair share 1/n is always reachable, so a cap below it
means equal weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def cap_shares(weights: Sequence[float] | np.ndarray, max_share: float) -> np.ndarray:
    """Normalise ``weights`` to shares and cap every share at ``max_share`` (water-filling).

    The capped members get exactly ``max_share``; the others keep their mutual proportions
    and share the rest. When ``max_share * n <= 1``, or when no cap can hold because every
    other member weighs nothing, every member gets ``1/n``.

    Parameters
    ----------
    weights
        Non-negative raw weights with a positive sum.
    max_share
        The largest share any member may have (in (0, 1]).

    Raises
    ------
    ValueError
        When there are no weights, one is negative or not finite, or their sum is zero.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("shares need non-negative, finite weights with a positive sum")
    n = w.size
    if max_share * n <= 1.0:
        return np.full(n, 1.0 / n)
    shares: np.ndarray = w / w.sum()
    if shares.max() <= max_share:
        return shares
    # k largest members capped at max_share s; the others share 1 - k·s in proportion to
    # their weights, w_i · (1 - k·s) / rest. The right k is the smallest for which the
    # (k+1)-th largest member then stays under the cap. Shares are computed as ratios to
    # the rest (never as an absolute threshold, which loses its precision when the rest
    # is subnormal: [1, 5e-324] capped at 0.75 would give 0.8)
    sorted_w = np.sort(w)[::-1]
    suffix = np.cumsum(sorted_w[::-1])[::-1]  # suffix[k] = Σ of all but the k largest
    for k in range(1, n):
        rest = float(suffix[k])  # summed afresh: no cancellation against a huge weight
        left = 1.0 - k * max_share
        if left <= 0 or rest <= 0:  # no cap can hold but equal weights
            break
        if left * (float(sorted_w[k]) / rest) <= max_share:
            with np.errstate(over="ignore"):  # a capped member's ratio may overflow to inf
                out: np.ndarray = np.minimum(left * (w / rest), max_share)
            normalised: np.ndarray = out / out.sum()  # 1 up to rounding: exactly 1 after
            return normalised
    return np.full(n, 1.0 / n)


@dataclass(frozen=True)
class ShareCap:
    """How members are weighted in a mean, and the cap on any one member's share.

    Attributes
    ----------
    uniform
        Weigh every member once instead of by its sample count.
    max_share
        No share exceeds this (1: no absolute cap).
    max_multiple
        Nor this multiple of the fair share 1/n (None: no relative cap).
    """

    uniform: bool = False
    max_share: float = 1.0
    max_multiple: float | None = None

    def bound(self, n: int) -> float:
        """The largest share one of ``n`` members may have."""
        if n <= 0:
            raise ValueError("a mean needs members")
        cap = self.max_share
        if self.max_multiple is not None:
            cap = min(cap, self.max_multiple / n)
        return max(1.0 / n, cap)

    def raw(self, num_examples: Sequence[int]) -> np.ndarray:
        """Raw weights before any factor and the cap: sample counts, or ones."""
        if self.uniform:
            return np.ones(len(num_examples), dtype=np.float64)
        return np.asarray(num_examples, dtype=np.float64)

    def shares(self, raw: Sequence[float] | np.ndarray) -> np.ndarray:
        """Normalised weights (summing to 1) with no share above :meth:`bound`."""
        w = np.asarray(raw, dtype=np.float64)
        return cap_shares(w, self.bound(w.size))

    def weights(self, num_examples: Sequence[int]) -> np.ndarray:
        """The capped shares of members with these sample counts."""
        return self.shares(self.raw(num_examples))


#: Plain sample-weighted FedAvg: no cap (what an aggregator built without a policy does).
UNCAPPED = ShareCap()
