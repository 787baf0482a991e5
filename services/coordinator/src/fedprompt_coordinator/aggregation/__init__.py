"""How a round's validated updates become the next federation model.

``levels``: which level (global or per cluster) a shared tensor belongs to.
``base``: the :class:`~fedprompt_coordinator.aggregation.base.ClusterAggregator` interface,
one method per level. ``fedavg`` and ``contrastive``: the aggregators; ``dp_fedavg``: one
level's DP-FedAvg step (and the global-only wrapper); ``dp_levels``: DP-FedAvg of every DP
level (global, cluster, head); ``registry``: aggregators by name;
``weighted_sum``: the bounded-memory float64 sums they all use.
"""
