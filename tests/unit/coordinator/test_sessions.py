"""Client sessions: join checks, durable registration, task streams, connected counts."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from fedprompt.errors import InvalidArgumentError, ModelMismatchError, UnknownClientError
from fedprompt_coordinator.domain import Capabilities, JoinRequest, Task, TaskKind
from fedprompt_coordinator.sessions import ClientSessions
from fedprompt_coordinator.state_store import SqliteStateStore

TIMEOUT_S = 10.0


def _request(
    client_id: str,
    *,
    fingerprint: str = "fp",
    strategy: str = "fpl",
    n: int = 5,
    device: str = "cpu",
) -> JoinRequest:
    return JoinRequest(
        client_id=client_id,
        metadata_json=json.dumps({"site": client_id, "beds": 10}),
        capabilities=Capabilities(device, "tiny", fingerprint, ("prompt.global",), strategy),
        num_train_examples=n,
    )


class Notifications:
    """Counts the notify calls of a ClientSessions."""

    def __init__(self) -> None:
        self.count = 0

    async def __call__(self) -> None:
        self.count += 1


def _sessions(state: SqliteStateStore, notify: Notifications | None = None) -> ClientSessions:
    return ClientSessions(state=state, strategy="fpl", notify=notify or Notifications())


@pytest.mark.asyncio
async def test_a_join_is_stored_and_fixes_the_fingerprint(state: SqliteStateStore) -> None:
    notify = Notifications()
    sessions = _sessions(state, notify)
    assert sessions.fingerprint is None and len(sessions) == 0
    session = await sessions.join(_request("a"))
    assert (session.client_id, session.num_train_examples, session.connected) == ("a", 5, False)
    assert session.metadata_json == '{"beds": 10, "site": "a"}'  # normalised, sorted keys
    assert sessions.fingerprint == "fp" and state.get_setting("model_fingerprint") == "fp"
    assert state.clients() == {"a": ('{"beds": 10, "site": "a"}', 5, "cpu")}
    assert notify.count == 1
    with pytest.raises(ModelMismatchError, match="fingerprint") as info:
        await sessions.join(_request("b", fingerprint="other"))
    assert info.value.status_code is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(ModelMismatchError, match="strategy"):
        await sessions.join(_request("b", strategy="fedavg"))
    assert len(sessions) == 1 and notify.count == 1  # refused joins change nothing


@pytest.mark.asyncio
async def test_a_rejoin_updates_the_session_and_a_restart_restores_it(
    state: SqliteStateStore,
) -> None:
    sessions = _sessions(state)
    first = await sessions.join(_request("a"))
    again = await sessions.join(_request("a", n=7, device="cuda"))
    assert again is first and (first.num_train_examples, first.device) == (7, "cuda")
    restored = _sessions(state)
    assert restored.fingerprint == "fp"
    assert [(s.client_id, s.num_train_examples, s.device) for s in restored] == [("a", 7, "cuda")]
    assert restored.metadata() == {"a": '{"beds": 10, "site": "a"}'}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_", "fragment"),
    [
        (_request("bad id"), "client_id"),
        (_request("a", fingerprint=""), "model_fingerprint"),
        (_request("a", n=0), "num_train_examples"),
        (JoinRequest("a", "[]", _request("a").capabilities, 1), "metadata_json"),
    ],
)
async def test_bad_joins_are_invalid_arguments(
    state: SqliteStateStore, request_: JoinRequest, fragment: str
) -> None:
    sessions = _sessions(state)
    with pytest.raises(InvalidArgumentError, match=fragment):
        await sessions.join(request_)
    assert len(sessions) == 0 and state.clients() == {}


@pytest.mark.asyncio
async def test_unknown_clients_are_not_found(state: SqliteStateStore) -> None:
    sessions = _sessions(state)
    with pytest.raises(UnknownClientError) as info:
        sessions.require("ghost")
    assert info.value.status_code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(UnknownClientError):
        await anext(aiter(sessions.task_stream("ghost", list)))


@pytest.mark.asyncio
async def test_task_streams_deliver_missed_tasks_first_and_count_as_connected(
    state: SqliteStateStore,
) -> None:
    notify = Notifications()
    sessions = _sessions(state, notify)
    for cid in "ba":
        await sessions.join(_request(cid))
    sessions.publish("a", Task(kind=TaskKind.TRAIN, round=1))  # no stream yet: dropped
    missed = Task(kind=TaskKind.TRAIN, round=2)
    stream = sessions.task_stream("a", lambda: [missed])
    first = await asyncio.wait_for(anext(stream), TIMEOUT_S)
    assert first is missed
    assert sessions.connected_count() == 1 and sessions.connected_ids() == ["a"]
    assert sessions.ids() == frozenset({"a", "b"})
    evaluate = Task(kind=TaskKind.EVALUATE, round=2)
    sessions.publish("a", evaluate)
    assert await asyncio.wait_for(anext(stream), TIMEOUT_S) is evaluate
    sessions.publish_to_all(Task(kind=TaskKind.FINISHED, round=2))
    assert (await asyncio.wait_for(anext(stream), TIMEOUT_S)).kind is TaskKind.FINISHED
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(stream), TIMEOUT_S)
    assert sessions.connected_count() == 0
    assert notify.count == 2 + 2  # two joins, the stream opened and closed


@pytest.mark.asyncio
async def test_a_newer_stream_ends_the_older_one(state: SqliteStateStore) -> None:
    sessions = _sessions(state)
    await sessions.join(_request("a"))
    old = sessions.task_stream("a", list)
    pending_old = asyncio.ensure_future(anext(old))
    await asyncio.sleep(0)
    new = sessions.task_stream("a", list)
    pending_new = asyncio.ensure_future(anext(new))
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending_old, TIMEOUT_S)
    assert sessions.connected_count() == 1  # the new stream is the open one
    task = Task(kind=TaskKind.TRAIN, round=1)
    sessions.publish("a", task)
    assert await asyncio.wait_for(pending_new, TIMEOUT_S) is task
    await new.aclose()
    assert sessions.connected_count() == 0
