"""Prometheus metrics of a client agent (one silo): training and evaluation of each round.

The agent records them after each task from the metrics the runtime returns; this module
has no torch. A silo's registry describes that silo only, so no client-id label is needed
(Prometheus adds the scrape target's own labels).
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedprompt.telemetry import new_registry

#: Optimizer steps take milliseconds (tiny prompts on GPU) to seconds (causal LMs on CPU).
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: A round of local training: seconds to tens of minutes.
TRAIN_SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class ClientMetrics:
    """The client agent's registry and the series its tasks update.

    Parameters
    ----------
    registry
        Where the metrics live; a fresh one with the process collectors by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.rounds_trained = Counter(
            "fedprompt_client_rounds_trained", "Rounds this silo trained and uploaded.", registry=r
        )
        self.round = Gauge("fedprompt_client_round", "Round of this silo's last task.", registry=r)
        self.step_seconds = Histogram(
            "fedprompt_client_train_step_seconds",
            "Mean optimizer-step time of a round's local training (one observation per round).",
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        )
        self.train_seconds = Histogram(
            "fedprompt_client_train_seconds",
            "Wall-clock time of a round's local training.",
            buckets=TRAIN_SECONDS_BUCKETS,
            registry=r,
        )
        self.steps = Counter(
            "fedprompt_client_train_steps", "Optimizer steps taken by this silo.", registry=r
        )
        self.loss = Gauge(
            "fedprompt_client_train_loss", "Mean training loss of the last round.", registry=r
        )
        self.accuracy = Gauge(
            "fedprompt_client_eval_accuracy",
            "Accuracy of the last aggregated model on this silo's held-out split.",
            registry=r,
        )
        self.dp_sgd_epsilon = Gauge(
            "fedprompt_client_dp_sgd_epsilon",
            "Record-level ε spent by DP-SGD in this silo (0 when off).",
            registry=r,
        )

    def observe_training(self, round_id: int, metrics: Mapping[str, float]) -> None:
        """Record a round's local training from the runtime's metrics."""
        self.rounds_trained.inc()
        self.round.set(round_id)
        if "step_seconds" in metrics:
            self.step_seconds.observe(metrics["step_seconds"])
        if "seconds" in metrics:
            self.train_seconds.observe(metrics["seconds"])
        if "steps" in metrics:
            self.steps.inc(metrics["steps"])
        if "loss" in metrics:
            self.loss.set(metrics["loss"])
        if "dp_sgd_epsilon" in metrics:
            self.dp_sgd_epsilon.set(metrics["dp_sgd_epsilon"])

    def observe_evaluation(self, round_id: int, metrics: Mapping[str, float]) -> None:
        """Record the evaluation of a round's aggregated model."""
        self.round.set(round_id)
        if "accuracy" in metrics:
            self.accuracy.set(metrics["accuracy"])
