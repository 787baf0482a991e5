"""Client sessions: who joined (checked and stored durably) and the task stream of each.

:class:`ClientSessions` owns the join: every field is checked by the shared validator
(:mod:`fedprompt.client_input`: client id, metadata, capability strings, example count),
then against the federation (model fingerprint, strategy). It owns the clients'
registration in the state store, the federation's model fingerprint (fixed by the first
join), one task queue per connected client and whether a client was asked for the initial
model (only those may upload one). It knows nothing of rounds: the federation publishes
tasks through it and reads the connected clients from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from fedprompt.client_input import (
    DEFAULT_MAX_EXAMPLES,
    canonical_metadata_json,
    check_client_id,
    check_count,
    check_names,
    check_text,
    parse_metadata,
)
from fedprompt.errors import (
    FedPromptError,
    InvalidArgumentError,
    ModelMismatchError,
    UnknownClientError,
)
from fedprompt_coordinator.domain import JoinRequest, Task, TaskKind
from fedprompt_coordinator.state_store import StateStore

logger = logging.getLogger(__name__)

_SETTING_FINGERPRINT = "model_fingerprint"


@dataclass
class ClientSession:
    """A joined client and its task stream, if one is open."""

    client_id: str
    metadata_json: str
    num_train_examples: int
    device: str
    queue: asyncio.Queue[Task | None] | None = None
    #: Whether the client's last Join answer asked it for the initial model (in memory only:
    #: after a restart a client is asked again when it re-joins).
    initial_model_asked: bool = False

    @property
    def connected(self) -> bool:
        """Whether the client has an open task stream."""
        return self.queue is not None


class ClientSessions:
    """The joined clients, restored from the state store, and their task streams.

    Parameters
    ----------
    state
        Durable federation state: clients are registered there, and the fingerprint too.
    strategy
        The federation's strategy name; a client of another strategy is refused.
    max_examples
        Largest number of training examples a client may declare.
    notify
        Called (and awaited) after every change a waiting round may care about: a join, a
        task stream opened or closed.
    """

    def __init__(
        self,
        *,
        state: StateStore,
        strategy: str,
        notify: Callable[[], Awaitable[None]],
        max_examples: int = DEFAULT_MAX_EXAMPLES,
    ) -> None:
        self._state = state
        self._strategy = strategy
        self._notify = notify
        self._max_examples = max_examples
        self._sessions: dict[str, ClientSession] = {}
        for cid, (meta, n, device) in state.clients().items():
            self._sessions[cid] = ClientSession(cid, _stored_metadata(cid, meta), n, device)
        self._fingerprint = state.get_setting(_SETTING_FINGERPRINT)

    @property
    def fingerprint(self) -> str | None:
        """The federation's model fingerprint (None until the first client joined)."""
        return self._fingerprint

    async def join(self, request: JoinRequest) -> ClientSession:
        """Check a join, then register (or re-register) the client durably.

        Raises
        ------
        InvalidArgumentError
            For any field the shared validator refuses (nothing is stored).
        ModelMismatchError
            For a client whose model fingerprint or strategy is not the federation's.
        """
        check_client_id(request.client_id)
        meta_json = canonical_metadata_json(parse_metadata(request.metadata_json))
        caps = request.capabilities
        fingerprint = check_text(caps.model_fingerprint, field="capabilities.model_fingerprint")
        if not fingerprint:
            raise InvalidArgumentError("capabilities.model_fingerprint is required")
        device = check_text(caps.device, field="capabilities.device")
        check_text(caps.model_name, field="capabilities.model_name")
        check_text(caps.strategy, field="capabilities.strategy")
        check_names(caps.trainable_tensors, field="capabilities.trainable_tensors")
        examples = check_count(
            request.num_train_examples, field="num_train_examples", maximum=self._max_examples
        )
        if self._fingerprint is not None and fingerprint != self._fingerprint:
            raise ModelMismatchError(
                f"client model fingerprint {fingerprint!r} differs from the federation's "
                f"{self._fingerprint!r} (same model folder, prompt lengths and labels are required)"
            )
        if caps.strategy != self._strategy:
            raise ModelMismatchError(
                f"client strategy {caps.strategy!r} differs from the federation's {self._strategy!r}"
            )
        session = self._sessions.get(request.client_id)
        if session is None:
            session = ClientSession(request.client_id, meta_json, examples, device)
            self._sessions[request.client_id] = session
        else:
            session.metadata_json = meta_json
            session.num_train_examples = examples
            session.device = device
        self._state.upsert_client(
            client_id=request.client_id,
            metadata_json=meta_json,
            num_train_examples=examples,
            device=device,
        )
        if self._fingerprint is None:
            self._fingerprint = fingerprint
            self._state.set_setting(_SETTING_FINGERPRINT, fingerprint)
        logger.info("client %s joined (%d examples)", request.client_id, examples)
        await self._notify()
        return session

    def record_initial_model_ask(self, client_id: str, *, asked: bool) -> None:
        """Remember whether the client's Join answer asked it for the initial model."""
        self.require(client_id).initial_model_asked = asked

    def take_initial_model_ask(self, client_id: str) -> bool:
        """Whether the client was asked for the initial model; the ask is used up."""
        session = self.require(client_id)
        asked, session.initial_model_asked = session.initial_model_asked, False
        return asked

    def require(self, client_id: str) -> ClientSession:
        """The session of a joined client (``NOT_FOUND`` for anyone else)."""
        session = self._sessions.get(client_id)
        if session is None:
            raise UnknownClientError(f"unknown client {client_id!r}: call Join first")
        return session

    async def task_stream(
        self, client_id: str, pending: Callable[[], Iterable[Task]]
    ) -> AsyncIterator[Task]:
        """Yield the client's tasks as they are published, until a FINISHED task.

        A client has at most one open task stream: a newer stream of the same client ends
        the older one (which then ends without FINISHED, as after a disconnect).
        ``pending()`` gives the tasks the client missed; they are queued first, once the
        stream is open. When the call is cancelled (the peer closed it, or its connection
        failed the server's keepalive) the client counts as disconnected at once.
        """
        session = self.require(client_id)
        if session.queue is not None:
            session.queue.put_nowait(None)  # a newer stream replaces the old one
        queue: asyncio.Queue[Task | None] = asyncio.Queue()
        session.queue = queue
        for missed in pending():
            queue.put_nowait(missed)
        await self._notify()
        try:
            while True:
                task = await queue.get()
                if task is None:
                    return
                yield task
                if task.kind is TaskKind.FINISHED:
                    return
        finally:
            if session.queue is queue:
                session.queue = None
                await self._notify()

    def publish(self, client_id: str, task: Task) -> None:
        """Queue a task for a client (dropped when it has no open stream)."""
        session = self._sessions[client_id]
        if session.queue is not None:
            session.queue.put_nowait(task)

    def publish_to_all(self, task: Task) -> None:
        """Queue a task for every connected client."""
        for session in self._sessions.values():
            if session.queue is not None:
                session.queue.put_nowait(task)

    def connected_count(self) -> int:
        """Clients with an open task stream."""
        return sum(s.connected for s in self._sessions.values())

    def connected_ids(self) -> list[str]:
        """The connected clients' ids, sorted."""
        return sorted(s.client_id for s in self._sessions.values() if s.connected)

    def ids(self) -> frozenset[str]:
        """Every joined client's id."""
        return frozenset(self._sessions)

    def metadata(self) -> dict[str, str]:
        """Every joined client's public metadata (JSON), by client id."""
        return {c: s.metadata_json for c, s in self._sessions.items()}

    def __len__(self) -> int:
        """Clients that have joined."""
        return len(self._sessions)

    def __iter__(self) -> Iterator[ClientSession]:
        """The sessions, sorted by client id."""
        return iter(sorted(self._sessions.values(), key=lambda s: s.client_id))


def _stored_metadata(client_id: str, stored: str) -> str:
    """Metadata restored from the state store, checked again; ``{}`` if it is not valid.

    An older coordinator stored metadata it did not check (nested objects, NaN): kept, it
    would make every clustering request fail. It is dropped, with a warning, until the
    client joins again.
    """
    try:
        return canonical_metadata_json(parse_metadata(stored))
    except FedPromptError as exc:
        logger.warning(
            "stored metadata of client %s is not valid (%s); it is ignored until the client "
            "joins again",
            client_id,
            exc.message,
        )
        return "{}"
