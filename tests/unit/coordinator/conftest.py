"""Fixtures shared by the coordinator's unit tests: a state store and joined sessions."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path

import pytest

from fedprompt_coordinator.domain import Capabilities, JoinRequest
from fedprompt_coordinator.sessions import ClientSessions
from fedprompt_coordinator.state_store import SqliteStateStore

#: Joins clients (id -> training examples) into new sessions of a ``clustered`` federation.
JoinClients = Callable[[Mapping[str, int]], Awaitable[ClientSessions]]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[SqliteStateStore]:
    """A SQLite state store in the test's folder."""
    store = SqliteStateStore(tmp_path / "state.sqlite3")
    yield store
    store.close()


async def _nothing() -> None:
    pass


@pytest.fixture
def join_clients(state: SqliteStateStore) -> JoinClients:
    """Sessions over ``state`` with the given clients joined (fingerprint ``fp``)."""

    async def join(clients: Mapping[str, int]) -> ClientSessions:
        sessions = ClientSessions(state=state, strategy="clustered", notify=_nothing)
        capabilities = Capabilities("cpu", "tiny", "fp", (), "clustered")
        for cid, n in clients.items():
            await sessions.join(JoinRequest(cid, json.dumps({"site": cid}), capabilities, n))
        return sessions

    return join
