"""Tests of the coordinator's Prometheus metrics (registry contents, no HTTP)."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from fedprompt_coordinator.domain import ClientRoundRecord, Phase, RoundRecord
from fedprompt_coordinator.metrics import CoordinatorMetrics, FederationGauges


def _client(cid: str, cluster: int, *, accepted: bool, acc: float | None) -> ClientRoundRecord:
    return ClientRoundRecord(
        client_id=cid,
        cluster_id=cluster,
        num_examples=10 if accepted else 0,
        update_accepted=accepted,
        bytes_up=1000 if accepted else 200,
        bytes_down=3000,
        train_metrics={},
        eval_metrics={"accuracy": acc} if acc is not None else {},
    )


def _record(status: str = "completed") -> RoundRecord:
    return RoundRecord(
        round=3,
        status=status,
        started_unix=100.0,
        finished_unix=142.0,
        num_clusters=2,
        clients=(
            _client("a", 0, accepted=True, acc=0.5),
            _client("b", 0, accepted=True, acc=1.0),
            _client("c", 1, accepted=True, acc=0.25),
            _client("d", 1, accepted=False, acc=None),
        ),
        summary={"aggregation_seconds": 0.02},
    )


def test_a_completed_round_sets_duration_participants_accuracy_and_fairness() -> None:
    m = CoordinatorMetrics()
    m.observe_round(_record())
    v = m.registry.get_sample_value
    assert v("fedprompt_rounds_total", {"status": "completed"}) == 1
    assert v("fedprompt_rounds_total", {"status": "failed"}) == 0
    assert v("fedprompt_round_duration_seconds_sum") == 42.0
    assert v("fedprompt_round_duration_seconds_count") == 1
    assert v("fedprompt_aggregation_duration_seconds_sum") == pytest.approx(0.02)
    assert v("fedprompt_round_participants") == 4
    assert v("fedprompt_round_updates_accepted") == 3
    assert v("fedprompt_round_dropped_clients") == 1
    assert v("fedprompt_dropped_clients_total") == 1
    assert v("fedprompt_clusters") == 2
    assert v("fedprompt_cluster_members", {"cluster": "0"}) == 2
    assert v("fedprompt_cluster_members", {"cluster": "1"}) == 2
    # a: 0.5, b: 1.0, c: 0.25 -> mean 0.583, worst 0.25; Jain = (Σx)² / (n Σx²)
    assert v("fedprompt_accuracy", {"stat": "mean"}) == pytest.approx(1.75 / 3)
    assert v("fedprompt_accuracy", {"stat": "worst"}) == 0.25
    assert v("fedprompt_fairness_jain") == pytest.approx(1.75**2 / (3 * 1.3125))
    assert v("fedprompt_cluster_accuracy", {"cluster": "0"}) == pytest.approx(0.75)
    assert v("fedprompt_cluster_fairness_jain", {"cluster": "0"}) == pytest.approx(
        1.5**2 / (2 * 1.25)
    )
    assert v("fedprompt_cluster_accuracy", {"cluster": "1"}) == 0.25  # d reported nothing
    assert v("fedprompt_round_bytes_per_client", {"direction": "up"}) == 3200 / 4
    assert v("fedprompt_round_bytes_per_client", {"direction": "down"}) == 3000


def test_a_failed_round_counts_as_failed_and_leaves_accuracy_alone() -> None:
    m = CoordinatorMetrics()
    m.observe_round(_record())
    m.observe_round(_record(status="failed: 1 of 4 updates by the deadline, quorum is 2"))
    v = m.registry.get_sample_value
    assert v("fedprompt_rounds_total", {"status": "failed"}) == 1
    assert v("fedprompt_rounds_total", {"status": "completed"}) == 1
    assert v("fedprompt_round_duration_seconds_count") == 2
    assert v("fedprompt_aggregation_duration_seconds_count") == 1  # not aggregated
    assert v("fedprompt_dropped_clients_total") == 2
    assert v("fedprompt_accuracy", {"stat": "mean"}) == pytest.approx(1.75 / 3)


def test_bytes_are_counted_by_direction_without_client_labels() -> None:
    m = CoordinatorMetrics()
    m.count_bytes(100, 0)
    m.count_bytes(5, 2000)
    v = m.registry.get_sample_value
    assert v("fedprompt_traffic_bytes_total", {"direction": "up"}) == 105
    assert v("fedprompt_traffic_bytes_total", {"direction": "down"}) == 2000


def test_live_state_is_read_at_every_scrape() -> None:
    m = CoordinatorMetrics()
    state = {"phase": Phase.TRAINING, "round": 2}

    def read() -> FederationGauges:
        return FederationGauges(
            current_round=state["round"],  # type: ignore[arg-type]
            completed_rounds=1,
            total_rounds=5,
            phase=state["phase"],  # type: ignore[arg-type]
            clients_joined=3,
            clients_connected=2,
            epsilon=1.5,
            epsilon_budget=math.inf,
            delta=1e-5,
        )

    m.watch(read)
    v = m.registry.get_sample_value
    assert v("fedprompt_round_current") == 2
    assert v("fedprompt_phase", {"phase": "training"}) == 1
    assert v("fedprompt_phase", {"phase": "aggregation"}) == 0
    assert v("fedprompt_clients_connected") == 2
    assert v("fedprompt_privacy_epsilon") == 1.5
    assert v("fedprompt_privacy_epsilon_budget") == math.inf
    state.update(phase=Phase.DONE, round=5)
    assert v("fedprompt_round_current") == 5
    assert v("fedprompt_phase", {"phase": "done"}) == 1
    assert v("fedprompt_phase", {"phase": "training"}) == 0
    text = generate_latest(m.registry).decode()
    assert "fedprompt_phase{phase=" in text
    assert "process_resident_memory_bytes" in text  # process collector in every registry


def test_clipping_and_weight_shares_of_a_round_become_gauges_per_part_and_level() -> None:
    metrics = CoordinatorMetrics()
    record = _record()
    record.summary.update(
        {
            "clip_global_prompt_bound": 0.5,
            "clip_global_prompt_clipped_fraction": 0.25,
            "clip_head_bound": 0.125,
            "clip_head_clipped_fraction": 0.5,
            "global_max_weight": 0.5,
            "cluster_0_max_weight": 0.5,
            "cluster_1_max_weight": 1.0,
            "dp_clip_norm": 1.0,
            "dp_clipped_fraction": 0.75,
        }
    )
    metrics.observe_round(record)
    value = metrics.registry.get_sample_value
    assert value("fedprompt_clip_bound", {"part": "global_prompt"}) == 0.5
    assert value("fedprompt_clip_clipped_fraction", {"part": "global_prompt"}) == 0.25
    assert value("fedprompt_clip_bound", {"part": "head"}) == 0.125
    assert value("fedprompt_clip_clipped_fraction", {"part": "head"}) == 0.5
    assert value("fedprompt_clip_bound", {"part": "dp_global"}) == 1.0
    assert value("fedprompt_clip_clipped_fraction", {"part": "dp_global"}) == 0.75
    assert value("fedprompt_clip_bound", {"part": "cluster_prompt"}) is None
    assert value("fedprompt_aggregation_max_weight_share", {"level": "global"}) == 0.5
    assert value("fedprompt_aggregation_max_weight_share", {"level": "cluster"}) == 1.0


def test_secure_aggregation_groups_are_counted_by_outcome() -> None:
    from dataclasses import replace

    m = CoordinatorMetrics()
    v = m.registry.get_sample_value
    m.observe_round(_record())  # no secure aggregation: nothing counted
    assert v("fedprompt_secagg_groups_total", {"outcome": "released"}) == 0
    secure = {
        "secagg_groups": 4.0,
        "secagg_released": 2.0,
        "secagg_skipped": 2.0,  # one too small, one poisoned
        "secagg_recovered": 1.0,
        "secagg_cluster_1_skipped": 1.0,
        "secagg_cluster_3_skipped": 1.0,
        "secagg_cluster_3_rejected": 1.0,
    }
    m.observe_round(replace(_record(), summary={**_record().summary, **secure}))
    m.observe_round(
        replace(_record("failed: no group"), summary={"secagg_groups": 1.0, "secagg_skipped": 1.0})
    )
    assert v("fedprompt_secagg_groups_total", {"outcome": "released"}) == 2
    assert v("fedprompt_secagg_groups_total", {"outcome": "rejected"}) == 1
    assert v("fedprompt_secagg_groups_total", {"outcome": "skipped"}) == 2
    assert v("fedprompt_secagg_recovered_members_total") == 1
