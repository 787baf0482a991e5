"""Federated strategies on one code path: which tensors travel, at which level, how aggregated.

============  =====================================  =======================================
strategy      shared tensors and levels               aggregation
============  =====================================  =======================================
local         none (each silo trains alone)           none
fedavg        everything global (one prompt + head)   n-weighted FedAvg
clustered     prompt.global global; rest per cluster  n-weighted FedAvg per level
fpl           prompt.global global; rest per cluster  contrastive weights per cluster,
                                                      DP-FedAvg of the global level (if on)
lora-fedavg   LoRA adapters + head, global            n-weighted FedAvg
full-fedavg   every trainable weight + head, global   n-weighted FedAvg (the traffic reference)
============  =====================================  =======================================

The client builds the matching model (prompt, LoRA or full fine-tuning) from the same name;
the coordinator refuses members whose strategy differs from its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedprompt.strategies import StrategyName
from fedprompt_coordinator.aggregation import ClusterAggregator, ContrastiveFedAvg, WeightedFedAvg
from fedprompt_coordinator.config import CoordinatorConfig


@dataclass(frozen=True)
class Strategy:
    """What the coordinator does differently per strategy."""

    name: StrategyName
    #: Tensor names whose level is global; every other travelling tensor is per cluster.
    clustered_levels: bool
    #: Server-side contrastive alignment weights and client-side InfoNCE.
    contrastive: bool
    #: DP-FedAvg may be applied to the global level.
    supports_client_dp: bool


STRATEGIES: dict[StrategyName, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            StrategyName.LOCAL, clustered_levels=False, contrastive=False, supports_client_dp=False
        ),
        Strategy(
            StrategyName.FEDAVG, clustered_levels=False, contrastive=False, supports_client_dp=True
        ),
        Strategy(
            StrategyName.CLUSTERED,
            clustered_levels=True,
            contrastive=False,
            supports_client_dp=True,
        ),
        Strategy(
            StrategyName.FPL, clustered_levels=True, contrastive=True, supports_client_dp=True
        ),
        Strategy(
            StrategyName.LORA_FEDAVG,
            clustered_levels=False,
            contrastive=False,
            supports_client_dp=True,
        ),
        Strategy(
            StrategyName.FULL_FEDAVG,
            clustered_levels=False,
            contrastive=False,
            supports_client_dp=True,
        ),
    )
}


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by name; a clear ValueError for unknown names."""
    try:
        return STRATEGIES[StrategyName(name)]
    except ValueError:
        raise ValueError(
            f"unknown strategy {name!r}; known: {', '.join(s.value for s in StrategyName)}"
        ) from None


def build_aggregator(config: CoordinatorConfig) -> ClusterAggregator:
    """The aggregator a configured strategy uses."""
    strategy = get_strategy(config.strategy)
    if strategy.contrastive and config.contrastive.server_weighting == "contrastive":
        return ContrastiveFedAvg(temperature=config.contrastive.temperature)
    return WeightedFedAvg()
