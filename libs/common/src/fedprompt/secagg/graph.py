"""SecAgg+ neighbour graphs (Bell et al. 2020) and the protocol's size parameters.

Members are ordered by a permutation derived from a 32-byte round seed (each member's rank
is ``HMAC-SHA256(seed, id)``), then linked as a Harary ring: each member to its ``k/2``
predecessors and ``k/2`` successors. ``k`` grows like ``3 log2 n`` (complete graph for
``n <= 11``), so each member's cost is ``O(log n)`` instead of ``O(n)``. Every member
recomputes the graph from the same ``(members, seed, k)``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence

from fedprompt.secagg.errors import SecAggError

#: Length of the round seed that orders the ring.
SEED_BYTES = 32


def secagg_plus_degree(n: int) -> int:
    """Return ``k = min(n - 1, smallest even integer >= ceil(3 log2 n))``.

    Parameters
    ----------
    n
        Group size (``>= 1``).
    """
    if n < 1:
        raise SecAggError(f"group size must be positive, got {n}")
    if n == 1:
        return 0
    k = math.ceil(3 * math.log2(n))
    k += k % 2
    return min(n - 1, k)


#: Default bound on the probability that a round's random dropouts leave some member's secret
#: with fewer than ``t`` live holders (the group's aggregate is then skipped, never leaked).
ROUND_FAILURE = 0.01


def _binomial_cdf_below(trials: int, p_alive: float, threshold: int) -> float:
    """P[Binomial(trials, p_alive) < threshold], exactly."""
    return math.fsum(
        math.comb(trials, i) * p_alive**i * (1.0 - p_alive) ** (trials - i)
        for i in range(min(threshold, trials + 1))
    )


def degree_for_dropout(n: int, *, max_dropout: float, failure: float = ROUND_FAILURE) -> int:
    """Return the smallest admissible ``k`` that survives ``max_dropout`` random dropouts.

    A dropped member's self-mask key must be rebuilt from ``t = share_threshold(k)`` of its
    ``k`` neighbours; with each member dropping independently with probability ``p``, that
    fails with probability ``P[Bin(k, 1-p) < t]``. By the union bound over the ``n`` members,
    ``n · P[Bin(k, 1-p) < t] <= failure`` keeps the round's skip probability under
    ``failure``. ``k`` is even (a Harary ring), at least :func:`secagg_plus_degree` and at
    most ``n - 1`` (the complete graph, the best possible). With ``p = 0.3``: ``k = 84`` at
    ``n = 100``, ``110`` at ``n = 1000``, ``134`` at ``n = 10,000`` (it grows like ``log n``);
    with ``p = 0.1``: 20, 30, 40.

    Parameters
    ----------
    n
        Group size.
    max_dropout
        ``p``: the fraction of members expected to drop out at random (``0 <= p < 1``).
    failure
        Bound on the probability that a round cannot be unmasked.
    """
    if not 0.0 <= max_dropout < 1.0:
        raise SecAggError(f"max_dropout must be in [0, 1), got {max_dropout}")
    if not 0.0 < failure < 1.0:
        raise SecAggError(f"failure must be in (0, 1), got {failure}")
    floor = secagg_plus_degree(n)
    if n <= 2 or floor >= n - 1:
        return floor
    k = floor
    while k < n - 1:
        if n * _binomial_cdf_below(k, 1.0 - max_dropout, share_threshold(k)) <= failure:
            return k
        k += 2
    return n - 1


def share_threshold(degree: int) -> int:
    """Return the Shamir threshold over the ``degree + 1`` holders of a member's secrets.

    ``t = floor((k + 1) / 2) + 1``, a strict majority of the holders (and at least 2): two
    disjoint sets of ``t`` holders cannot exist, so the server cannot collect both secrets of
    one member from holders that each answer one unmask request.
    """
    if degree < 1:
        raise SecAggError(f"degree must be at least 1, got {degree}")
    return max(2, (degree + 1) // 2 + 1)


def min_survivors(n: int, threshold: int, *, max_dropout: float = 0.3) -> int:
    """Return the fewest members whose inputs may be released as a sum.

    ``max(threshold, ceil((1 - max_dropout) * n))``, capped at ``n``.

    Parameters
    ----------
    n
        Group size.
    threshold
        Shamir threshold of the group.
    max_dropout
        Fraction of the group that may drop out of the round (``0 <= max_dropout < 1``).
    """
    if n < 1:
        raise SecAggError(f"group size must be positive, got {n}")
    if not 0.0 <= max_dropout < 1.0:
        raise SecAggError(f"max_dropout must be in [0, 1), got {max_dropout}")
    # The small tolerance keeps e.g. (1 - 0.3) * 10 = 7, not 8, despite float rounding.
    needed = math.ceil((1.0 - max_dropout) * n - 1e-9)
    return min(n, max(threshold, needed, 1))


def ring_order(members: Sequence[str], seed: bytes) -> list[str]:
    """Return the members in the seed's ring order (sorted by ``HMAC-SHA256(seed, id)``)."""
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"the graph seed must be {SEED_BYTES} bytes")
    return sorted(
        set(members),
        key=lambda m: (hmac.new(seed, m.encode(), hashlib.sha256).digest(), m),
    )


def harary_neighbours(
    members: Sequence[str], *, degree: int, seed: bytes
) -> dict[str, tuple[str, ...]]:
    """Return each member's neighbours in the seed-permuted Harary ring of ``degree``.

    Parameters
    ----------
    members
        Member ids (order irrelevant; duplicates refused).
    degree
        ``k``: even and ``< n``, or ``>= n - 1`` for the complete graph.
    seed
        32-byte round seed that orders the ring.

    Returns
    -------
    dict
        member -> its neighbours, sorted (never itself). The graph is ``k``-regular
        (``n - 1`` for the complete graph), symmetric and connected.

    Raises
    ------
    SecAggError
        On duplicate members, a bad seed or an odd degree below ``n - 1``.
    """
    n = len(members)
    if len(set(members)) != n:
        raise SecAggError("group members must be unique")
    order = ring_order(members, seed)
    if degree >= n - 1:
        return {m: tuple(sorted(v for v in order if v != m)) for m in order}
    if degree < 2 or degree % 2:
        raise SecAggError(f"a Harary ring of {n} members needs an even degree >= 2, got {degree}")
    half = degree // 2
    graph: dict[str, tuple[str, ...]] = {}
    for i, m in enumerate(order):
        linked = {order[(i + j) % n] for j in range(1, half + 1)}
        linked |= {order[(i - j) % n] for j in range(1, half + 1)}
        graph[m] = tuple(sorted(linked))
    return graph
