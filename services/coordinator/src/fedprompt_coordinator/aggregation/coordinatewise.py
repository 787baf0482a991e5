"""Coordinate-wise robust rules of one level: the median and the trimmed mean.

Both take each coordinate of the members' deltas on its own (Yin et al., ICML 2018,
"Byzantine-Robust Distributed Learning"; Flower's ``FedMedian`` and ``FedTrimmedAvg``):

- **median**: ``base + median_i Δ_i`` per coordinate (the mean of the two middle values
  for an even count);
- **trimmed mean**: per coordinate, drop the ``k = ⌈β·n⌉`` smallest and ``k`` largest
  values (``k`` at most ``(n-1)//2``, so at least one value remains) and average the rest;
  ``β = 0`` is the plain mean.

Every member counts once: sample counts and alignment weights are what a member declares or
crafts, and a weighted median would hand the middle to a member with half the weight.
Values are processed in blocks of ``BLOCK_ELEMENTS / n`` coordinates, so memory stays
bounded (and memory-mapped updates are read a slice at a time).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedprompt_coordinator.aggregation.base import (
    ClusterAggregator,
    Info,
    LevelAggregate,
    LevelWrapper,
    Tensors,
)
from fedprompt_coordinator.aggregation.levels import Level
from fedprompt_coordinator.aggregation.weighted_sum import BLOCK_ELEMENTS, add_scaled
from fedprompt_coordinator.domain import ClientUpdate

#: A statistic over axis 0 of an (n, block) float64 matrix.
ColumnStatistic = Callable[[np.ndarray], np.ndarray]


def coordinatewise(arrays: Sequence[np.ndarray], statistic: ColumnStatistic) -> np.ndarray:
    """``statistic`` of the arrays' values at every coordinate, in float64, by blocks.

    Raises
    ------
    ValueError
        When there are no arrays or their shapes differ.
    """
    if not arrays:
        raise ValueError("a coordinate-wise statistic needs at least one array")
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError("arrays of a coordinate-wise statistic must all have the same shape")
    flats = [a.reshape(-1) for a in arrays]
    size = flats[0].size
    out = np.empty(size, dtype=np.float64)
    block = max(1, BLOCK_ELEMENTS // len(flats))
    stack = np.empty((len(flats), min(size, block)), dtype=np.float64)
    for start in range(0, size, block):
        end = min(size, start + block)
        part = stack[:, : end - start]
        for row, flat in zip(part, flats, strict=True):
            row[:] = flat[start:end]
        out[start:end] = statistic(part)
    return out.reshape(shape)


def coordinate_median(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The coordinate-wise median of the arrays, in float64."""
    return coordinatewise(arrays, lambda m: np.median(m, axis=0))


def trim_count(n: int, trim_fraction: float) -> int:
    """Values dropped at each end of a coordinate: ``⌈β·n⌉``, at most ``(n-1)//2``."""
    if not 0 <= trim_fraction < 0.5:
        raise ValueError("trim_fraction must be in [0, 0.5)")
    # a hair below the product, so that 0.3 * 10 = 3.0000000000000004 trims 3, not 4
    return min(math.ceil(trim_fraction * n - 1e-9), (n - 1) // 2) if n else 0


def trimmed_mean(arrays: Sequence[np.ndarray], trim: int) -> np.ndarray:
    """The coordinate-wise mean after dropping ``trim`` values at each end, in float64.

    Raises
    ------
    ValueError
        When ``trim`` would leave no value.
    """
    n = len(arrays)
    if trim < 0 or n - 2 * trim < 1:
        raise ValueError(f"cannot trim {trim} values at each end of {n}")

    def statistic(m: np.ndarray) -> np.ndarray:
        kept: np.ndarray = (np.sort(m, axis=0)[trim : n - trim] if trim else m).mean(axis=0)
        return kept

    return coordinatewise(arrays, statistic)


def _apply(
    base: Mapping[str, np.ndarray],
    members: Sequence[ClientUpdate],
    statistic: Callable[[Sequence[np.ndarray]], np.ndarray],
) -> Tensors:
    return {
        name: add_scaled(np.asarray(value), statistic([u.tensors[name] for u in members]))
        for name, value in base.items()
    }


class CoordinateMedian(LevelWrapper):
    """The coordinate-wise median of the members' deltas replaces one level's mean."""

    name = "median"

    def aggregate_level(
        self,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
        *,
        inner: LevelAggregate,
        label: str,
    ) -> tuple[Tensors, Info]:
        """``base + median_i Δ_i`` per coordinate (every member counts once)."""
        return _apply(base, members, coordinate_median), {}


class TrimmedMean(LevelWrapper):
    """The coordinate-wise trimmed mean of the members' deltas replaces one level's mean.

    Parameters
    ----------
    inner
        The wrapped aggregator (its other level is kept).
    level
        The level this rule aggregates.
    trim_fraction
        β: ``⌈β·n⌉`` values are dropped at each end of every coordinate.
    """

    name = "trimmed-mean"

    def __init__(self, inner: ClusterAggregator, *, level: Level, trim_fraction: float) -> None:
        super().__init__(inner, level=level)
        trim_count(1, trim_fraction)  # validates the fraction
        self.trim_fraction = trim_fraction

    def aggregate_level(
        self,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
        *,
        inner: LevelAggregate,
        label: str,
    ) -> tuple[Tensors, Info]:
        """``base`` plus the trimmed mean of the deltas; reports the values trimmed per end."""
        trim = trim_count(len(members), self.trim_fraction)
        tensors = _apply(base, members, lambda arrays: trimmed_mean(arrays, trim))
        return tensors, {f"{label}_trimmed_per_end": float(trim)}
