"""Aggregators and level rules by name: the one way to pick one (strategies ask here, tests too).

``AGGREGATORS`` are whole aggregators (a weighted mean of every level). ``LEVEL_RULES`` are
robust rules that replace one level's mean (:class:`~fedprompt_coordinator.aggregation.base.
LevelWrapper` subclasses); ``mean`` names no wrapper: the aggregator's own weighted mean.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedprompt_coordinator.aggregation.base import ClusterAggregator
from fedprompt_coordinator.aggregation.contrastive import ContrastiveFedAvg
from fedprompt_coordinator.aggregation.coordinatewise import CoordinateMedian, TrimmedMean
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.aggregation.krum import MultiKrum
from fedprompt_coordinator.aggregation.levels import Level

AGGREGATORS: dict[str, Callable[..., ClusterAggregator]] = {
    WeightedFedAvg.name: WeightedFedAvg,
    ContrastiveFedAvg.name: ContrastiveFedAvg,
}

#: The rule that is no wrapper: the aggregator's own (weighted) mean.
MEAN_RULE = "mean"


@dataclass(frozen=True)
class RuleOptions:
    """The settings of the robust rules (each rule reads its own)."""

    trim_fraction: float = 0.2
    krum_f: int = 1
    krum_m: int | None = None


LevelRuleFactory = Callable[[ClusterAggregator, Level, RuleOptions], ClusterAggregator]

LEVEL_RULES: dict[str, LevelRuleFactory] = {
    CoordinateMedian.name: lambda inner, level, _: CoordinateMedian(inner, level=level),
    TrimmedMean.name: lambda inner, level, o: TrimmedMean(
        inner, level=level, trim_fraction=o.trim_fraction
    ),
    MultiKrum.name: lambda inner, level, o: MultiKrum(inner, level=level, f=o.krum_f, m=o.krum_m),
}


def make_aggregator(name: str, **options: Any) -> ClusterAggregator:
    """Instantiate a registered aggregator by name with its keyword options.

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    try:
        factory = AGGREGATORS[name]
    except KeyError:
        raise ValueError(f"unknown aggregator {name!r}; known: {sorted(AGGREGATORS)}") from None
    return factory(**options)


def with_level_rule(
    inner: ClusterAggregator, rule: str, *, level: Level, options: RuleOptions
) -> ClusterAggregator:
    """``inner`` with ``level`` aggregated by ``rule`` (``mean``: ``inner`` itself).

    Raises
    ------
    ValueError
        For an unknown rule, listing the known ones.
    """
    if rule == MEAN_RULE:
        return inner
    try:
        factory = LEVEL_RULES[rule]
    except KeyError:
        known = sorted([MEAN_RULE, *LEVEL_RULES])
        raise ValueError(f"unknown aggregation rule {rule!r}; known: {known}") from None
    return factory(inner, level, options)
