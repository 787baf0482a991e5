"""What the coordinator does for each federated strategy: one object per strategy.

A :class:`Strategy` owns the strategy's behaviour, as Flower's ``Strategy`` owns
``configure_train`` and ``aggregate_train``; the round state machine calls it and never
branches on a strategy's name:

- :meth:`Strategy.split_levels`: which shared tensors are global and which per cluster;
- :meth:`Strategy.check_initial`: what an initial model must hold;
- :meth:`Strategy.configure_train`: the training settings of a TRAIN task;
- :meth:`Strategy.configure_evaluate`: what an EVALUATE task asks (a personalization pass);
- :meth:`Strategy.round_start_tensors`: read-only extras of a round-start model;
- :meth:`Strategy.make_aggregator`: how a round's updates are aggregated: the strategy's
  own weighted mean (:meth:`Strategy.base_aggregator`, weights capped per member), the
  configured robust rule of each level, and per-client clipping of every part
  (``aggregation:`` in the coordinator config).

Each name of the registry in :mod:`fedprompt.strategies` has one class here
(:func:`register_strategy`). DP-FedAvg is not a strategy: it wraps a strategy's aggregator
(:class:`~fedprompt_coordinator.aggregation.dp_levels.DPLevels`, every DP level).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import numpy as np

from fedprompt.errors import InvalidArgumentError
from fedprompt.strategies import STRATEGIES, StrategyName, StrategySpec
from fedprompt.tensor_names import CLUSTER_PROMPT, centroid_tensors
from fedprompt_coordinator.aggregation.base import ClusterAggregator
from fedprompt_coordinator.aggregation.clipping import ClipPolicy, with_clipping
from fedprompt_coordinator.aggregation.levels import Level, split_levels
from fedprompt_coordinator.aggregation.parts import Part
from fedprompt_coordinator.aggregation.registry import (
    RuleOptions,
    make_aggregator,
    with_level_rule,
)
from fedprompt_coordinator.aggregation.weighting import ShareCap
from fedprompt_coordinator.config import (
    AggregationConfig,
    ClipMode,
    ClippingConfig,
    CoordinatorConfig,
    Weighting,
)
from fedprompt_coordinator.domain import EvaluateSettings, FederationModel, TrainingSettings

Tensors = dict[str, np.ndarray]


class Strategy:
    """The coordinator's side of one strategy; defaults are those of plain FedAvg.

    The levels come from the registry's description (``spec.clustered``: the global prompt
    segment is global and every other shared tensor per cluster; else everything is global,
    whatever the client's model family makes travel); subclasses add what a strategy does
    beyond weighted FedAvg.

    Parameters
    ----------
    spec
        The registry's description of the strategy.
    config
        The coordinator's configuration (training and contrastive settings).
    """

    def __init__(self, spec: StrategySpec, config: CoordinatorConfig) -> None:
        self.spec = spec
        self._config = config

    @property
    def name(self) -> StrategyName:
        """The strategy's name."""
        return self.spec.name

    def split_levels(self, tensors: Mapping[str, np.ndarray]) -> tuple[Tensors, Tensors]:
        """Split shared tensors into their (global, cluster) levels."""
        return split_levels(tensors, clustered=self.spec.clustered)

    def check_initial(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Refuse an initial model without tensors (``INVALID_ARGUMENT``)."""
        if not tensors:
            raise InvalidArgumentError("the initial model holds no tensors")

    def configure_train(self) -> TrainingSettings:
        """The training settings every TRAIN task of a round carries."""
        cfg = self._config.training
        return TrainingSettings(
            local_steps=cfg.local_steps,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            head_learning_rate=cfg.head_learning_rate,
            contrastive_weight=0.0,
            contrastive_temperature=self._config.contrastive.temperature,
            proximal_mu=cfg.proximal_mu,
        )

    def configure_evaluate(self) -> EvaluateSettings:
        """What every EVALUATE task of a round asks beyond evaluating the aggregate.

        Returns
        -------
        EvaluateSettings
            The steps of the clients' final personalization pass and the settings it trains
            with (this strategy's :meth:`configure_train`); no pass and no settings when
            ``evaluation.personalize_steps`` is 0, so that the task is the one of old.
        """
        steps = self._config.evaluation.personalize_steps
        if steps == 0:
            return EvaluateSettings()
        return EvaluateSettings(personalize_steps=steps, training=self.configure_train())

    def round_start_tensors(
        self, model: FederationModel, clusters: Iterable[int]
    ) -> dict[str, np.ndarray]:
        """Read-only tensors added to the round-start model of ``clusters`` (none here)."""
        return {}

    def base_aggregator(self) -> ClusterAggregator:
        """The strategy's own aggregator: FedAvg with the configured, capped weights."""
        return make_aggregator("fedavg", weighting=share_cap(self._config.aggregation))

    def make_aggregator(
        self,
        *,
        clip_global: bool = True,
        clip_cluster: bool = True,
        rounds_completed: Callable[[], int] | None = None,
        restored_bounds: Mapping[Part, float] | None = None,
    ) -> ClusterAggregator:
        """A fresh aggregator of this strategy's updates, with every configured defence.

        :meth:`base_aggregator`, then the configured rule of each level, then per-client
        clipping of each part of each level, so that a rule only ever sees clipped updates.

        Parameters
        ----------
        clip_global
            Clip the global level (False under DP-FedAvg, whose own clipping replaces it).
        clip_cluster
            Clip the cluster level (False when DP-FedAvg covers all its parts).
        rounds_completed
            Completed rounds, for adaptive clipping's durable state (None: every
            aggregation counts as a completed round).
        restored_bounds
            Adaptive bounds the last completed round recorded.
        """
        agg = self._config.aggregation
        options = RuleOptions(trim_fraction=agg.trim_fraction, krum_f=agg.krum_f, krum_m=agg.krum_m)
        aggregator = self.base_aggregator()
        aggregator = with_level_rule(
            aggregator, agg.global_rule.value, level=Level.GLOBAL, options=options
        )
        aggregator = with_level_rule(
            aggregator, agg.cluster_rule.value, level=Level.CLUSTER, options=options
        )
        levels = [
            level
            for level, clip in ((Level.GLOBAL, clip_global), (Level.CLUSTER, clip_cluster))
            if clip
        ]
        return with_clipping(
            aggregator,
            clip_policy(agg.clipping),
            levels=levels,
            rounds_completed=rounds_completed,
            restored=restored_bounds,
        )


_STRATEGY_CLASSES: dict[StrategyName, type[Strategy]] = {}


def register_strategy(*names: StrategyName) -> Callable[[type[Strategy]], type[Strategy]]:
    """Register a :class:`Strategy` class under one or more names (decorator)."""

    def decorator(cls: type[Strategy]) -> type[Strategy]:
        for name in names:
            if name in _STRATEGY_CLASSES:
                raise ValueError(f"strategy {name.value!r} is already registered")
            _STRATEGY_CLASSES[name] = cls
        return cls

    return decorator


register_strategy(
    StrategyName.FEDAVG,
    StrategyName.CLUSTERED,
    StrategyName.LORA_FEDAVG,
    StrategyName.FULL_FEDAVG,
)(Strategy)


@register_strategy(StrategyName.LOCAL)
class LocalOnly(Strategy):
    """Every silo trains alone: nothing travels, and an initial model may be empty."""

    def check_initial(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Any initial model, an empty one included, is accepted."""


@register_strategy(StrategyName.FPL)
class FederatedPromptLearning(Strategy):
    """Clustered FedAvg plus contrastive alignment (DESIGN.md §3).

    Clients add ``λ · InfoNCE`` of their cluster segment against every cluster's centroid,
    which round-start models carry; the coordinator weighs a cluster's members by the
    alignment of their proposals (or by n only, the ``mean`` ablation).
    """

    def configure_train(self) -> TrainingSettings:
        """The base settings with λ of the client-side InfoNCE term."""
        return replace(
            super().configure_train(), contrastive_weight=self._config.contrastive.weight
        )

    def round_start_tensors(
        self, model: FederationModel, clusters: Iterable[int]
    ) -> dict[str, np.ndarray]:
        """``centroid.<k>`` of every cluster of the round (InfoNCE positive and negatives)."""
        segments = {}
        for cluster in clusters:
            segment = model.for_cluster(cluster).get(CLUSTER_PROMPT)
            if segment is not None:
                segments[cluster] = segment
        return centroid_tensors(segments)

    def base_aggregator(self) -> ClusterAggregator:
        """Contrastive alignment weights per cluster, or FedAvg's weights (``mean``); capped."""
        contrastive = self._config.contrastive
        if contrastive.server_weighting == "contrastive":
            return make_aggregator(
                "contrastive",
                temperature=contrastive.temperature,
                weighting=share_cap(self._config.aggregation),
            )
        return super().base_aggregator()


def share_cap(config: AggregationConfig) -> ShareCap:
    """The weighting and share cap the configuration asks for."""
    return ShareCap(
        uniform=config.weighting is Weighting.UNIFORM,
        max_share=config.max_weight_share,
        max_multiple=config.max_weight_multiple,
    )


def clip_policy(config: ClippingConfig) -> ClipPolicy | None:
    """The clipping the configuration asks for (None: ``off``)."""
    if config.mode is ClipMode.OFF:
        return None
    return ClipPolicy(
        adaptive=config.mode is ClipMode.ADAPTIVE,
        bound=config.bound,
        part_bounds=dict(config.part_bounds),
        target_quantile=config.target_quantile,
        learning_rate=config.learning_rate,
    )


def build_strategy(config: CoordinatorConfig) -> Strategy:
    """The strategy object of the configured strategy."""
    name = StrategyName(config.strategy)
    return _STRATEGY_CLASSES[name](STRATEGIES[name], config)


def registered_strategies() -> frozenset[StrategyName]:
    """The names that have a strategy class."""
    return frozenset(_STRATEGY_CLASSES)
