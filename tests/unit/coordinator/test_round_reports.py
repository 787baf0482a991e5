"""Round reports on their own: the record and summary of a round, status and gauges."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from fedprompt_coordinator.domain import ClientUpdate, Phase, StatusQuery, StatusView
from fedprompt_coordinator.metrics import CoordinatorMetrics
from fedprompt_coordinator.privacy import PrivacyBudget, RDPAccountant
from fedprompt_coordinator.round_progress import RoundInProgress, RoundProgress
from fedprompt_coordinator.round_reports import RoundReports
from fedprompt_coordinator.state_store import SqliteStateStore
from fedprompt_coordinator.traffic import TrafficMeter

NOW = 1_700_000_100.0


@dataclass
class Reports:
    reports: RoundReports
    progress: RoundProgress
    traffic: TrafficMeter
    metrics: CoordinatorMetrics
    state: SqliteStateStore
    budget: PrivacyBudget


@pytest_asyncio.fixture
async def reports(state: SqliteStateStore, join_clients: Any) -> Reports:
    sessions = await join_clients({"b": 3, "a": 1, "c": 4})
    progress = RoundProgress(phase=Phase.WAITING_FOR_QUORUM, completed=0)
    accounting = [0]
    traffic = TrafficMeter(lambda: accounting[0])
    traffic.add("a", up=100, down=200)  # round 0: setup traffic
    accounting[0] = 1
    traffic.add("a", up=10, down=20)
    metrics = CoordinatorMetrics()
    budget = PrivacyBudget(
        accountant=RDPAccountant(), noise_multiplier=1.0, sample_rate=1.0, delta=1e-5
    )
    return Reports(
        RoundReports(
            total_rounds=3,
            strategy="clustered",
            state=state,
            metrics=metrics,
            sessions=sessions,
            progress=progress,
            traffic=traffic,
            budget=budget,
            clock=lambda: NOW,
        ),
        progress,
        traffic,
        metrics,
        state,
        budget,
    )


def _round() -> RoundInProgress:
    current = RoundInProgress(
        round=1, started_unix=NOW - 40.0, participants={"a": 0, "b": 0, "c": 1}
    )
    for cid, n in (("a", 1), ("b", 3)):
        current.updates[cid] = ClientUpdate(cid, 0, n, {"x": np.zeros(1, np.float32)})
    current.train_metrics["a"] = {"loss": 0.5}
    current.eval_metrics.update({"a": {"accuracy": 0.5}, "b": {"accuracy": 1.0}})
    current.aggregation_seconds = 0.25
    current.phase_seconds["training_seconds"] = 30.0
    return current


@pytest.mark.asyncio
async def test_a_round_record_summarises_accuracy_traffic_and_privacy(reports: Reports) -> None:
    reports.budget.record_round()
    record = reports.reports.round_record(
        _round(),
        status="completed",
        clustering_degraded=True,
        aggregation_info={"contrastive_weight_min": 0.4},
    )
    assert (record.round, record.status, record.num_clusters) == (1, "completed", 2)
    assert (record.started_unix, record.finished_unix) == (NOW - 40.0, NOW)
    assert [
        (c.client_id, c.cluster_id, c.num_examples, c.update_accepted, c.bytes_up, c.bytes_down)
        for c in record.clients
    ] == [("a", 0, 1, True, 10, 20), ("b", 0, 3, True, 0, 0), ("c", 1, 0, False, 0, 0)]
    assert record.clients[0].train_metrics == {"loss": 0.5}
    summary = record.summary
    assert summary["accuracy_mean"] == pytest.approx(0.75)
    assert summary["cluster_0_accuracy_mean"] == pytest.approx(0.75)
    assert "cluster_1_accuracy_mean" not in summary  # c did not evaluate
    assert (summary["participants"], summary["updates_accepted"]) == (3.0, 2.0)
    assert (summary["round_seconds"], summary["aggregation_seconds"]) == (40.0, 0.25)
    assert summary["training_seconds"] == 30.0
    assert summary["epsilon"] == pytest.approx(reports.budget.epsilon)
    assert summary["clustering_degraded"] == 1.0
    assert summary["contrastive_weight_min"] == 0.4


@pytest.mark.asyncio
async def test_a_stored_record_is_durable_and_counted(reports: Reports) -> None:
    record = reports.reports.round_record(
        _round(), status="failed: late", clustering_degraded=False, aggregation_info={}
    )
    assert "clustering_degraded" not in record.summary
    reports.reports.store(record)
    assert [r.status for r in reports.state.rounds()] == ["failed: late"]
    assert reports.metrics.registry.get_sample_value(
        "fedprompt_rounds_total", {"status": "failed"}
    ) == pytest.approx(1.0)
    assert reports.reports.status(StatusQuery(), assignment={}, stop_reason="").rounds == (
        reports.state.rounds()[0],
    )


@pytest.mark.asyncio
async def test_status_and_gauges_read_the_rooms(reports: Reports) -> None:
    reports.progress.current = _round()
    reports.progress.phase = Phase.TRAINING
    status = reports.reports.status(
        StatusQuery(), assignment={"a": 0, "b": 0}, stop_reason="budget spent"
    )
    assert (status.current_round, status.total_rounds, status.completed_rounds) == (1, 3, 0)
    assert (status.phase, status.strategy, status.model_fingerprint) == (
        Phase.TRAINING,
        "clustered",
        "fp",
    )
    assert [(c.client_id, c.cluster_id, c.num_train_examples) for c in status.clients] == [
        ("a", 0, 1),
        ("b", 0, 3),
        ("c", -1, 4),
    ]
    assert (status.setup_bytes_up, status.setup_bytes_down) == ({"a": 100}, {"a": 200})
    assert (status.epsilon, status.delta, status.stop_reason) == (0.0, 1e-5, "budget spent")
    gauges = reports.reports.gauges()
    assert (gauges.current_round, gauges.completed_rounds, gauges.total_rounds) == (1, 0, 3)
    assert (gauges.clients_joined, gauges.clients_connected) == (3, 0)
    assert gauges.phase is Phase.TRAINING and gauges.epsilon_budget == float("inf")


def _stored_rounds(reports: Reports, n: int) -> None:
    for _ in range(n):
        reports.reports.store(
            reports.reports.round_record(
                _round(), status="completed", clustering_degraded=False, aggregation_info={}
            )
        )


@pytest.mark.asyncio
async def test_a_silo_sees_its_own_records_and_federation_aggregates_only(
    reports: Reports,
) -> None:
    _stored_rounds(reports, 2)
    reports.traffic.add("b", up=1, down=2)  # round 1
    silo = reports.reports.status(
        StatusQuery(view=StatusView.SILO, caller="b"), assignment={"a": 0}, stop_reason=""
    )
    assert silo.view is StatusView.SILO
    assert [c.client_id for c in silo.clients] == ["b"]
    assert (silo.clients_total, silo.next_clients_after, silo.truncated) == (3, "", False)
    assert (silo.setup_bytes_up, silo.setup_bytes_down) == ({}, {})  # a's traffic is a's
    for record in silo.rounds:
        assert [c.client_id for c in record.clients] == ["b"]
        assert "accuracy_mean" in record.summary
        assert not any(k.startswith("cluster_") for k in record.summary)
    full = reports.reports.status(StatusQuery(), assignment={}, stop_reason="")
    assert [c.client_id for c in full.rounds[0].clients] == ["a", "b", "c"]
    assert "cluster_0_accuracy_mean" in full.rounds[0].summary
    stranger = reports.reports.status(
        StatusQuery(view=StatusView.SILO, caller="clusterer"), assignment={}, stop_reason=""
    )
    assert stranger.clients == () and all(r.clients == () for r in stranger.rounds)


@pytest.mark.asyncio
async def test_status_pages_clients_by_cursor_and_rounds_by_window(reports: Reports) -> None:
    _stored_rounds(reports, 5)

    def page(**kwargs: Any) -> Any:
        return reports.reports.status(StatusQuery(**kwargs), assignment={}, stop_reason="")

    first = page(max_clients=2, max_round_records=2)
    assert [c.client_id for c in first.clients] == ["a", "b"]
    assert (first.next_clients_after, first.truncated) == ("b", True)
    assert (first.round_records_total, first.first_round_record, len(first.rounds)) == (5, 3, 2)
    assert {c.client_id for r in first.rounds for c in r.clients} == {"a", "b"}
    second = page(clients_after="b", max_clients=2, first_round_record=0, max_round_records=2)
    assert [c.client_id for c in second.clients] == ["c"] and second.next_clients_after == ""
    assert (second.first_round_record, len(second.rounds), second.truncated) == (0, 2, True)
    whole = page(first_round_record=0)
    assert (len(whole.clients), len(whole.rounds), whole.truncated) == (3, 5, False)
    beyond = page(first_round_record=99)
    assert (beyond.first_round_record, beyond.rounds) == (5, ())
    # the configured page is a cap: asking for more gets no more
    capped = RoundReports(
        total_rounds=3,
        strategy="clustered",
        state=reports.state,
        metrics=CoordinatorMetrics(),
        sessions=reports.reports._sessions,
        progress=reports.progress,
        traffic=reports.traffic,
        budget=None,
        clock=lambda: NOW,
        page_clients=1,
        page_rounds=1,
    ).status(StatusQuery(max_clients=50, max_round_records=50), assignment={}, stop_reason="")
    assert (len(capped.clients), len(capped.rounds), capped.first_round_record) == (1, 1, 4)
