"""Round reports: the record of every round attempt, the status snapshot and the gauges.

:class:`RoundReports` reads the other rooms (sessions, the round progress, traffic, the
privacy budget, the state store) and writes nothing but finished round records, durably
and into the Prometheus metrics. The round state machine decides when a round ends and
with which status; this module decides what its record and summary hold, and what a
status caller sees:

- the **full view** (the operator certificate, or any caller of a plaintext coordinator)
  holds every client's record, metadata, sample count and per-round metrics;
- the **silo view** (a silo certificate) holds the caller's own client record and its own
  per-round records, plus federation-level aggregates only: phase, rounds, counts of
  clients, the round summaries without their per-cluster keys (a cluster of one would
  reveal one silo's accuracy), ε.

Either view comes a page at a time: at most ``page_clients`` clients (a cursor over the
sorted client ids) and ``page_rounds`` round records (the latest by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedprompt.fairness import fairness_summary
from fedprompt_coordinator.domain import (
    ClientRoundRecord,
    ClientStatus,
    FederationStatus,
    RoundRecord,
    StatusQuery,
    StatusView,
)
from fedprompt_coordinator.metrics import CoordinatorMetrics, FederationGauges
from fedprompt_coordinator.privacy import PrivacyBudget
from fedprompt_coordinator.round_progress import RoundInProgress, RoundProgress
from fedprompt_coordinator.sessions import ClientSession, ClientSessions
from fedprompt_coordinator.state_store import StateStore
from fedprompt_coordinator.traffic import TrafficMeter

#: Prefix of the round summary keys that describe one cluster (left out of the silo view).
CLUSTER_SUMMARY_PREFIX = "cluster_"
#: Prefix of DP-FedAvg's per-cluster keys (``dp_cluster_<k>_skipped``, ...), per-cluster too.
DP_CLUSTER_SUMMARY_PREFIX = "dp_cluster_"


class RoundReports:
    """Round records, the federation's status and the gauges the metrics endpoint reads.

    Parameters
    ----------
    total_rounds
        Rounds the federation is configured to run.
    strategy
        The federation's strategy name, as reported in the status.
    state
        Durable federation state: finished rounds are recorded there.
    metrics
        Prometheus metrics finished rounds are counted into.
    sessions
        The joined clients.
    progress
        Where the round state machine stands.
    traffic
        Bytes up and down per round and client.
    budget
        The DP-FedAvg budget, or None when DP is off.
    clock
        Wall-clock source (seconds since the epoch).
    page_clients
        Most clients one status page holds.
    page_rounds
        Most round records one status page holds.
    """

    def __init__(
        self,
        *,
        total_rounds: int,
        strategy: str,
        state: StateStore,
        metrics: CoordinatorMetrics,
        sessions: ClientSessions,
        progress: RoundProgress,
        traffic: TrafficMeter,
        budget: PrivacyBudget | None,
        clock: Callable[[], float],
        page_clients: int = 100,
        page_rounds: int = 20,
    ) -> None:
        self._total_rounds = total_rounds
        self._strategy = strategy
        self._state = state
        self._metrics = metrics
        self._sessions = sessions
        self._progress = progress
        self._traffic = traffic
        self._budget = budget
        self._clock = clock
        self._page_clients = page_clients
        self._page_rounds = page_rounds

    def round_record(
        self,
        current: RoundInProgress,
        *,
        status: str,
        clustering_degraded: bool,
        aggregation_info: Mapping[str, float],
    ) -> RoundRecord:
        """The record of a round attempt that ends now, with its summary and clients.

        Parameters
        ----------
        current
            The round as it accumulated.
        status
            ``completed``, or why the attempt failed.
        clustering_degraded
            Whether the clusterer could not be reached (the last assignment was kept).
        aggregation_info
            Figures of the aggregation (empty when the round was not aggregated).
        """
        accs = [m["accuracy"] for m in current.eval_metrics.values() if "accuracy" in m]
        summary = fairness_summary(accs)
        summary["aggregation_seconds"] = current.aggregation_seconds
        summary.update(current.phase_seconds)
        summary["participants"] = float(len(current.participants))
        summary["updates_accepted"] = float(len(current.updates))
        summary["round_seconds"] = self._clock() - current.started_unix
        if self._budget is not None:
            summary.update(privacy_summary(self._budget))
        if clustering_degraded:
            summary["clustering_degraded"] = 1.0
        summary.update(aggregation_info)
        for cluster in sorted(set(current.participants.values())):
            members = [
                current.eval_metrics[c]["accuracy"]
                for c, k in current.participants.items()
                if k == cluster and "accuracy" in current.eval_metrics.get(c, {})
            ]
            if members:
                summary[f"{CLUSTER_SUMMARY_PREFIX}{cluster}_accuracy_mean"] = float(
                    np.mean(members)
                )
        clients = []
        for cid, cluster in sorted(current.participants.items()):
            up, down = self._traffic.get(current.round, cid)
            update = current.updates.get(cid)
            clients.append(
                ClientRoundRecord(
                    client_id=cid,
                    cluster_id=cluster,
                    num_examples=update.num_examples if update else 0,
                    update_accepted=update is not None,
                    bytes_up=up,
                    bytes_down=down,
                    train_metrics=current.train_metrics.get(cid, {}),
                    eval_metrics=current.eval_metrics.get(cid, {}),
                )
            )
        return RoundRecord(
            round=current.round,
            status=status,
            started_unix=current.started_unix,
            finished_unix=self._clock(),
            num_clusters=len(set(current.participants.values())),
            clients=tuple(clients),
            summary=summary,
        )

    def store(
        self,
        record: RoundRecord,
        *,
        snapshot: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Store a finished round attempt durably, then count it in the metrics.

        ``snapshot`` (file name -> SHA-256 of the round's model files) and ``settings``
        commit with it.
        """
        self._state.record_round(record, snapshot=snapshot, settings=settings)
        self._metrics.observe_round(record)

    def status(
        self, query: StatusQuery, *, assignment: Mapping[str, int], stop_reason: str
    ) -> FederationStatus:
        """One page of the status, as much as the caller's view shows.

        Parameters
        ----------
        query
            The caller's view and the page it asks for.
        assignment
            The cluster of each assigned client (-1 is reported for the others).
        stop_reason
            Why the federation stopped early ("" when it did not).
        """
        sessions = list(self._sessions)
        if query.view is StatusView.SILO:
            page = [s for s in sessions if s.client_id == query.caller]
            more_clients = False
        else:
            after = [s for s in sessions if s.client_id > query.clients_after]
            page = after[: _page(query.max_clients, self._page_clients)]
            more_clients = len(after) > len(page)
        records = self._state.rounds()
        limit = _page(query.max_round_records, self._page_rounds)
        if query.first_round_record is None:
            first = max(0, len(records) - limit)
        else:
            first = min(query.first_round_record, len(records))
        window = records[first : first + limit]
        ids = frozenset(s.client_id for s in page)
        setup = self._traffic.round_totals(0)
        budget = self._budget
        return FederationStatus(
            current_round=self._progress.current_round,
            total_rounds=self._total_rounds,
            completed_rounds=self._progress.completed,
            phase=self._progress.phase,
            clients=tuple(_client_status(s, assignment) for s in page),
            rounds=tuple(_round_view(r, ids, query.view) for r in window),
            setup_bytes_up={c: v[0] for c, v in setup.items() if c in ids},
            setup_bytes_down={c: v[1] for c, v in setup.items() if c in ids},
            model_fingerprint=self._sessions.fingerprint or "",
            strategy=self._strategy,
            epsilon=budget.epsilon if budget else 0.0,
            delta=budget.delta if budget else 0.0,
            epsilon_by_level=budget.epsilon_by_level if budget else {},
            stop_reason=stop_reason,
            view=query.view,
            clients_total=len(sessions),
            clients_connected=self._sessions.connected_count(),
            next_clients_after=page[-1].client_id if more_clients else "",
            round_records_total=len(records),
            first_round_record=first,
            truncated=more_clients or first > 0 or first + len(window) < len(records),
        )

    def gauges(self) -> FederationGauges:
        """The live state the metrics endpoint reads at every scrape (cheap: no I/O)."""
        budget = self._budget
        return FederationGauges(
            current_round=self._progress.current_round,
            completed_rounds=self._progress.completed,
            total_rounds=self._total_rounds,
            phase=self._progress.phase,
            clients_joined=len(self._sessions),
            clients_connected=self._sessions.connected_count(),
            epsilon=budget.epsilon if budget is not None else 0.0,
            epsilon_budget=budget.epsilon_budget if budget is not None else 0.0,
            delta=budget.delta if budget is not None else 0.0,
            epsilon_by_level=budget.epsilon_by_level if budget is not None else {},
            noise_multiplier_by_level=(
                {k: m.noise_multiplier for k, m in budget.mechanisms.items()}
                if budget is not None
                else {}
            ),
        )


def privacy_summary(budget: PrivacyBudget) -> dict[str, float]:
    """The privacy figures of a round summary, after the round was accounted.

    ``epsilon`` and ``dp_epsilon``: the composed per-client ε (all levels; the budget halt's
    figure); ``dp_delta``; ``dp_noise_multiplier``: z_eq; per DP level ``dp_epsilon_<level>``
    (that level alone), ``dp_noise_multiplier_<level>`` and ``dp_clip_norm_<level>``.
    """
    eps = budget.epsilon
    out = {
        "epsilon": eps,
        "dp_epsilon": eps,
        "dp_delta": budget.delta,
        "dp_noise_multiplier": budget.noise_multiplier,
        "dp_sample_rate": budget.sample_rate,
    }
    for level, level_eps in budget.epsilon_by_level.items():
        mech = budget.mechanisms[level]
        out[f"dp_epsilon_{level}"] = level_eps
        out[f"dp_noise_multiplier_{level}"] = mech.noise_multiplier
        out[f"dp_clip_norm_{level}"] = mech.clip_norm
    return out


def _per_cluster(key: str) -> bool:
    """Whether a summary key is about one cluster (``cluster_<k>_...``, ``dp_cluster_<k>_...``:
    sizes, skips, clipping), which a silo's view leaves out."""
    if key.startswith(CLUSTER_SUMMARY_PREFIX):
        return True
    rest = key.removeprefix(DP_CLUSTER_SUMMARY_PREFIX)
    return rest != key and rest[:1].isdigit()


def _page(asked: int, configured: int) -> int:
    """A page size: the configured one unless the caller asked for fewer (0: not asked)."""
    return configured if asked <= 0 else min(asked, configured)


def _client_status(session: ClientSession, assignment: Mapping[str, int]) -> ClientStatus:
    return ClientStatus(
        client_id=session.client_id,
        metadata_json=session.metadata_json,
        cluster_id=assignment.get(session.client_id, -1),
        connected=session.connected,
        num_train_examples=session.num_train_examples,
        device=session.device,
    )


def _round_view(record: RoundRecord, clients: frozenset[str], view: StatusView) -> RoundRecord:
    """The record as a page shows it: ``clients``' records only; for a silo no cluster keys."""
    kept: Sequence[ClientRoundRecord] = [c for c in record.clients if c.client_id in clients]
    summary = record.summary
    if view is StatusView.SILO:
        summary = {k: v for k, v in summary.items() if not _per_cluster(k)}
    return dataclasses.replace(record, clients=tuple(kept), summary=summary)
