"""How a round's validated updates become the next federation model.

``levels``: which level (global or per cluster) a shared tensor belongs to.
``base``: the :class:`~fedprompt_coordinator.aggregation.base.ClusterAggregator` interface,
one method per level. ``fedavg`` and ``contrastive``: the aggregators; ``dp_fedavg``: the
DP-FedAvg wrapper of the global level; ``registry``: aggregators by name;
``weighted_sum``: the bounded-memory float64 sums they all use.
"""
