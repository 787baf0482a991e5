"""Aggregators by name: the one way to pick one (strategies ask here, tests too)."""

from __future__ import annotations

from collections.abc import Callable

from fedprompt_coordinator.aggregation.base import ClusterAggregator
from fedprompt_coordinator.aggregation.contrastive import ContrastiveFedAvg
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg

AGGREGATORS: dict[str, Callable[..., ClusterAggregator]] = {
    WeightedFedAvg.name: WeightedFedAvg,
    ContrastiveFedAvg.name: ContrastiveFedAvg,
}


def make_aggregator(name: str, **options: float) -> ClusterAggregator:
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
