"""Tests of the durable federation state (SQLite)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedprompt_coordinator.domain import ClientRoundRecord, RoundRecord
from fedprompt_coordinator.state_store import SqliteStateStore, StateStore, make_state_store


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    path = tmp_path / "state.sqlite3" if request.param == "file" else ":memory:"
    opened = make_state_store(path)
    yield opened
    assert isinstance(opened, SqliteStateStore)
    opened.close()


def _record(round_id: int, status: str, *, clients: int = 2) -> RoundRecord:
    return RoundRecord(
        round=round_id,
        status=status,
        started_unix=1000.0 + round_id,
        finished_unix=1010.5 + round_id,
        num_clusters=2,
        clients=tuple(
            ClientRoundRecord(
                client_id=f"c{i}",
                cluster_id=i % 2,
                num_examples=10 * (i + 1),
                update_accepted=i != 1,
                bytes_up=100 + i,
                bytes_down=200 + i,
                train_metrics={"loss": 0.5 + i},
                eval_metrics={"accuracy": 0.25 * i} if i else {},
            )
            for i in range(clients)
        ),
        summary={"accuracy_mean": 0.125, "participants": float(clients)},
    )


def test_settings(store: StateStore) -> None:
    assert store.get_setting("model_fingerprint") is None
    store.set_setting("model_fingerprint", "fp-1")
    store.set_setting("tensor_spec", "[]")
    store.set_setting("model_fingerprint", "fp-2")
    assert store.get_setting("model_fingerprint") == "fp-2"
    assert store.get_setting("tensor_spec") == "[]"


def test_clients_upsert(store: StateStore) -> None:
    assert store.clients() == {}
    store.upsert_client(client_id="b", metadata_json='{"x": 1}', num_train_examples=5, device="cpu")
    store.upsert_client(client_id="a", metadata_json="{}", num_train_examples=3, device="cuda:0")
    store.upsert_client(client_id="b", metadata_json='{"x": 2}', num_train_examples=7, device="mps")
    assert store.clients() == {"a": ("{}", 3, "cuda:0"), "b": ('{"x": 2}', 7, "mps")}
    assert list(store.clients()) == ["a", "b"]


def test_assignment_is_replaced_not_merged(store: StateStore) -> None:
    assert store.assignment() == {}
    store.set_assignment({"a": 0, "b": 1, "c": 1})
    store.set_assignment({"a": 2, "d": -1})
    assert store.assignment() == {"a": 2, "d": -1}
    store.set_assignment({})
    assert store.assignment() == {}


def test_rounds_keep_every_attempt_in_order(store: StateStore) -> None:
    assert store.rounds() == []
    assert store.last_completed_round() == 0
    failed = _record(1, "failed: 1 of 3 updates by the deadline, quorum is 2", clients=3)
    store.record_round(failed)
    assert store.last_completed_round() == 0
    store.record_round(_record(1, "completed"))
    store.record_round(_record(2, "completed", clients=1))
    rounds = store.rounds()
    assert [(r.round, r.status[:6]) for r in rounds] == [
        (1, "failed"),
        (1, "comple"),
        (2, "comple"),
    ]
    assert rounds[0] == failed  # client records stay with their attempt
    assert rounds[1] == _record(1, "completed")
    assert len(rounds[2].clients) == 1
    assert store.last_completed_round() == 2


def test_last_completed_round_ignores_later_failures(store: StateStore) -> None:
    store.record_round(_record(1, "completed"))
    store.record_round(_record(2, "failed: timeout"))
    assert store.last_completed_round() == 1


def test_client_record_fields_round_trip(store: StateStore) -> None:
    store.record_round(_record(3, "completed", clients=2))
    (stored,) = store.rounds()
    assert stored.started_unix == 1003.0
    assert stored.finished_unix == 1013.5
    assert stored.summary == {"accuracy_mean": 0.125, "participants": 2.0}
    second = stored.clients[1]
    assert second == ClientRoundRecord(
        client_id="c1",
        cluster_id=1,
        num_examples=20,
        update_accepted=False,
        bytes_up=101,
        bytes_down=201,
        train_metrics={"loss": 1.5},
        eval_metrics={"accuracy": 0.25},
    )


def test_failed_record_leaves_no_partial_rows(store: StateStore) -> None:
    record = _record(1, "completed")
    duplicate_client = RoundRecord(
        round=2,
        status="completed",
        started_unix=0.0,
        finished_unix=0.0,
        num_clusters=1,
        clients=(record.clients[0], record.clients[0]),  # primary key clash inside one round
        summary={},
    )
    with pytest.raises(Exception, match="UNIQUE"):
        store.record_round(duplicate_client)
    assert store.rounds() == []
    store.record_round(record)  # the store is usable afterwards
    assert [r.round for r in store.rounds()] == [1]


def test_reopening_the_file_reads_everything_back(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    first = SqliteStateStore(path)
    first.set_setting("model_fingerprint", "fp")
    first.upsert_client(
        client_id="a", metadata_json='{"k": "v"}', num_train_examples=4, device="cpu"
    )
    first.set_assignment({"a": 3})
    first.record_round(_record(1, "failed: quorum"))
    first.record_round(_record(1, "completed"))
    expected_rounds = first.rounds()
    first.close()

    second = SqliteStateStore(path)
    try:
        assert second.get_setting("model_fingerprint") == "fp"
        assert second.clients() == {"a": ('{"k": "v"}', 4, "cpu")}
        assert second.assignment() == {"a": 3}
        assert second.rounds() == expected_rounds
        assert second.last_completed_round() == 1
        second.record_round(_record(1, "completed"))  # attempts keep counting after reopening
        assert [r.round for r in second.rounds()] == [1, 1, 1]
    finally:
        second.close()


def test_committed_writes_are_visible_to_a_second_connection(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    writer = SqliteStateStore(path)
    reader = SqliteStateStore(path)
    try:
        writer.record_round(_record(5, "completed"))
        writer.set_setting("k", "v")
        assert reader.last_completed_round() == 5
        assert reader.get_setting("k") == "v"
    finally:
        writer.close()
        reader.close()


def test_snapshot_digests_commit_with_their_round(store: StateStore) -> None:
    assert store.is_empty()
    store.record_round(_record(1, "completed"), snapshot={"global.safetensors": "ab" * 32})
    assert store.snapshots() == {1: {"global.safetensors": "ab" * 32}}
    assert not store.is_empty()
    # a round record that cannot be stored takes its digests with it (one transaction)
    record = _record(2, "completed")
    hostile = dataclasses.replace(record.clients[0], num_examples=2**63)  # over SQLite's int64
    with pytest.raises(OverflowError):
        store.record_round(
            dataclasses.replace(record, clients=(hostile,)),
            snapshot={"global.safetensors": "cd" * 32},
        )
    assert sorted(store.snapshots()) == [1]
    assert store.last_completed_round() == 1


def test_a_snapshot_is_recorded_with_settings_atomically_and_replaced_whole(
    store: StateStore,
) -> None:
    store.record_snapshot(0, {"global.safetensors": "01", "template.safetensors": "02"})
    store.record_snapshot(0, {"global.safetensors": "03"}, settings={"tensor_spec": "[1]"})
    assert store.snapshots() == {0: {"global.safetensors": "03"}}
    assert store.get_setting("tensor_spec") == "[1]"
