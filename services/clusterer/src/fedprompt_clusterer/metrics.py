"""Prometheus metrics of the clusterer: runs, their duration, clusters and noise points."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fedprompt.telemetry import new_registry
from fedprompt_clusterer.clustering import ClusterResult

#: HDBSCAN over a few dozen silos takes milliseconds; thousands of members, seconds.
RUN_SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ClustererMetrics:
    """The clusterer's registry and the series one clustering run updates.

    Parameters
    ----------
    registry
        Where the metrics live; a fresh one with the process collectors by default.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        r = self.registry
        self.runs = Counter(
            "fedprompt_clusterer_runs",
            "Clustering runs, by outcome (ok, error).",
            ["outcome"],
            registry=r,
        )
        self.run_duration = Histogram(
            "fedprompt_clusterer_run_duration_seconds",
            "Wall-clock time of one clustering run.",
            buckets=RUN_SECONDS_BUCKETS,
            registry=r,
        )
        self.clusters = Gauge(
            "fedprompt_clusterer_clusters", "Clusters found by the last run.", registry=r
        )
        self.members = Gauge(
            "fedprompt_clusterer_members", "Members clustered by the last run.", registry=r
        )
        self.noise = Gauge(
            "fedprompt_clusterer_noise_points",
            "Members HDBSCAN called noise in the last run (re-assigned by the noise policy).",
            registry=r,
        )
        self.refined = Gauge(
            "fedprompt_clusterer_refined_members",
            "Members the last run placed by their update alignment instead of their metadata.",
            registry=r,
        )
        for outcome in ("ok", "error"):
            self.runs.labels(outcome=outcome)

    def observe_run(self, result: ClusterResult) -> None:
        """Record a successful run."""
        self.runs.labels(outcome="ok").inc()
        self.run_duration.observe(result.seconds)
        self.clusters.set(result.num_clusters)
        self.members.set(len(result.assignment))
        self.noise.set(len(result.noise_reassigned))
        self.refined.set(len(result.refined))

    def observe_error(self) -> None:
        """Count a run that failed (bad request or clustering error)."""
        self.runs.labels(outcome="error").inc()
