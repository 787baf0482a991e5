"""Multi-Krum selection of one level's members (Blanchard et al., NeurIPS 2017).

Each member's delta of the level (all its tensors as one vector) gets a score: the sum of
squared distances to its ``n - f - 2`` nearest other members. The ``m`` members with the
lowest scores — those in the densest region — are kept, and the level is aggregated over
them by the wrapped aggregator (its weights, capped, and fpl's contrastive weights too).
``m = 1`` is Krum; the default ``m = n - f`` is multi-Krum (El Mhamdi et al., ICML 2018).

Krum's guarantee needs ``n ≥ 2f + 3``. With fewer members the rule still keeps the ``m``
most central updates (at least one neighbour is scored), except that a level of two members
keeps both (nothing tells which of two is the outlier); per-client clipping and the share
cap still bound what any member can do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt_coordinator.aggregation.base import (
    ClusterAggregator,
    Info,
    LevelAggregate,
    LevelWrapper,
    Tensors,
)
from fedprompt_coordinator.aggregation.levels import Level
from fedprompt_coordinator.aggregation.weighted_sum import BLOCK_ELEMENTS
from fedprompt_coordinator.domain import ClientUpdate


def squared_distances(vectors: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Pairwise squared L2 distances of members, each given as a list of arrays (one vector).

    Accumulates the Gram matrix block by block in float64 (bounded memory).
    """
    n = len(vectors)
    gram = np.zeros((n, n), dtype=np.float64)
    if n == 0:
        return gram
    for parts in zip(*vectors, strict=True):
        flats = [p.reshape(-1) for p in parts]
        size = flats[0].size
        block = max(1, BLOCK_ELEMENTS // n)
        for start in range(0, size, block):
            end = min(size, start + block)
            x = np.stack([f[start:end] for f in flats]).astype(np.float64, copy=False)
            gram += x @ x.T
    diag = np.diag(gram)
    out: np.ndarray = np.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(out, 0.0)
    return out


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Each member's sum of squared distances to its ``max(1, n - f - 2)`` nearest others."""
    n = distances.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.float64)
    k = min(n - 1, max(1, n - f - 2))
    others = distances + np.diag(np.full(n, np.inf))  # a member is not its own neighbour
    nearest = np.sort(others, axis=1)[:, :k]
    scores: np.ndarray = nearest.sum(axis=1)
    return scores


def multi_krum_select(
    distances: np.ndarray, *, f: int, m: int | None, ids: Sequence[str]
) -> list[int]:
    """Indices of the ``m`` (default ``n - f``, at least 1) lowest-scored members.

    Ties are broken by ``ids`` so that the choice does not depend on arrival order. Of one
    or two members all are kept: two members' scores are always equal (each is the other's
    only neighbour), so a choice would drop one of them every round by its id alone.
    """
    n = distances.shape[0]
    if n <= 2:  # two members are each other's only neighbour: neither is more central
        return list(range(n))
    keep = max(1, min(n, m if m is not None else n - f))
    scores = krum_scores(distances, f)
    order = sorted(range(n), key=lambda i: (scores[i], ids[i]))
    return sorted(order[:keep])


class MultiKrum(LevelWrapper):
    """Keeps one level's ``m`` most central members, then delegates the mean over them.

    Parameters
    ----------
    inner
        The wrapped aggregator: it aggregates the selected members.
    level
        The level this rule filters.
    f
        The members assumed Byzantine.
    m
        Members kept (None: ``n - f``).
    """

    name = "multi-krum"

    def __init__(
        self, inner: ClusterAggregator, *, level: Level, f: int, m: int | None = None
    ) -> None:
        super().__init__(inner, level=level)
        if f < 0 or (m is not None and m < 1):
            raise ValueError("multi-krum needs f >= 0 and m >= 1")
        self.f = f
        self.m = m

    def aggregate_level(
        self,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
        *,
        inner: LevelAggregate,
        label: str,
    ) -> tuple[Tensors, Info]:
        """The wrapped level's aggregate of the selected members; reports how many were kept."""
        names = sorted(base)
        distances = squared_distances([[u.tensors[k] for k in names] for u in members])
        keep = multi_krum_select(distances, f=self.f, m=self.m, ids=[u.client_id for u in members])
        tensors, info = inner(base, [members[i] for i in keep])
        return tensors, {**info, f"{label}_krum_kept": float(len(keep))}
