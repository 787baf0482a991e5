"""Prometheus metrics of the coordinator.

Two kinds of series:

* live state, read from the federation at every scrape by :class:`FederationCollector`
  (current round, phase, connected clients, ε spent);
* events, recorded by one-line hook calls where they happen: a round ended
  (:meth:`CoordinatorMetrics.observe_round`: duration, aggregation time, participants and
  dropped clients, accuracy and fairness overall and per cluster, the clip bound and clipped
  fraction of every shared part, the largest weight share per level), a round ended by an
  unexpected error (:meth:`CoordinatorMetrics.observe_round_error`) and bytes on the wire
  (:meth:`CoordinatorMetrics.count_bytes`, called by the ``TrafficMeter``).

No series carries a client id: with many silos that would multiply the number of series;
cluster ids are few and stable, so they are labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fedprompt.fairness import fairness_summary
from fedprompt.telemetry import new_registry
from fedprompt_coordinator.aggregation.clipping import BOUND_KEY, CLIPPED_FRACTION_KEY
from fedprompt_coordinator.aggregation.parts import Part
from fedprompt_coordinator.config import DPLevel
from fedprompt_coordinator.domain import Phase, RoundRecord

#: Round durations span seconds (tiny demo) to hours (large models on slow silos).
ROUND_SECONDS_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
#: Aggregation of prompts takes milliseconds; of full models, seconds.
AGGREGATION_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60)
#: The ``part`` label of DP-FedAvg's clipping of the whole global level.
DP_GLOBAL_PART = "dp_global"


def clip_figures(summary: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """(bound, clipped fraction) of every part a round summary reports, by part label.

    Per-client clipping reports ``clip_<part>_bound`` and ``clip_<part>_clipped_fraction``;
    DP-FedAvg reports its clip norm S_l and the round's clipped fraction of each DP level
    (``dp_global``, ``dp_cluster``, ``dp_head``).
    """
    out = {}
    for part in Part:
        bound = summary.get(BOUND_KEY.format(part=part.value))
        fraction = summary.get(CLIPPED_FRACTION_KEY.format(part=part.value))
        if bound is not None and fraction is not None:
            out[part.value] = (bound, fraction)
    if "dp_clip_norm" in summary and "dp_clipped_fraction" in summary:
        out[DP_GLOBAL_PART] = (summary["dp_clip_norm"], summary["dp_clipped_fraction"])
    for level in DPLevel:
        bound = summary.get(f"dp_clip_norm_{level.value}")
        fraction = summary.get(f"dp_{level.value}_clipped_fraction")
        if bound is not None and fraction is not None:
            out[f"dp_{level.value}"] = (bound, fraction)
    return out


def max_weight_shares(summary: Mapping[str, float]) -> dict[str, float]:
    """The largest weight share of any member per level (``global``; ``cluster``: the
    largest over clusters) that a round summary reports."""
    out = {}
    if "global_max_weight" in summary:
        out["global"] = summary["global_max_weight"]
    cluster = [
        v for k, v in summary.items() if k.startswith("cluster_") and k.endswith("_max_weight")
    ]
    if cluster:
        out["cluster"] = max(cluster)
    return out


@dataclass(frozen=True)
class FederationGauges:
    """The federation's live state, as read at scrape time."""

    current_round: int
    completed_rounds: int
    total_rounds: int
    phase: Phase
    clients_joined: int
    clients_connected: int
    epsilon: float
    epsilon_budget: float
    delta: float
    #: ε of each DP level alone, and its noise multiplier z_l (empty when DP is off).
    epsilon_by_level: Mapping[str, float] = field(default_factory=dict)
    noise_multiplier_by_level: Mapping[str, float] = field(default_factory=dict)


class FederationCollector(Collector):
    """Reads :class:`FederationGauges` from a callable at every scrape."""

    def __init__(self, read: Callable[[], FederationGauges]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        """Yield one gauge family per field, the phase as one series per phase name."""
        g = self._read()
        simple = (
            (
                "fedprompt_round_current",
                "Round in progress, else the last completed one.",
                g.current_round,
            ),
            (
                "fedprompt_rounds_completed",
                "Rounds completed and checkpointed.",
                g.completed_rounds,
            ),
            (
                "fedprompt_rounds_configured",
                "Rounds the federation is configured to run.",
                g.total_rounds,
            ),
            (
                "fedprompt_clients_joined",
                "Clients that have joined the federation.",
                g.clients_joined,
            ),
            (
                "fedprompt_clients_connected",
                "Clients with an open task stream.",
                g.clients_connected,
            ),
            (
                "fedprompt_privacy_epsilon",
                "ε spent by DP-FedAvg so far, per client, all DP levels composed (0 when off).",
                g.epsilon,
            ),
            ("fedprompt_privacy_delta", "δ of the reported (ε, δ) (0 when DP is off).", g.delta),
        )
        for name, doc, value in simple:
            yield GaugeMetricFamily(name, doc, value=float(value))
        budget = GaugeMetricFamily(
            "fedprompt_privacy_epsilon_budget",
            "ε budget the coordinator will not exceed (+Inf when unlimited, 0 when DP is off).",
            value=g.epsilon_budget,
        )
        yield budget
        by_level = GaugeMetricFamily(
            "fedprompt_privacy_level_epsilon",
            "ε spent by each DP level alone (fedprompt_privacy_epsilon: all levels composed).",
            labels=["level"],
        )
        for level, value in sorted(g.epsilon_by_level.items()):
            by_level.add_metric([level], float(value))
        yield by_level
        noise = GaugeMetricFamily(
            "fedprompt_privacy_level_noise_multiplier",
            "z_l of each DP level: noise std z_l·S_l on the sum of its clipped updates.",
            labels=["level"],
        )
        for level, value in sorted(g.noise_multiplier_by_level.items()):
            noise.add_metric([level], float(value))
        yield noise
        phase = GaugeMetricFamily(
            "fedprompt_phase", "1 for the round state machine's current phase.", labels=["phase"]
        )
        for member in Phase:
            phase.add_metric([member.name.lower()], 1.0 if member is g.phase else 0.0)
        yield phase


class CoordinatorMetrics:
    """The coordinator's registry and event metrics.

    Parameters
    ----------
    registry
        Where the metrics live; a fresh one with the process collectors by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.rounds = Counter(
            "fedprompt_rounds",
            "Round attempts that ended, by outcome (completed or failed).",
            ["status"],
            registry=r,
        )
        self.round_duration = Histogram(
            "fedprompt_round_duration_seconds",
            "Wall-clock time of a round attempt, quorum to checkpoint.",
            buckets=ROUND_SECONDS_BUCKETS,
            registry=r,
        )
        self.aggregation_duration = Histogram(
            "fedprompt_aggregation_duration_seconds",
            "Time to aggregate one round's updates.",
            buckets=AGGREGATION_SECONDS_BUCKETS,
            registry=r,
        )
        self.participants = Gauge(
            "fedprompt_round_participants", "Clients drawn into the last round.", registry=r
        )
        self.updates_accepted = Gauge(
            "fedprompt_round_updates_accepted",
            "Updates accepted in the last round before its deadline.",
            registry=r,
        )
        self.dropped = Gauge(
            "fedprompt_round_dropped_clients",
            "Participants of the last round whose update did not arrive by the deadline.",
            registry=r,
        )
        self.dropped_total = Counter(
            "fedprompt_dropped_clients",
            "Participants whose update did not arrive by the round deadline, summed over rounds.",
            registry=r,
        )
        self.traffic = Counter(
            "fedprompt_traffic_bytes",
            "gRPC message bytes exchanged with clients (up: received, down: sent).",
            ["direction"],
            registry=r,
        )
        self.round_bytes_per_client = Gauge(
            "fedprompt_round_bytes_per_client",
            "Mean bytes per participant in the last completed round.",
            ["direction"],
            registry=r,
        )
        self.clusters = Gauge(
            "fedprompt_clusters", "Clusters among the last round's participants.", registry=r
        )
        self.cluster_moves = Counter(
            "fedprompt_cluster_moves_total",
            "Clients whose cluster changed when the clusterer was asked again (their metadata "
            "regrouped, or cluster refinement moved them by their updates).",
            registry=r,
        )
        self.accuracy = Gauge(
            "fedprompt_accuracy",
            "Accuracy of the aggregated model over clients in the last completed round "
            "(stat: mean, worst, std).",
            ["stat"],
            registry=r,
        )
        self.fairness = Gauge(
            "fedprompt_fairness_jain",
            "Jain's fairness index of client accuracies in the last completed round.",
            registry=r,
        )
        self.cluster_accuracy = Gauge(
            "fedprompt_cluster_accuracy",
            "Mean client accuracy per cluster in the last completed round.",
            ["cluster"],
            registry=r,
        )
        self.cluster_fairness = Gauge(
            "fedprompt_cluster_fairness_jain",
            "Jain's fairness index of client accuracies per cluster in the last completed round.",
            ["cluster"],
            registry=r,
        )
        self.cluster_members = Gauge(
            "fedprompt_cluster_members",
            "Participants per cluster in the last round.",
            ["cluster"],
            registry=r,
        )
        self.round_errors = Counter(
            "fedprompt_round_errors",
            "Round attempts ended by an unexpected error (a full disk, a bug), by the phase it "
            "happened in; the coordinator then exits non-zero to be restarted.",
            ["phase"],
            registry=r,
        )
        self.serving = Gauge(
            "fedprompt_round_loop_serving",
            "1 while the round loop runs; 0 once a round failed with an unexpected error (the "
            "coordinator reports NOT_SERVING and exits to be restarted).",
            registry=r,
        )
        self.serving.set(1)
        self.clip_bound = Gauge(
            "fedprompt_clip_bound",
            "Per-client L2 clip bound of each shared part in the last completed round "
            "(parts dp_global, dp_cluster, dp_head: DP-FedAvg's S_l of each DP level).",
            ["part"],
            registry=r,
        )
        self.clip_clipped_fraction = Gauge(
            "fedprompt_clip_clipped_fraction",
            "Fraction of the last completed round's updates of each part that were clipped.",
            ["part"],
            registry=r,
        )
        self.max_weight_share = Gauge(
            "fedprompt_aggregation_max_weight_share",
            "Largest share any one member had in a mean of the last completed round "
            "(level: global, or cluster: the largest over clusters).",
            ["level"],
            registry=r,
        )
        self.secagg_groups = Counter(
            "fedprompt_secagg_groups",
            "Secure-aggregation groups (one per cluster and round) by outcome: released (the "
            "sum was unmasked and applied), skipped (too few members, masked uploads or shares: "
            "nothing computed), rejected (the unmasked sum was over what honest members can "
            "produce: a poisoned input; not applied).",
            ["outcome"],
            registry=r,
        )
        self.secagg_recovered = Counter(
            "fedprompt_secagg_recovered_members",
            "Members that dropped out after sending their shares and whose masks were removed "
            "with the others' shares.",
            registry=r,
        )
        for outcome in ("released", "skipped", "rejected"):
            self.secagg_groups.labels(outcome=outcome)
        for direction in ("up", "down"):
            self.traffic.labels(direction=direction)
        for status in ("completed", "failed"):
            self.rounds.labels(status=status)
        for member in Phase:
            if member is not Phase.DONE:
                self.round_errors.labels(phase=member.name.lower())

    def watch(self, read: Callable[[], FederationGauges]) -> None:
        """Register the live-state collector that calls ``read`` at every scrape."""
        self.registry.register(FederationCollector(read))

    def count_bytes(self, up: int, down: int) -> None:
        """Add bytes received from (``up``) and sent to (``down``) clients."""
        if up:
            self.traffic.labels(direction="up").inc(up)
        if down:
            self.traffic.labels(direction="down").inc(down)

    def observe_cluster_moves(self, moved: int) -> None:
        """Count clients whose cluster changed at a re-clustering."""
        self.cluster_moves.inc(moved)

    def observe_round_error(self, phase: Phase) -> None:
        """Count a round attempt ended by an unexpected error; the round loop stops serving."""
        self.round_errors.labels(phase=phase.name.lower()).inc()
        self.serving.set(0)

    def _observe_secagg(self, summary: Mapping[str, float]) -> None:
        """Count a round's secure-aggregation groups by outcome (none without it)."""
        if "secagg_groups" not in summary:
            return
        rejected = sum(
            1
            for k, v in summary.items()
            if k.startswith("secagg_cluster_") and k.endswith("_rejected") and v
        )
        self.secagg_groups.labels(outcome="released").inc(summary.get("secagg_released", 0.0))
        self.secagg_groups.labels(outcome="rejected").inc(rejected)
        self.secagg_groups.labels(outcome="skipped").inc(
            max(0.0, summary.get("secagg_skipped", 0.0) - rejected)
        )
        self.secagg_recovered.inc(summary.get("secagg_recovered", 0.0))

    def observe_round(self, record: RoundRecord) -> None:
        """Record a round attempt that ended (completed or failed)."""
        completed = record.status == "completed"
        self.rounds.labels(status="completed" if completed else "failed").inc()
        self.round_duration.observe(max(0.0, record.finished_unix - record.started_unix))
        participants = len(record.clients)
        accepted = sum(c.update_accepted for c in record.clients)
        self.participants.set(participants)
        self.updates_accepted.set(accepted)
        self.dropped.set(participants - accepted)
        self.dropped_total.inc(participants - accepted)
        self.clusters.set(record.num_clusters)
        sizes: dict[int, int] = {}
        for client in record.clients:
            sizes[client.cluster_id] = sizes.get(client.cluster_id, 0) + 1
        for cluster, size in sizes.items():
            self.cluster_members.labels(cluster=str(cluster)).set(size)
        self._observe_secagg(record.summary)
        if not completed:
            return
        self.aggregation_duration.observe(record.summary.get("aggregation_seconds", 0.0))
        for part, (bound, fraction) in clip_figures(record.summary).items():
            self.clip_bound.labels(part=part).set(bound)
            self.clip_clipped_fraction.labels(part=part).set(fraction)
        for level, share in max_weight_shares(record.summary).items():
            self.max_weight_share.labels(level=level).set(share)
        if participants:
            for direction, total in (
                ("up", sum(c.bytes_up for c in record.clients)),
                ("down", sum(c.bytes_down for c in record.clients)),
            ):
                self.round_bytes_per_client.labels(direction=direction).set(total / participants)
        overall = fairness_summary(
            [c.eval_metrics["accuracy"] for c in record.clients if "accuracy" in c.eval_metrics]
        )
        if overall:
            self.accuracy.labels(stat="mean").set(overall["accuracy_mean"])
            self.accuracy.labels(stat="worst").set(overall["accuracy_worst"])
            self.accuracy.labels(stat="std").set(overall["accuracy_std"])
            self.fairness.set(overall["jain_index"])
        for cluster in sizes:
            per_cluster = fairness_summary(
                [
                    c.eval_metrics["accuracy"]
                    for c in record.clients
                    if c.cluster_id == cluster and "accuracy" in c.eval_metrics
                ]
            )
            if per_cluster:
                label = str(cluster)
                self.cluster_accuracy.labels(cluster=label).set(per_cluster["accuracy_mean"])
                self.cluster_fairness.labels(cluster=label).set(per_cluster["jain_index"])
