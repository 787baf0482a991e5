"""Per-client L2 clipping of every shared part before a level is aggregated.

Each member's update of one part (:mod:`~fedprompt_coordinator.aggregation.parts`: the
global prompt, the cluster prompt, the head, LoRA adapters, backbone weights) is scaled to
L2 norm at most ``C_part``, so that whatever a member uploads (up to the hard
``max_update_l2_norm``) it moves a level by at most its weight times ``C_part``.

The bound is fixed, or adaptive (Andrew et al., "Differentially Private Learning with
Adaptive Clipping", NeurIPS 2021): with ``b`` the fraction of the round's updates of a part
whose norm is at most ``C``, the bound of the next round is

    C ← C · exp(-η · (b - gamma)),

which converges to the gamma-quantile of the update norms (gamma = 0.5: the median) while one member
can shift ``b`` by at most ``1/n`` per round. Without a configured initial bound, the first
round's ``C`` is the gamma-quantile of that round's norms (the lower order statistic, so one
member can never lift it above an honest norm). No noise is added to ``b``: the mechanism
bounds influence here, not privacy (DP-FedAvg clips the global level itself when on).

**Durable state.** The bound of the next round is written into the round's summary
(``clip_<part>_next_bound``) and so committed with the round record; a restarted
coordinator takes it from the last completed round (:func:`bounds_from_summary`). A round
that fails after aggregation does not advance the bound: the pending bound is adopted only
when the round count it was computed for has completed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedprompt_coordinator.aggregation.base import (
    ClusterAggregator,
    Info,
    LevelAggregate,
    LevelWrapper,
    Tensors,
)
from fedprompt_coordinator.aggregation.levels import Level
from fedprompt_coordinator.aggregation.parts import Part, group_by_part
from fedprompt_coordinator.aggregation.weighted_sum import squared_norms
from fedprompt_coordinator.domain import ClientUpdate, FederationModel

#: Smallest adaptive bound: a part nobody moves may shrink its bound, never to zero.
MIN_BOUND = 1e-6

#: Round-summary keys of a part's clipping (one ``str.format`` each).
BOUND_KEY = "clip_{part}_bound"
CLIPPED_FRACTION_KEY = "clip_{part}_clipped_fraction"
NORM_MEDIAN_KEY = "clip_{part}_norm_median"
NEXT_BOUND_KEY = "clip_{part}_next_bound"


@dataclass(frozen=True)
class ClipPolicy:
    """What bounds each part's per-client L2 norm.

    Attributes
    ----------
    adaptive
        Follow the ``target_quantile`` of the round's norms (else fixed bounds).
    bound
        Fixed: the bound of every part without an entry in ``part_bounds``. Adaptive: the
        initial bound (None: calibrated on the first round's norms).
    part_bounds
        Bounds (fixed) or initial bounds (adaptive) by part, overriding ``bound``.
    target_quantile
        gamma: the fraction of updates the adaptive bound leaves unclipped.
    learning_rate
        η of the geometric update.
    """

    adaptive: bool = True
    bound: float | None = None
    part_bounds: Mapping[Part, float] = field(default_factory=dict)
    target_quantile: float = 0.5
    learning_rate: float = 0.2

    def __post_init__(self) -> None:
        bounds = [b for b in (self.bound, *self.part_bounds.values()) if b is not None]
        if any(not b > 0 for b in bounds):
            raise ValueError("clip bounds must be positive")
        if not self.adaptive and self.bound is None and set(self.part_bounds) != set(Part):
            raise ValueError("fixed clipping needs `bound` or a bound for every part")
        if not 0 < self.target_quantile < 1 or not self.learning_rate > 0:
            raise ValueError("adaptive clipping needs 0 < target_quantile < 1, learning_rate > 0")

    def configured(self, part: Part) -> float | None:
        """The configured (initial) bound of ``part``, if any."""
        return self.part_bounds.get(part, self.bound)


def quantile_bound(norms: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of ``norms`` as an order statistic (no interpolation), at least
    :data:`MIN_BOUND`: with one outlier among n ≥ 2 norms it is never the outlier's value
    unless that value is below an honest one."""
    if norms.size == 0:
        return MIN_BOUND
    return max(MIN_BOUND, float(np.quantile(norms, quantile, method="lower")))


def next_adaptive_bound(
    bound: float, unclipped_fraction: float, *, target_quantile: float, learning_rate: float
) -> float:
    """``C · exp(-η · (b - gamma))`` (Andrew et al. 2021), at least :data:`MIN_BOUND`."""
    return max(MIN_BOUND, bound * math.exp(-learning_rate * (unclipped_fraction - target_quantile)))


def bounds_from_summary(summary: Mapping[str, float]) -> dict[Part, float]:
    """The next-round bounds a round summary recorded, by part (empty when none)."""
    out = {}
    for part in Part:
        value = summary.get(NEXT_BOUND_KEY.format(part=part.value))
        if value is not None and math.isfinite(value) and value > 0:
            out[part] = float(value)
    return out


class ClipBounds:
    """The bound of every part, round by round: fixed, or adaptive with a durable state.

    Parameters
    ----------
    policy
        Fixed or adaptive bounds.
    rounds_completed
        The number of completed rounds (None: every aggregation counts as completed). A
        pending adaptive bound is adopted only once the round it came from has completed.
    restored
        Adaptive bounds of the next round, as the last completed round recorded them.
    """

    def __init__(
        self,
        policy: ClipPolicy,
        *,
        rounds_completed: Callable[[], int] | None = None,
        restored: Mapping[Part, float] | None = None,
    ) -> None:
        self.policy = policy
        self._aggregations = 0
        self._rounds_completed = rounds_completed or (lambda: self._aggregations)
        self._committed: dict[Part, float] = dict(restored or {})
        self._pending: tuple[int, dict[Part, float]] | None = None

    def for_round(
        self, norms: Mapping[Part, np.ndarray]
    ) -> tuple[dict[Part, float], dict[Part, float]]:
        """The bound of each part for a round with these norms, and (adaptive) the next one.

        Call once per round, before clipping any of its updates.
        """
        done = self._rounds_completed()
        if self._pending is not None:
            completed_after, bounds = self._pending
            if completed_after == done:  # the round that computed them was committed
                self._committed = bounds
            self._pending = None
        self._aggregations += 1
        policy = self.policy
        current: dict[Part, float] = {}
        nxt: dict[Part, float] = {}
        for part, values in norms.items():
            if not policy.adaptive:
                bound = policy.configured(part)
                assert bound is not None, "the configuration requires a fixed bound"
                current[part] = bound
                continue
            known = self._committed.get(part, policy.configured(part))
            bound = known if known is not None else quantile_bound(values, policy.target_quantile)
            current[part] = bound
            unclipped = float(np.mean(values <= bound)) if values.size else policy.target_quantile
            nxt[part] = next_adaptive_bound(
                bound,
                unclipped,
                target_quantile=policy.target_quantile,
                learning_rate=policy.learning_rate,
            )
        if policy.adaptive:
            self._pending = (done + 1, {**self._committed, **nxt})
        return current, nxt


def level_names(model: FederationModel, level: Level) -> list[str]:
    """The tensor names of one level of ``model`` (a cluster level: any cluster's)."""
    if level is Level.GLOBAL:
        return sorted(model.global_tensors)
    names = set(model.cluster_template)
    for tensors in model.cluster_tensors.values():
        names.update(tensors)
    return sorted(names)


def part_norms(updates: Sequence[ClientUpdate], names: Sequence[str]) -> dict[Part, np.ndarray]:
    """Each update's L2 norm of each part (its tensors among ``names`` as one vector)."""
    out = {}
    for part, part_names in group_by_part(names).items():
        squares = np.zeros(len(updates), dtype=np.float64)
        for name in part_names:
            squares += squared_norms([u.tensors[name] for u in updates])
        out[part] = np.sqrt(squares)
    return out


def scaled(array: np.ndarray, factor: float) -> np.ndarray:
    """A new array ``array * factor`` in ``array``'s dtype (one copy, no float64 temporary
    for floating-point tensors; the input, possibly a read-only memory map, is not touched)."""
    if np.issubdtype(array.dtype, np.floating):
        out: np.ndarray = np.multiply(array, array.dtype.type(factor))
        return out
    return (np.asarray(array, dtype=np.float64) * factor).astype(array.dtype)


class NormClipping(LevelWrapper):
    """Clips every member's update of each part of one level before the wrapped aggregator.

    :meth:`prepare_round` computes the norms of the whole round (all clusters together),
    asks :class:`ClipBounds` for the round's bounds and reports, per part, the bound, the
    clipped fraction, the median norm and (adaptive) the next round's bound; each level
    call then hands the wrapped aggregator copies of the over-bound members' tensors scaled
    to the bound (the others unchanged, never copied).

    Parameters
    ----------
    inner
        The wrapped aggregator (its rule sees clipped updates).
    level
        The level whose parts are clipped.
    bounds
        The bounds, shared by nothing else (each level has its own).
    """

    def __init__(self, inner: ClusterAggregator, *, level: Level, bounds: ClipBounds) -> None:
        super().__init__(inner, level=level)
        self.bounds = bounds
        self._factors: dict[str, dict[str, float]] = {}

    def prepare_round(self, model: FederationModel, updates: Sequence[ClientUpdate]) -> Info:
        """Norms, bounds and clip factors of the round; the figures for its summary."""
        info = self.inner.prepare_round(model, updates)
        self._factors = {}
        names = level_names(model, self.level)
        if not updates or not names:
            return info
        norms = part_norms(updates, names)
        current, nxt = self.bounds.for_round(norms)
        groups = group_by_part(names)
        for i, update in enumerate(updates):
            factors = self._factors.setdefault(update.client_id, {})
            for part, part_names in groups.items():
                norm = float(norms[part][i])
                factor = current[part] / norm if norm > current[part] else 1.0
                for name in part_names:
                    factors[name] = factor
        for part, values in norms.items():
            info[BOUND_KEY.format(part=part.value)] = current[part]
            info[CLIPPED_FRACTION_KEY.format(part=part.value)] = float(
                np.mean(values > current[part])
            )
            info[NORM_MEDIAN_KEY.format(part=part.value)] = float(np.median(values))
            if part in nxt:
                info[NEXT_BOUND_KEY.format(part=part.value)] = nxt[part]
        return info

    def aggregate_level(
        self,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
        *,
        inner: LevelAggregate,
        label: str,
    ) -> tuple[Tensors, Info]:
        """The wrapped level's aggregate of the members' clipped updates."""
        return inner(base, [self._clipped(u, base) for u in members])

    def _clipped(self, update: ClientUpdate, base: Mapping[str, np.ndarray]) -> ClientUpdate:
        try:
            factors = self._factors[update.client_id]
        except KeyError:
            raise RuntimeError(
                f"update of {update.client_id!r} was not prepared: aggregate() prepares a round"
            ) from None
        if all(factors.get(name, 1.0) >= 1.0 for name in base):
            return update
        tensors = dict(update.tensors)
        for name in base:
            factor = factors.get(name, 1.0)
            if factor < 1.0:
                tensors[name] = scaled(tensors[name], factor)
        return ClientUpdate(
            client_id=update.client_id,
            cluster_id=update.cluster_id,
            num_examples=update.num_examples,
            tensors=tensors,
        )


def with_clipping(
    inner: ClusterAggregator,
    policy: ClipPolicy | None,
    *,
    levels: Sequence[Level],
    rounds_completed: Callable[[], int] | None = None,
    restored: Mapping[Part, float] | None = None,
) -> ClusterAggregator:
    """``inner`` with per-client clipping of every part of ``levels`` (None: no clipping).

    Each level gets its own :class:`ClipBounds`; ``restored`` (the bounds the last
    completed round recorded) applies to the parts of each level.
    """
    if policy is None:
        return inner
    aggregator = inner
    for level in levels:
        bounds = ClipBounds(policy, rounds_completed=rounds_completed, restored=restored)
        aggregator = NormClipping(aggregator, level=level, bounds=bounds)
    return aggregator
