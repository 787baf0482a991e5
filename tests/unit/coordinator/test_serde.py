"""Coordinator serde: GetStatus answers keep under their byte bound, cutting what is farthest;
TRAIN tasks carry their training settings exactly; EVALUATE tasks their personalization pass."""

from __future__ import annotations

import pytest

from fedprompt.v1 import coordinator_pb2
from fedprompt_coordinator import serde
from fedprompt_coordinator.domain import (
    ClientRoundRecord,
    ClientStatus,
    EvaluateSettings,
    FederationStatus,
    Phase,
    RoundRecord,
    StatusQuery,
    StatusView,
    Task,
    TaskKind,
    TrainingSettings,
)

CLIENTS = ("a", "b", "c")


def _status(*, first: int = 0) -> FederationStatus:
    metrics = {f"metric_{i}": float(i) for i in range(20)}
    rounds = tuple(
        RoundRecord(
            round=first + i + 1,
            status="completed",
            started_unix=0.0,
            finished_unix=1.0,
            num_clusters=1,
            clients=tuple(
                ClientRoundRecord(c, 0, 5, True, 1, 1, dict(metrics), dict(metrics))
                for c in CLIENTS
            ),
            summary={"accuracy_mean": 0.5},
        )
        for i in range(4)
    )
    return FederationStatus(
        current_round=4,
        total_rounds=9,
        completed_rounds=4,
        phase=Phase.TRAINING,
        clients=tuple(ClientStatus(c, '{"x": 1}', 0, True, 5, "cpu") for c in CLIENTS),
        rounds=rounds,
        setup_bytes_up=dict.fromkeys(CLIENTS, 7),
        setup_bytes_down=dict.fromkeys(CLIENTS, 8),
        model_fingerprint="fp",
        view=StatusView.SILO,
        clients_total=3,
        clients_connected=2,
        round_records_total=first + 4,
        first_round_record=first,
    )


def test_a_page_that_fits_is_sent_whole_with_its_paging_fields() -> None:
    msg = serde.status_to_proto(_status(first=2))
    assert msg.view == coordinator_pb2.STATUS_VIEW_SILO and not msg.truncated
    assert (msg.clients_total, msg.clients_connected, msg.round_records_total) == (3, 2, 6)
    assert (msg.first_round_record, len(msg.rounds), len(msg.clients)) == (2, 4, 3)


@pytest.mark.parametrize("latest", [True, False])
def test_an_oversized_page_loses_the_rounds_farthest_from_what_was_asked(latest: bool) -> None:
    whole = serde.status_to_proto(_status(first=2))
    whole.truncated = True  # what a cut answer says costs bytes as well
    one_round = coordinator_pb2.GetStatusResponse(rounds=[whole.rounds[0]]).ByteSize()
    msg = serde.status_to_proto(
        _status(first=2), latest_rounds=latest, max_bytes=whole.ByteSize() - one_round
    )
    assert msg.ByteSize() == whole.ByteSize() - one_round and msg.truncated
    if latest:  # the oldest went; the window now starts one later
        assert [r.round for r in msg.rounds] == [4, 5, 6] and msg.first_round_record == 3
    else:  # asked from record 2 on: the newest went, the next page starts after these
        assert [r.round for r in msg.rounds] == [3, 4, 5] and msg.first_round_record == 2
    assert len(msg.clients) == 3
    tighter = serde.status_to_proto(
        _status(first=2), latest_rounds=latest, max_bytes=whole.ByteSize() - one_round - 1
    )
    assert len(tighter.rounds) == 2 and len(tighter.clients) == 3  # a round more, no client


def test_when_no_round_fits_clients_go_from_the_end_and_the_cursor_follows() -> None:
    bare = serde.status_to_proto(_status())
    del bare.rounds[:]
    limit = bare.ByteSize() - 20
    msg = serde.status_to_proto(_status(), max_bytes=limit)
    assert msg.ByteSize() <= limit and msg.truncated and len(msg.rounds) == 0
    assert [c.client_id for c in msg.clients] == ["a", "b"]
    assert msg.next_clients_after == "b" and "c" not in msg.setup_bytes_up


def test_a_status_query_keeps_what_was_asked_and_the_callers_view() -> None:
    request = coordinator_pb2.GetStatusRequest(clients_after="b", max_clients=5)
    query = serde.status_query_from_proto(request, view=StatusView.SILO, caller="b")
    assert query == StatusQuery(StatusView.SILO, "b", "b", 5, None, 0)
    request.first_round_record = 0  # present, though 0
    assert (
        serde.status_query_from_proto(request, view=StatusView.FULL, caller="").first_round_record
        == 0
    )


@pytest.mark.parametrize("mu", [0.0, 0.01, 1 / 3, 100.0])
def test_a_train_tasks_settings_survive_the_wire_with_proximal_mu_exact(mu: float) -> None:
    training = TrainingSettings(
        local_steps=3,
        batch_size=4,
        learning_rate=0.03,
        head_learning_rate=0.003,
        contrastive_weight=0.1,
        contrastive_temperature=0.5,
        proximal_mu=mu,
    )
    task = Task(kind=TaskKind.TRAIN, round=2, cluster_id=1, training=training)
    wire = serde.task_to_proto(task).SerializeToString()
    got = coordinator_pb2.Task.FromString(wire).training
    assert got.proximal_mu == mu  # a double travels exactly
    assert (got.local_steps, got.batch_size, got.contrastive_weight) == (3, 4, 0.1)
    assert (got.learning_rate, got.head_learning_rate, got.contrastive_temperature) == (
        0.03,
        0.003,
        0.5,
    )


def test_an_evaluate_task_without_a_pass_is_the_old_message_byte_for_byte() -> None:
    settings = EvaluateSettings()
    task = Task(
        kind=TaskKind.EVALUATE,
        round=3,
        cluster_id=1,
        deadline_unix_ms=5,
        training=settings.training,
        personalize_steps=settings.personalize_steps,
    )
    old = coordinator_pb2.Task(
        kind=coordinator_pb2.TASK_KIND_EVALUATE, round=3, cluster_id=1, deadline_unix_ms=5
    )
    msg = serde.task_to_proto(task)
    assert msg.SerializeToString(deterministic=True) == old.SerializeToString(deterministic=True)
    assert not msg.HasField("training") and msg.personalize_steps == 0


@pytest.mark.parametrize("steps", [1, 25, 10_000])
def test_an_evaluate_task_carries_its_pass_and_training_settings(steps: int) -> None:
    training = TrainingSettings(
        local_steps=3, batch_size=4, learning_rate=0.03, head_learning_rate=0.003
    )
    task = Task(kind=TaskKind.EVALUATE, round=2, training=training, personalize_steps=steps)
    got = coordinator_pb2.Task.FromString(serde.task_to_proto(task).SerializeToString())
    assert got.personalize_steps == steps and got.kind == coordinator_pb2.TASK_KIND_EVALUATE
    assert (got.training.batch_size, got.training.learning_rate) == (4, 0.03)
    assert got.training.head_learning_rate == 0.003
