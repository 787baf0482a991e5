"""Tests of the federation's round state machine, driven through its methods (no gRPC)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedprompt.chunking import describe_payload, split_payload
from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.errors import (
    ConflictError,
    InvalidArgumentError,
    ModelMismatchError,
    NotParticipantError,
    UnknownClientError,
    UpstreamUnavailableError,
    WrongRoundError,
)
from fedprompt_coordinator.cluster_refinement import Evidence
from fedprompt_coordinator.clustering_backend import ClusteringBackend
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.domain import (
    Capabilities,
    FederationModel,
    JoinRequest,
    MetricsPhase,
    ModelStage,
    Phase,
    RoundFailure,
    RoundRecord,
    ServerMoments,
    Task,
    TaskKind,
    UpdateKind,
)
from fedprompt_coordinator.encoded_model import assemble
from fedprompt_coordinator.federation import Federation, RoundFailedError
from fedprompt_coordinator.model_store import ModelStore, PreparedSnapshot
from fedprompt_coordinator.privacy import RDPAccountant as RDPAccountantForTest
from fedprompt_coordinator.state_store import SqliteStateStore

FINGERPRINT = "fp-test"
INITIAL = {"prompt.global": [1.0, 2.0], "prompt.cluster": [10.0]}
# Three clients in two clusters; n = 1, 3, 4.
CLUSTERS = {"a": 0, "b": 0, "c": 1}
EXAMPLES = {"a": 1, "b": 3, "c": 4}
#: Plain n-weighted FedAvg (no per-client clipping, no share cap): hand-computable rounds.
PLAIN_FEDAVG = {"clipping": {"mode": "off"}, "max_weight_share": 1.0, "max_weight_multiple": None}
DELTAS = {
    "a": {"prompt.global": [4.0, 8.0], "prompt.cluster": [2.0]},
    "b": {"prompt.global": [0.0, 4.0], "prompt.cluster": [6.0]},
    "c": {"prompt.global": [2.0, -2.0], "prompt.cluster": [1.0]},
}
ACCURACY = {"a": 0.5, "b": 1.0, "c": 0.25}
TIMEOUT_S = 10.0


def _f32(values: dict[str, list[float]]) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.float32) for k, v in values.items()}


class Clock:
    """A wall clock the test moves by hand, so deadlines pass without waiting."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FixedClusters(ClusteringBackend):
    """Assigns clients from a fixed table (cluster 0 for anyone else)."""

    def __init__(self, table: dict[str, int]) -> None:
        self.table = table
        self.calls = 0

    async def assign(
        self,
        members: dict[str, str],
        previous: dict[str, int],
        evidence: Mapping[str, Evidence] | None = None,
    ) -> dict[str, int]:
        self.calls += 1
        return {c: self.table.get(c, 0) for c in members}


def _join_request(
    client_id: str, *, fingerprint: str = FINGERPRINT, n: int = 1, strategy: str = "clustered"
) -> JoinRequest:
    return JoinRequest(
        client_id=client_id,
        metadata_json=json.dumps({"site": client_id}),
        capabilities=Capabilities(
            "cpu", "tiny", fingerprint, ("prompt.global", "prompt.cluster"), strategy=strategy
        ),
        num_train_examples=n,
    )


async def _upload(
    fed: Federation,
    client_id: str,
    round_id: int,
    kind: UpdateKind,
    tensors: dict[str, np.ndarray],
    n: int,
) -> bool:
    payload = encode_tensors(tensors)
    session = fed.uploads.begin(
        client_id=client_id,
        round_id=round_id,
        kind=kind,
        num_examples=n,
        info=describe_payload(payload, chunk_size=16),
    )
    for chunk in split_payload(payload, chunk_size=16):
        await session.add(chunk)
    return await fed.uploads.finish(session)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` until it holds; fail after TIMEOUT_S."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while not predicate():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def settle() -> None:
    """Let every ready task run (to check that something does *not* happen)."""
    for _ in range(50):
        await asyncio.sleep(0)


@dataclass
class FakeClient:
    """A client driven through the Federation's methods, like the real agent loop."""

    fed: Federation
    client_id: str
    #: Given the count of TRAIN tasks received so far (1-based), whether to answer this one.
    answers_train: Callable[[int], bool] = lambda k: True
    upload_initial: bool = True
    tasks: list[Task] = field(default_factory=list)
    fetched: dict[tuple[int, ModelStage], dict[str, np.ndarray]] = field(default_factory=dict)
    trained_rounds: list[int] = field(default_factory=list)

    async def join(self) -> bool:
        result = await self.fed.join(
            _join_request(
                self.client_id, n=EXAMPLES[self.client_id], strategy=self.fed.status().strategy
            )
        )
        if result.initial_model_requested and self.upload_initial:
            initial = _f32(INITIAL) if result.strategy != "local" else {}
            await _upload(self.fed, self.client_id, 0, UpdateKind.INITIAL, initial, 0)
        return result.initial_model_requested

    def _fetch(self, round_id: int, stage: ModelStage) -> dict[str, np.ndarray]:
        payload = assemble(self.fed.fetch_model(self.client_id, round_id, stage).messages())
        tensors = {k: v.copy() for k, v in decode_tensors(payload).items()}
        self.fetched[(round_id, stage)] = tensors
        return tensors

    async def serve(self) -> None:
        async for task in self.fed.task_stream(self.client_id):
            self.tasks.append(task)
            if task.kind is TaskKind.TRAIN:
                if not self.answers_train(sum(t.kind is TaskKind.TRAIN for t in self.tasks)):
                    continue
                self._fetch(task.round, ModelStage.ROUND_START)
                delta = _f32(DELTAS[self.client_id]) if task.expected_update else {}
                n = EXAMPLES[self.client_id]
                await _upload(self.fed, self.client_id, task.round, UpdateKind.DELTA, delta, n)
                await self.fed.report_metrics(
                    self.client_id, task.round, MetricsPhase.TRAIN, {"loss": 1.0}
                )
                self.trained_rounds.append(task.round)
            elif task.kind is TaskKind.EVALUATE:
                self._fetch(task.round, ModelStage.AGGREGATED)
                await self.fed.report_metrics(
                    self.client_id,
                    task.round,
                    MetricsPhase.EVALUATE,
                    {"accuracy": ACCURACY[self.client_id]},
                )

    def kinds(self) -> list[tuple[TaskKind, int]]:
        return [(t.kind, t.round) for t in self.tasks]


@dataclass
class Harness:
    fed: Federation
    state: SqliteStateStore
    models: ModelStore
    clock: Clock
    clustering: FixedClusters
    background: list[asyncio.Task[Any]] = field(default_factory=list)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.background.append(task)
        return task

    def start(self) -> asyncio.Task[Any]:
        return self.spawn(self.fed.run())

    async def connect(self, client: FakeClient) -> asyncio.Task[Any]:
        await client.join()
        task = self.spawn(client.serve())
        # Connected now, or already served (a fast round may be over before the first poll).
        await until(
            lambda: self._connected(client.client_id) or bool(client.tasks) or task.done(),
            f"{client.client_id} connected",
        )
        return task

    def _connected(self, client_id: str) -> bool:
        return any(c.client_id == client_id and c.connected for c in self.fed.status().clients)

    async def pass_deadline(self, seconds: float) -> None:
        """Move the clock past a deadline and wake the state machine (a re-join notifies)."""
        self.clock.now += seconds
        any_client = self.fed.status().clients[0].client_id
        await self.fed.join(
            _join_request(
                any_client, n=EXAMPLES.get(any_client, 1), strategy=self.fed.status().strategy
            )
        )


@asynccontextmanager
async def federation(
    tmp_path: Path,
    *,
    state_class: type[SqliteStateStore] = SqliteStateStore,
    models_class: type[ModelStore] = ModelStore,
    backend: FixedClusters | None = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    settings: dict[str, Any] = {
        "state_dir": tmp_path,
        "rounds": 1,
        "strategy": "clustered",  # plain n-weighted FedAvg per level: hand-computable
        "aggregation": PLAIN_FEDAVG,  # no clipping, no cap (their tests are their own)
        "min_clients": 2,
        "expected_clients": 3,  # rounds open once a, b and c are all connected
        "quorum_wait_s": 600.0,
        "round_deadline_s": 600.0,
        "eval_deadline_s": 600.0,
    }
    settings.update(overrides)
    config = CoordinatorConfig(**settings)
    state = state_class(tmp_path / "state.sqlite3")
    models = models_class(tmp_path / "models")
    clock = Clock()
    clustering = backend if backend is not None else FixedClusters(CLUSTERS)
    fed = Federation(
        config=config,
        state=state,
        models=models,
        clustering=clustering,
        clock=clock,
    )
    harness = Harness(fed, state, models, clock, clustering)
    try:
        yield harness
    finally:
        for task in harness.background:
            task.cancel()
        await asyncio.gather(*harness.background, return_exceptions=True)
        state.close()


def _assert_tensors(actual: dict[str, np.ndarray], expected: dict[str, list[float]]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_array_equal(actual[name], np.array(values, dtype=np.float32))


# ----------------------------------------------------------------------------- joining


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("request_", "error", "fragment"),
    [
        (_join_request("has space"), InvalidArgumentError, "client_id"),
        (_join_request(""), InvalidArgumentError, "client_id"),
        (_join_request("x" * 129), InvalidArgumentError, "client_id"),
        (_join_request("a", fingerprint=""), InvalidArgumentError, "model_fingerprint"),
        (_join_request("a", n=0), InvalidArgumentError, "num_train_examples"),
    ],
)
async def test_invalid_joins_are_refused(
    tmp_path: Path, request_: JoinRequest, error: type[Exception], fragment: str
) -> None:
    async with federation(tmp_path) as h:
        with pytest.raises(error, match=fragment):
            await h.fed.join(request_)
        assert h.fed.status().clients == ()


@pytest.mark.asyncio
@pytest.mark.parametrize("metadata", ["[1, 2]", "not json", '"text"', "x" * 20_000])
async def test_join_metadata_must_be_a_small_json_object(tmp_path: Path, metadata: str) -> None:
    async with federation(tmp_path) as h:
        request = JoinRequest("a", metadata, _join_request("a").capabilities, 1)
        with pytest.raises(InvalidArgumentError, match="metadata_json"):
            await h.fed.join(request)


@pytest.mark.asyncio
async def test_first_join_fixes_the_fingerprint_and_asks_for_the_initial_model(
    tmp_path: Path,
) -> None:
    async with federation(tmp_path) as h:
        first = await h.fed.join(_join_request("a"))
        assert first.initial_model_requested
        assert first.current_round == 0 and first.total_rounds == 1
        with pytest.raises(ModelMismatchError, match="fingerprint"):
            await h.fed.join(_join_request("b", fingerprint="other"))
        for cid in ("b", "c"):  # asked too: they joined before the model exists
            assert (await h.fed.join(_join_request(cid))).initial_model_requested
        await _upload(h.fed, "a", 0, UpdateKind.INITIAL, _f32(INITIAL), 0)
        assert not (await h.fed.join(_join_request("d"))).initial_model_requested
        # A late initial model of an asked client with the same layout is an idempotent
        # duplicate...
        assert await _upload(h.fed, "b", 0, UpdateKind.INITIAL, _f32(INITIAL), 0)
        # ...one with another layout is refused...
        with pytest.raises(ModelMismatchError):
            await _upload(h.fed, "c", 0, UpdateKind.INITIAL, {"x": np.zeros(1, np.float32)}, 0)
        # ...and the ask is used up; a client joined after the model exists was never asked.
        for cid in ("b", "d"):
            with pytest.raises(WrongRoundError, match="model exists"):
                await _upload(h.fed, cid, 0, UpdateKind.INITIAL, _f32(INITIAL), 0)
        assert h.state.get_setting("model_fingerprint") == FINGERPRINT
        assert h.models.rounds() == [0]


@pytest.mark.asyncio
async def test_calls_from_unknown_clients_are_refused(tmp_path: Path) -> None:
    async with federation(tmp_path) as h:
        with pytest.raises(UnknownClientError):
            h.fed.fetch_model("ghost", 1, ModelStage.ROUND_START)
        with pytest.raises(UnknownClientError):
            await _upload(h.fed, "ghost", 0, UpdateKind.INITIAL, _f32(INITIAL), 0)
        with pytest.raises(UnknownClientError):
            await h.fed.report_metrics("ghost", 1, MetricsPhase.TRAIN, {"loss": 1.0})
        with pytest.raises(UnknownClientError):
            await anext(aiter(h.fed.task_stream("ghost")))


# ----------------------------------------------------------------------------- quorum


@pytest.mark.asyncio
async def test_round_waits_for_quorum_and_an_initial_model(tmp_path: Path) -> None:
    async with federation(tmp_path, expected_clients=None, quorum_wait_s=0.0) as h:
        run = h.start()
        a = FakeClient(h.fed, "a", upload_initial=False, answers_train=lambda k: False)
        b = FakeClient(h.fed, "b", upload_initial=False, answers_train=lambda k: False)
        await h.connect(a)
        await settle()
        assert h.fed.phase is Phase.WAITING_FOR_QUORUM and a.tasks == []

        await h.connect(b)  # two connected, but no model yet
        await settle()
        assert h.fed.phase is Phase.WAITING_FOR_QUORUM and a.tasks == [] and b.tasks == []

        await _upload(h.fed, "a", 0, UpdateKind.INITIAL, _f32(INITIAL), 0)
        await until(lambda: bool(a.tasks and b.tasks), "TRAIN tasks")
        assert a.kinds() == b.kinds() == [(TaskKind.TRAIN, 1)]
        assert not run.done()


@pytest.mark.asyncio
async def test_expected_clients_opens_the_round_when_all_are_connected(tmp_path: Path) -> None:
    async with federation(tmp_path, expected_clients=3, quorum_wait_s=600.0) as h:
        h.start()
        clients = [FakeClient(h.fed, c, answers_train=lambda k: False) for c in "abc"]
        await h.connect(clients[0])
        await h.connect(clients[1])
        await settle()
        assert h.fed.phase is Phase.WAITING_FOR_QUORUM  # quorum holds, still waiting for c
        await h.connect(clients[2])
        await until(lambda: all(c.tasks for c in clients), "TRAIN tasks for all three")
        assert {t.cluster_id for c in clients for t in c.tasks} == {0, 1}
        assert [c.tasks[0].cluster_id for c in clients] == [0, 0, 1]


@pytest.mark.asyncio
async def test_quorum_wait_ends_at_its_deadline(tmp_path: Path) -> None:
    async with federation(tmp_path, expected_clients=3, quorum_wait_s=30.0) as h:
        h.start()
        a = FakeClient(h.fed, "a", answers_train=lambda k: False)
        b = FakeClient(h.fed, "b", answers_train=lambda k: False)
        await h.connect(a)
        await h.connect(b)
        await settle()
        assert a.tasks == []
        await h.pass_deadline(31.0)
        await until(lambda: bool(a.tasks and b.tasks), "TRAIN tasks after the quorum wait")
        assert a.kinds() == [(TaskKind.TRAIN, 1)]


# ----------------------------------------------------------------------------- rounds


@pytest.mark.asyncio
async def test_round_with_three_clients_advances_the_model_by_the_weighted_mean(
    tmp_path: Path,
) -> None:
    async with federation(tmp_path) as h:
        run = h.start()
        clients = {c: FakeClient(h.fed, c) for c in "abc"}
        for client in clients.values():
            await h.connect(client)
        await asyncio.wait_for(run, TIMEOUT_S)
        await until(
            lambda: all(c.tasks[-1].kind is TaskKind.FINISHED for c in clients.values()), "FINISHED"
        )

        for cid, client in clients.items():
            assert client.kinds() == [
                (TaskKind.TRAIN, 1),
                (TaskKind.EVALUATE, 1),
                (TaskKind.FINISHED, 1),
            ]
            assert client.tasks[0].cluster_id == CLUSTERS[cid]
            assert [(s.name, s.dtype, s.shape) for s in client.tasks[0].expected_update] == [
                ("prompt.cluster", "F32", (1,)),
                ("prompt.global", "F32", (2,)),
            ]
            _assert_tensors(client.fetched[(1, ModelStage.ROUND_START)], INITIAL)

        # Global: [1,2] + (1*[4,8] + 3*[0,4] + 4*[2,-2]) / 8 = [2.5, 3.5].
        # Cluster 0 (a, b): 10 + (1*2 + 3*6) / 4 = 15.  Cluster 1 (c): 10 + 1 = 11.
        cluster0 = {"prompt.global": [2.5, 3.5], "prompt.cluster": [15.0]}
        cluster1 = {"prompt.global": [2.5, 3.5], "prompt.cluster": [11.0]}
        _assert_tensors(clients["a"].fetched[(1, ModelStage.AGGREGATED)], cluster0)
        _assert_tensors(clients["b"].fetched[(1, ModelStage.AGGREGATED)], cluster0)
        _assert_tensors(clients["c"].fetched[(1, ModelStage.AGGREGATED)], cluster1)

        saved = h.models.load(1, expected=h.state.snapshots()[1])
        _assert_tensors(saved.for_cluster(0), cluster0)
        _assert_tensors(saved.for_cluster(1), cluster1)

        (record,) = h.state.rounds()
        assert (record.round, record.status, record.num_clusters) == (1, "completed", 2)
        assert [
            (c.client_id, c.cluster_id, c.num_examples, c.update_accepted) for c in record.clients
        ] == [("a", 0, 1, True), ("b", 0, 3, True), ("c", 1, 4, True)]
        assert record.clients[0].train_metrics == {"loss": 1.0}
        assert record.clients[2].eval_metrics == {"accuracy": 0.25}
        # Accuracies 0.5, 1.0, 0.25: mean 7/12, Jain 1.75^2 / (3 * 1.3125) = 7/9.
        assert record.summary["accuracy_mean"] == pytest.approx(7 / 12)
        assert record.summary["accuracy_worst"] == 0.25
        assert record.summary["jain_index"] == pytest.approx(7 / 9)
        assert record.summary["cluster_0_accuracy_mean"] == pytest.approx(0.75)
        assert record.summary["cluster_1_accuracy_mean"] == pytest.approx(0.25)
        assert record.summary["updates_accepted"] == 3.0

        status = h.fed.status()
        assert (status.completed_rounds, status.phase) == (1, Phase.DONE)
        assert h.state.assignment() == CLUSTERS


@pytest.mark.asyncio
async def test_client_missing_the_deadline_is_left_out_when_quorum_holds(tmp_path: Path) -> None:
    async with federation(tmp_path) as h:
        run = h.start()
        a, b = FakeClient(h.fed, "a"), FakeClient(h.fed, "b")
        c = FakeClient(h.fed, "c", answers_train=lambda k: False)
        for client in (a, b, c):
            await h.connect(client)
        await until(lambda: a.trained_rounds == [1] and b.trained_rounds == [1], "a and b trained")
        await until(lambda: c.tasks != [], "c's TRAIN task")
        await settle()
        assert h.fed.phase is Phase.TRAINING  # still waiting for c
        await h.pass_deadline(601.0)
        await asyncio.wait_for(run, TIMEOUT_S)

        (record,) = h.state.rounds()
        assert record.status == "completed"
        assert [(r.client_id, r.update_accepted, r.num_examples) for r in record.clients] == [
            ("a", True, 1),
            ("b", True, 3),
            ("c", False, 0),
        ]
        assert record.summary["participants"] == 3.0
        assert record.summary["updates_accepted"] == 2.0
        # Only a and b: global [1,2] + (1*[4,8] + 3*[0,4]) / 4 = [2, 7]; cluster 0: 15.
        saved = h.models.load(1, expected=h.state.snapshots()[1])
        _assert_tensors(
            saved.for_cluster(0), {"prompt.global": [2.0, 7.0], "prompt.cluster": [15.0]}
        )
        # Cluster 1 had no update: it still starts from the template.
        _assert_tensors(
            saved.for_cluster(1), {"prompt.global": [2.0, 7.0], "prompt.cluster": [10.0]}
        )
        await until(lambda: c.tasks[-1].kind is TaskKind.FINISHED, "c finished")
        assert c.kinds() == [(TaskKind.TRAIN, 1), (TaskKind.FINISHED, 1)]  # no EVALUATE for c
        assert (TaskKind.EVALUATE, 1) in a.kinds()


@pytest.mark.asyncio
async def test_round_without_quorum_by_the_deadline_fails_and_is_retried(tmp_path: Path) -> None:
    async with federation(tmp_path) as h:
        run = h.start()
        a = FakeClient(h.fed, "a")
        lazy_once = {c: FakeClient(h.fed, c, answers_train=lambda k: k >= 2) for c in "bc"}
        for client in (a, *lazy_once.values()):
            await h.connect(client)
        await until(lambda: a.trained_rounds == [1], "a trained")
        await until(lambda: all(c.tasks for c in lazy_once.values()), "TRAIN tasks")
        await h.pass_deadline(601.0)

        await asyncio.wait_for(run, TIMEOUT_S)
        failed, completed = h.state.rounds()
        assert failed.round == completed.round == 1
        assert failed.status == "failed: 1 of 3 updates by the deadline, quorum is 2"
        assert [(r.client_id, r.update_accepted) for r in failed.clients] == [
            ("a", True),
            ("b", False),
            ("c", False),
        ]
        assert completed.status == "completed"
        assert all(r.update_accepted for r in completed.clients)
        assert h.state.last_completed_round() == 1
        # The retry started from the same model, so the result equals a full first round.
        _assert_tensors(
            h.models.load(1, expected=h.state.snapshots()[1]).for_cluster(0),
            {"prompt.global": [2.5, 3.5], "prompt.cluster": [15.0]},
        )
        assert a.trained_rounds == [1, 1]
        assert a.kinds()[:2] == [(TaskKind.TRAIN, 1), (TaskKind.TRAIN, 1)]


@pytest.mark.asyncio
async def test_update_rules_during_a_round(tmp_path: Path) -> None:
    async with federation(tmp_path, expected_clients=None, quorum_wait_s=0.0) as h:
        h.start()
        a = FakeClient(h.fed, "a", answers_train=lambda k: False)
        b = FakeClient(h.fed, "b", answers_train=lambda k: False)
        await h.connect(a)
        await h.connect(b)
        await until(lambda: bool(a.tasks and b.tasks), "TRAIN tasks")
        delta = _f32(DELTAS["a"])

        with pytest.raises(WrongRoundError):
            await _upload(h.fed, "a", 2, UpdateKind.DELTA, delta, 1)
        with pytest.raises(InvalidArgumentError, match="num_examples"):
            await _upload(h.fed, "a", 1, UpdateKind.DELTA, delta, 0)
        with pytest.raises(WrongRoundError, match="not been aggregated"):
            h.fed.fetch_model("a", 1, ModelStage.AGGREGATED)

        await h.fed.join(_join_request("late"))  # joined after the round opened
        with pytest.raises(NotParticipantError):
            await _upload(h.fed, "late", 1, UpdateKind.DELTA, delta, 1)
        with pytest.raises(NotParticipantError):
            h.fed.fetch_model("late", 1, ModelStage.ROUND_START)
        with pytest.raises(NotParticipantError):
            await h.fed.report_metrics("late", 1, MetricsPhase.TRAIN, {"loss": 1.0})

        with pytest.raises(InvalidArgumentError, match="not finite"):
            await h.fed.report_metrics("a", 1, MetricsPhase.TRAIN, {"loss": float("nan")})
        with pytest.raises(InvalidArgumentError, match="at most 64 metrics"):
            await h.fed.report_metrics(
                "a", 1, MetricsPhase.TRAIN, {f"m{i}": 0.0 for i in range(65)}
            )
        with pytest.raises(WrongRoundError):
            await h.fed.report_metrics("a", 3, MetricsPhase.TRAIN, {"loss": 1.0})

        assert not await _upload(h.fed, "a", 1, UpdateKind.DELTA, delta, 1)
        assert await _upload(h.fed, "a", 1, UpdateKind.DELTA, delta, 1)  # same bytes: duplicate
        with pytest.raises(ConflictError, match="already submitted"):
            await _upload(h.fed, "a", 1, UpdateKind.DELTA, _f32(DELTAS["b"]), 1)
        assert h.fed.phase is Phase.TRAINING


# ----------------------------------------------------------------------------- restart


@pytest.mark.asyncio
async def test_restart_resumes_after_the_last_completed_round(tmp_path: Path) -> None:
    async with federation(tmp_path) as h:
        run = h.start()
        for cid in "abc":
            await h.connect(FakeClient(h.fed, cid))
        await asyncio.wait_for(run, TIMEOUT_S)
    round1 = {
        0: {"prompt.global": [2.5, 3.5], "prompt.cluster": [15.0]},
        1: {"prompt.global": [2.5, 3.5], "prompt.cluster": [11.0]},
    }

    async with federation(tmp_path, rounds=2) as h:
        status = h.fed.status()
        assert (status.completed_rounds, status.current_round, status.total_rounds) == (1, 1, 2)
        assert status.phase is Phase.WAITING_FOR_QUORUM
        assert status.model_fingerprint == FINGERPRINT
        assert [(c.client_id, c.connected, c.cluster_id) for c in status.clients] == [
            ("a", False, 0),
            ("b", False, 0),
            ("c", False, 1),
        ]
        assert [r.status for r in status.rounds] == ["completed"]
        with pytest.raises(ModelMismatchError):
            await h.fed.join(_join_request("d", fingerprint="another-model"))

        run = h.start()
        clients = {cid: FakeClient(h.fed, cid) for cid in "abc"}
        for client in clients.values():
            assert not await client.join()  # the model survived: no initial upload requested
            h.spawn(client.serve())
        await asyncio.wait_for(run, TIMEOUT_S)

        for cid, client in clients.items():
            assert client.kinds()[0] == (TaskKind.TRAIN, 2)
            _assert_tensors(client.fetched[(2, ModelStage.ROUND_START)], round1[CLUSTERS[cid]])
        # Round 2 applies the same deltas once more.
        _assert_tensors(
            h.models.load(2, expected=h.state.snapshots()[2]).for_cluster(0),
            {"prompt.global": [4.0, 5.0], "prompt.cluster": [20.0]},
        )
        _assert_tensors(
            h.models.load(2, expected=h.state.snapshots()[2]).for_cluster(1),
            {"prompt.global": [4.0, 5.0], "prompt.cluster": [12.0]},
        )
        assert [(r.round, r.status) for r in h.state.rounds()] == [
            (1, "completed"),
            (2, "completed"),
        ]


@pytest.mark.asyncio
async def test_default_aggregation_clips_caps_and_resumes_its_bound_after_a_restart(
    tmp_path: Path,
) -> None:
    defaults: dict[str, Any] = {"aggregation": {}}
    async with federation(tmp_path, **defaults) as h:
        run = h.start()
        for cid in "abc":
            await h.connect(FakeClient(h.fed, cid))
        await asyncio.wait_for(run, TIMEOUT_S)
        (first,) = h.state.rounds()
        model = h.models.load(1, expected=h.state.snapshots()[1])
    s = first.summary
    # Global prompt norms: a |[4,8]| = 8.94, b 4, c 2.83; the first round's bound is their
    # lower median, 4, so a's delta is scaled to norm 4. Shares n = 1, 3, 4 of 8 are under
    # the cap of 0.5 (three members: max(1/3, min(0.5, 2/3))).
    assert s["clip_global_prompt_bound"] == 4.0
    assert s["clip_global_prompt_clipped_fraction"] == pytest.approx(1 / 3)
    assert s["global_max_weight"] == 0.5
    a = np.array([4.0, 8.0]) * 4.0 / np.sqrt(80.0)
    expected = np.array([1.0, 2.0]) + a / 8 + 3 / 8 * np.array([0, 4]) + 4 / 8 * np.array([2, -2])
    np.testing.assert_allclose(model.global_tensors["prompt.global"], expected, rtol=1e-6)
    # Cluster prompt norms 2, 6, 1: bound 2; cluster 0 holds a and b, so both weigh 1/2
    # (two members: the cap is the fair share) and b's 6 counts as 2.
    assert s["clip_cluster_prompt_bound"] == 2.0
    np.testing.assert_allclose(model.cluster_tensors[0]["prompt.cluster"], [10 + (2 + 2) / 2])
    assert s["cluster_0_max_weight"] == 0.5
    next_bound = s["clip_global_prompt_next_bound"]
    assert next_bound == pytest.approx(4.0 * np.exp(-0.2 * (2 / 3 - 0.5)))

    async with federation(tmp_path, rounds=2, **defaults) as h:  # a restarted coordinator
        run = h.start()
        for cid in "abc":
            client = FakeClient(h.fed, cid)
            await client.join()
            h.spawn(client.serve())
        await asyncio.wait_for(run, TIMEOUT_S)
        second = h.state.rounds()[-1].summary
    # the bound continues from the durable record instead of recalibrating to 4
    assert second["clip_global_prompt_bound"] == next_bound
    assert second["clip_cluster_prompt_bound"] == s["clip_cluster_prompt_next_bound"]


@pytest.mark.asyncio
async def test_restart_after_the_last_round_is_done_at_once(tmp_path: Path) -> None:
    async with federation(tmp_path) as h:
        run = h.start()
        for cid in "abc":
            await h.connect(FakeClient(h.fed, cid))
        await asyncio.wait_for(run, TIMEOUT_S)

    async with federation(tmp_path) as h:
        assert h.fed.phase is Phase.DONE
        client = FakeClient(h.fed, "a")
        await client.join()
        await asyncio.wait_for(client.serve(), TIMEOUT_S)
        assert client.kinds() == [(TaskKind.FINISHED, 1)]


# ----------------------------------------------------------------------------- cancellation


@pytest.mark.asyncio
@pytest.mark.parametrize("yields", [0, 1, 2])
async def test_run_stops_when_cancelled_right_after_a_notification(
    tmp_path: Path, yields: int
) -> None:
    # Cancelling the round task in the same loop iteration in which a client call woke it up
    # must still stop it (asyncio.wait_for on Python 3.11 can swallow such a cancellation).
    async with federation(tmp_path, expected_clients=None, quorum_wait_s=0.0) as h:
        run = h.start()
        a = FakeClient(h.fed, "a", answers_train=lambda k: False)
        b = FakeClient(h.fed, "b", answers_train=lambda k: False)
        await h.connect(a)
        await h.connect(b)
        await until(lambda: bool(a.tasks and b.tasks), "TRAIN tasks")
        await settle()
        await h.fed.join(_join_request("a"))  # wakes the state machine waiting for updates
        for _ in range(yields):
            await asyncio.sleep(0)
        run.cancel()
        done, _ = await asyncio.wait({run}, timeout=TIMEOUT_S)
        assert run in done, "the round task ignored its cancellation"
        assert run.cancelled()


# ----------------------------------------------------------------------------- strategies


async def _run_three(h: Harness) -> dict[str, FakeClient]:
    run = h.start()
    clients = {c: FakeClient(h.fed, c) for c in "abc"}
    for client in clients.values():
        await h.connect(client)
    await asyncio.wait_for(run, TIMEOUT_S)
    await until(
        lambda: all(c.tasks and c.tasks[-1].kind is TaskKind.FINISHED for c in clients.values()),
        "FINISHED",
    )
    return clients


@pytest.mark.asyncio
async def test_a_client_of_another_strategy_is_refused(tmp_path: Path) -> None:
    async with federation(tmp_path, strategy="fpl") as h:
        with pytest.raises(ModelMismatchError, match="strategy") as info:
            await h.fed.join(_join_request("a", strategy="fedavg"))
        assert info.value.status_code.name == "FAILED_PRECONDITION"
        assert (await h.fed.join(_join_request("a", strategy="fpl"))).strategy == "fpl"


@pytest.mark.asyncio
async def test_fpl_round_start_models_carry_every_cluster_centroid(tmp_path: Path) -> None:
    async with federation(tmp_path, strategy="fpl") as h:
        clients = await _run_three(h)
        task = clients["a"].tasks[0]
        assert task.training is not None and task.training.contrastive_weight > 0
        start = clients["a"].fetched[(1, ModelStage.ROUND_START)]
        # both clusters of the round, as token-means of their cluster segment
        assert sorted(k for k in start if k.startswith("centroid.")) == ["centroid.0", "centroid.1"]
        np.testing.assert_allclose(start["centroid.1"], np.mean(INITIAL["prompt.cluster"]))
        # the centroids are read-only extras: never part of the expected update
        assert all(not s.name.startswith("centroid.") for s in task.expected_update)
        assert "centroid.0" not in clients["a"].fetched[(1, ModelStage.AGGREGATED)]


@pytest.mark.asyncio
async def test_fedavg_shares_one_model_across_clusters(tmp_path: Path) -> None:
    async with federation(tmp_path, strategy="fedavg") as h:
        clients = await _run_three(h)
        # everything is global: n-weighted over all three clients, whatever the cluster
        # prompt.cluster: 10 + (1*2 + 3*6 + 4*1) / 8 = 13
        expected = {"prompt.global": [2.5, 3.5], "prompt.cluster": [13.0]}
        for client in clients.values():
            _assert_tensors(client.fetched[(1, ModelStage.AGGREGATED)], expected)
        assert h.models.load(0, expected=h.state.snapshots()[0]).cluster_template == {}


@pytest.mark.asyncio
async def test_local_strategy_shares_nothing(tmp_path: Path) -> None:
    async with federation(tmp_path, strategy="local") as h:
        clients = await _run_three(h)
        for client in clients.values():
            assert client.tasks[0].expected_update == ()
            assert client.fetched[(1, ModelStage.AGGREGATED)] == {}
        assert [r.status for r in h.state.rounds()] == ["completed"]


@pytest.mark.asyncio
async def test_dp_budget_stops_the_federation_before_the_round_that_would_exceed_it(
    tmp_path: Path,
) -> None:
    from fedprompt_coordinator.privacy import RDPAccountant

    # clustered: DP on the global, cluster and head levels, z = 1 each: one mechanism of
    # z_eq = 1/√3 per client and round (the composed ε, which the halt enforces)
    z_eq = 3**-0.5
    one_round = RDPAccountant.epsilon_of([(z_eq, 1.0, 1)], 1e-5)
    two_rounds = RDPAccountant.epsilon_of([(z_eq, 1.0, 2)], 1e-5)
    privacy = {
        "enabled": True,
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "epsilon_budget": (one_round + two_rounds) / 2,  # room for one round, not two
        "seed": 0,
    }
    async with federation(tmp_path, rounds=3, privacy=privacy) as h:
        clients = await _run_three(h)
        status = h.fed.status()
        assert status.completed_rounds == 1
        assert status.epsilon == pytest.approx(one_round)
        assert status.epsilon <= privacy["epsilon_budget"]
        level_eps = RDPAccountant.epsilon_of([(1.0, 1.0, 1)], 1e-5)
        assert status.epsilon_by_level == pytest.approx(
            dict.fromkeys(["global", "cluster", "head"], level_eps)
        )
        assert "round 2 would raise" in status.stop_reason
        finished = clients["a"].tasks[-1]
        assert "stopped early" in finished.message and "budget" in finished.message
        assert [r.round for r in h.state.rounds()] == [1]  # round 2 never opened
        summary = h.state.rounds()[0].summary
        assert summary["epsilon"] == summary["dp_epsilon"] == pytest.approx(one_round)
        assert summary["dp_epsilon_head"] == pytest.approx(level_eps)
        # m_k counts the joined members of each cluster: {a, b} is released, {c} is not
        assert summary["dp_cluster_0_expected_participants"] == 2.0
        assert "dp_cluster_0_skipped" not in summary
        assert summary["dp_cluster_1_skipped"] == 1.0
        assert summary["dp_global_expected_participants"] == 3.0
        # the global level was noised: not the plain weighted mean [2.5, 3.5]
        glob = clients["a"].fetched[(1, ModelStage.AGGREGATED)]["prompt.global"]
        assert not np.allclose(glob, [2.5, 3.5])
    # a restarted coordinator keeps the spent ε and the stop
    async with federation(tmp_path, rounds=3, privacy=privacy) as h2:
        assert h2.fed.status().epsilon == pytest.approx(one_round)
        assert h2.fed.phase is Phase.DONE


@pytest.mark.asyncio
async def test_a_sampling_draw_below_quorum_fails_at_once_and_is_redrawn(tmp_path: Path) -> None:
    privacy = {
        "enabled": True,
        "noise_multiplier": 1.0,
        "client_sampling_rate": 0.5,
        "seed": 9,  # with this seed the first three draws of 3 clients fall below 2
    }
    # deadlines far away: a draw below the quorum must not wait for them
    async with federation(tmp_path, rounds=1, privacy=privacy) as h:
        clients = await _run_three(h)
        rounds = h.state.rounds()
        assert rounds[-1].status == "completed"
        assert len(rounds) >= 2  # at least one draw fell below the quorum...
        assert all(r.status.startswith("failed: client sampling drew") for r in rounds[:-1])
        trained = [c for c in clients.values() if c.trained_rounds == [1]]
        assert len(trained) >= 2  # the round that ran had at least the quorum
        # only the round that released a model was accounted
        assert h.fed.status().epsilon == pytest.approx(  # three levels composed
            RDPAccountantForTest.epsilon_of([(3**-0.5, 0.5, 1)], 1e-5)
        )


# ----------------------------------------------------------------------------- spooled uploads


@pytest.mark.asyncio
async def test_spooled_uploads_give_the_same_round_and_leave_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedprompt_coordinator.upload_intake as upload_intake_module

    monkeypatch.setattr(upload_intake_module, "SPOOL_THRESHOLD_BYTES", 0)  # every upload spools
    async with federation(tmp_path) as h:
        run = h.start()
        clients = {c: FakeClient(h.fed, c) for c in "abc"}
        for client in clients.values():
            await h.connect(client)
        await asyncio.wait_for(run, TIMEOUT_S)
        cluster0 = {"prompt.global": [2.5, 3.5], "prompt.cluster": [15.0]}
        cluster1 = {"prompt.global": [2.5, 3.5], "prompt.cluster": [11.0]}
        saved = h.models.load(1, expected=h.state.snapshots()[1])
        _assert_tensors(saved.for_cluster(0), cluster0)
        _assert_tensors(saved.for_cluster(1), cluster1)
        assert not any(p.is_file() for p in h.models.spool_dir.rglob("*"))


@pytest.mark.asyncio
async def test_a_corrupt_or_abandoned_spooled_upload_deletes_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedprompt_coordinator.upload_intake as upload_intake_module
    from fedprompt.chunking import PayloadInfo
    from fedprompt.errors import CorruptPayloadError

    monkeypatch.setattr(upload_intake_module, "SPOOL_THRESHOLD_BYTES", 0)
    async with federation(tmp_path) as h:
        await h.fed.join(_join_request("a"))
        payload = encode_tensors(_f32(INITIAL))
        info = describe_payload(payload)
        bad = PayloadInfo(info.total_bytes, info.num_chunks, b"\0" * 32)  # wrong SHA-256
        session = h.fed.uploads.begin(
            client_id="a", round_id=0, kind=UpdateKind.INITIAL, num_examples=0, info=bad
        )
        assert session.spool_path is not None and session.spool_path.exists()
        for chunk in split_payload(payload):
            await session.add(chunk)
        with pytest.raises(CorruptPayloadError):
            await h.fed.uploads.finish(session)
        assert not session.spool_path.exists()

        abandoned = h.fed.uploads.begin(
            client_id="a", round_id=0, kind=UpdateKind.INITIAL, num_examples=0, info=info
        )
        await h.fed.uploads.discard(abandoned)
        assert abandoned.spool_path is not None and not abandoned.spool_path.exists()
        # a good spooled initial model is accepted and its file is gone afterwards
        assert not await _upload(h.fed, "a", 0, UpdateKind.INITIAL, _f32(INITIAL), 0)
        assert not any(p.is_file() for p in h.models.spool_dir.rglob("*"))


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["fp16", "int8"])
async def test_compressed_uploads_are_decoded_before_aggregation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    import sys

    from fedprompt.compression import compress_tensors

    real_encode = encode_tensors

    def compressed(tensors: dict[str, np.ndarray]) -> bytes:
        packed, meta = compress_tensors(tensors, method)
        return real_encode(packed, metadata=meta)

    # every value of INITIAL and DELTAS is exact in fp16 and in int8 blocks of one tensor
    monkeypatch.setattr(sys.modules[__name__], "encode_tensors", compressed)
    async with federation(tmp_path) as h:
        run = h.start()
        for c in "abc":
            await h.connect(FakeClient(h.fed, c))
        await asyncio.wait_for(run, TIMEOUT_S)
        saved = h.models.load(1, expected=h.state.snapshots()[1])
        tol = 0.0 if method == "fp16" else 8.0 / 127  # int8: half a step of the largest value
        for cluster, expected in ((0, [2.5, 3.5, 15.0]), (1, [2.5, 3.5, 11.0])):
            got = saved.for_cluster(cluster)
            assert got["prompt.global"].dtype == np.float32
            np.testing.assert_allclose(
                [*got["prompt.global"], *got["prompt.cluster"]], expected, atol=tol
            )


# ----------------------------------------------------------------- reliability and checks


class DownClusterer(ClusteringBackend):
    """A clusterer that cannot be reached (what GrpcClusteringBackend raises after retries)."""

    def __init__(self) -> None:
        self.calls = 0

    async def assign(
        self,
        members: dict[str, str],
        previous: dict[str, int],
        evidence: Mapping[str, Evidence] | None = None,
    ) -> dict[str, int]:
        from fedprompt.errors import UpstreamUnavailableError

        self.calls += 1
        raise UpstreamUnavailableError("clusterer failed: UNAVAILABLE: connection refused")


@pytest.mark.asyncio
async def test_with_the_clusterer_down_the_last_assignment_is_kept_and_reported(
    tmp_path: Path,
) -> None:
    async with federation(tmp_path) as h:
        # a restarted coordinator: the last assignment is in the state store, and the
        # clusterer cannot be reached
        h.state.set_assignment(CLUSTERS)
        h.fed._assignment = h.state.assignment()
        down = DownClusterer()
        h.fed._clustering = down
        run = h.start()
        clients = {c: FakeClient(h.fed, c) for c in "abc"}
        for client in clients.values():
            await h.connect(client)
        await asyncio.wait_for(run, TIMEOUT_S)
        (record,) = h.state.rounds()
        assert record.status == "completed" and record.summary["clustering_degraded"] == 1.0
        assert down.calls == 1
        assert {c.client_id: c.cluster_id for c in record.clients} == CLUSTERS  # kept
        assert h.state.assignment() == CLUSTERS


@pytest.mark.asyncio
async def test_oversized_announcements_and_huge_norms_are_refused_in_a_round(
    tmp_path: Path,
) -> None:
    from fedprompt.chunking import PayloadInfo
    from fedprompt.errors import ShapeMismatchError, TooLargeError

    async with federation(tmp_path, max_update_l2_norm=100.0) as h:
        h.start()
        a, b = FakeClient(h.fed, "a"), FakeClient(h.fed, "b")
        c = FakeClient(h.fed, "c", answers_train=lambda k: False)
        for client in (a, b, c):
            await h.connect(client)
        await until(lambda: c.tasks != [], "c's TRAIN task")
        with pytest.raises(TooLargeError, match="larger than the round's tensors"):
            h.fed.uploads.begin(
                client_id="c",
                round_id=1,
                kind=UpdateKind.DELTA,
                num_examples=4,
                info=PayloadInfo(total_bytes=50_000, num_chunks=1, sha256=b"\0" * 32),
            )
        huge = {"prompt.global": [1e3, 0.0], "prompt.cluster": [1.0]}
        with pytest.raises(ShapeMismatchError, match="L2 norm"):
            await _upload(h.fed, "c", 1, UpdateKind.DELTA, _f32(huge), 4)
        assert "c" not in h.fed._progress.current.updates  # type: ignore[union-attr]
        # a sane update from the same client is still accepted afterwards
        assert not await _upload(h.fed, "c", 1, UpdateKind.DELTA, _f32(DELTAS["c"]), 4)


# ----------------------------------------------------------------------------- metrics


@pytest.mark.asyncio
async def test_metrics_follow_rounds_dropped_clients_traffic_and_phase(tmp_path: Path) -> None:
    async with federation(tmp_path) as h:
        v = h.fed.metrics.registry.get_sample_value
        assert v("fedprompt_phase", {"phase": "waiting_for_quorum"}) == 1
        run = h.start()
        a, b = FakeClient(h.fed, "a"), FakeClient(h.fed, "b")
        c = FakeClient(h.fed, "c", answers_train=lambda k: False)
        for client in (a, b, c):
            await h.connect(client)
        await until(lambda: a.trained_rounds == [1] and b.trained_rounds == [1], "a and b trained")
        await settle()
        assert v("fedprompt_phase", {"phase": "training"}) == 1
        assert v("fedprompt_round_current") == 1
        assert v("fedprompt_clients_connected") == 3
        await h.pass_deadline(601.0)
        await asyncio.wait_for(run, TIMEOUT_S)

        assert v("fedprompt_phase", {"phase": "done"}) == 1
        assert v("fedprompt_rounds_completed") == 1
        assert v("fedprompt_rounds_total", {"status": "completed"}) == 1
        assert v("fedprompt_round_participants") == 3
        assert v("fedprompt_round_dropped_clients") == 1
        assert v("fedprompt_round_duration_seconds_count") == 1
        assert v("fedprompt_aggregation_duration_seconds_count") == 1
        # a: 0.5, b: 1.0 evaluated (c dropped out); cluster 0 holds a and b
        assert v("fedprompt_accuracy", {"stat": "mean"}) == pytest.approx(0.75)
        assert v("fedprompt_cluster_accuracy", {"cluster": "0"}) == pytest.approx(0.75)
        # the TrafficMeter saw no gRPC here (no interceptor), so nothing was counted
        assert v("fedprompt_traffic_bytes_total", {"direction": "up"}) == 0
        h.fed.traffic.add("a", up=10, down=20)
        assert v("fedprompt_traffic_bytes_total", {"direction": "up"}) == 10
        assert v("fedprompt_traffic_bytes_total", {"direction": "down"}) == 20


# ----------------------------------------------------------------------------- round failures


class FullDiskModels(ModelStore):
    """Snapshot writes of round 1 fail as on a full disk, leaving a partial temporary folder."""

    def prepare(
        self, round_id: int, model: FederationModel, *, moments: ServerMoments | None = None
    ) -> PreparedSnapshot:
        if round_id != 1:
            return super().prepare(round_id, model, moments=moments)
        partial = self.root / ".tmp-round-000001-partial"
        partial.mkdir()
        (partial / "global.safetensors").write_bytes(b"\0" * 64)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(partial))


class HostileCountState(SqliteStateStore):
    """Round records carrying client rows cannot be stored, as SQLite refuses a client's
    hostile sample count (2**63) with OverflowError."""

    def record_round(
        self,
        record: RoundRecord,
        *,
        snapshot: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if record.clients:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        super().record_round(record, snapshot=snapshot, settings=settings)


class ExplodingAggregator:
    """A bug in aggregation."""

    last_info: dict[str, float] = {}

    def aggregate(self, *args: Any, **kwargs: Any) -> FederationModel:
        raise ZeroDivisionError("division by zero")


async def _failed_round(h: Harness) -> RoundFailure:
    run = h.start()
    for cid in "abc":
        await h.connect(FakeClient(h.fed, cid))
    with pytest.raises(RoundFailedError) as info:
        await asyncio.wait_for(run, TIMEOUT_S)
    return info.value.failure


async def _retried_round_completes(tmp_path: Path) -> list[RoundRecord]:
    """A restarted coordinator (fresh process, the fault gone) reruns and completes round 1."""
    async with federation(tmp_path) as h:
        assert h.fed.status().completed_rounds == 0 and h.fed.status().round_failure is None
        run = h.start()
        clients = [FakeClient(h.fed, cid) for cid in "abc"]
        for client in clients:
            await h.connect(client)
        await asyncio.wait_for(run, TIMEOUT_S)
        assert all(c.trained_rounds == [1] for c in clients)  # every update sent afresh
        return h.state.rounds()


@pytest.mark.asyncio
async def test_a_full_disk_at_the_checkpoint_fails_the_round_loudly_and_leaves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with federation(tmp_path, models_class=FullDiskModels) as h:
        failure = await _failed_round(h)
        assert (failure.round, failure.phase) == (1, Phase.CHECKPOINT)
        assert failure.reason.startswith(
            "failed: unexpected error in CHECKPOINT: OSError: [Errno 28] No space left on device"
        )
        assert failure.clients_with_updates == ("a", "b", "c")
        # logged with its traceback, never silently
        (logged,) = [r for r in caplog.records if "round 1 failed" in r.getMessage()]
        assert logged.levelno == logging.ERROR and logged.exc_info is not None
        # nothing half-written is left: no temporary folder, no snapshot of round 1, no spool
        assert h.models.temporaries() == [] and h.models.rounds() == [0]
        assert not (h.models.spool_dir / "round-000001").exists()
        # the failure is in the status, the durable record and the metrics
        status = h.fed.status()
        assert status.round_failure == failure and status.completed_rounds == 0
        (record,) = h.state.rounds()
        assert record.status == failure.reason
        assert all(c.update_accepted for c in record.clients)
        v = h.fed.metrics.registry.get_sample_value
        assert v("fedprompt_round_errors_total", {"phase": "checkpoint"}) == 1
        assert v("fedprompt_round_loop_serving") == 0
        assert v("fedprompt_rounds_total", {"status": "failed"}) == 1
        # the failed attempt takes nothing more: a late upload for it is refused
        with pytest.raises(WrongRoundError):
            await _upload(h.fed, "a", 1, UpdateKind.DELTA, _f32(DELTAS["a"]), 1)

    rounds = await _retried_round_completes(tmp_path)
    assert [(r.round, r.status) for r in rounds] == [(1, failure.reason), (1, "completed")]


@pytest.mark.asyncio
async def test_a_record_the_store_refuses_fails_the_round_and_is_recorded_without_clients(
    tmp_path: Path,
) -> None:
    async with federation(tmp_path, state_class=HostileCountState) as h:
        failure = await _failed_round(h)
        assert failure.phase is Phase.CHECKPOINT
        assert "OverflowError: Python int too large" in failure.reason
        # the snapshot written for the round was not published without its record
        assert h.models.rounds() == [0] and h.models.temporaries() == []
        (record,) = h.state.rounds()  # the failure, stored without the poisoned client rows
        assert record.status == failure.reason and record.clients == ()
        assert h.state.snapshots().keys() == {0}

    rounds = await _retried_round_completes(tmp_path)
    assert [r.status for r in rounds] == [failure.reason, "completed"]


@pytest.mark.asyncio
async def test_a_bug_in_aggregation_fails_the_round_and_nothing_of_it_is_reused(
    tmp_path: Path,
) -> None:
    async with federation(tmp_path) as h:
        h.fed._aggregator = ExplodingAggregator()  # type: ignore[assignment]
        failure = await _failed_round(h)
        assert failure.phase is Phase.AGGREGATION
        assert failure.reason.endswith("ZeroDivisionError: division by zero")
        assert h.fed.status().current_round == 0  # no round in progress holds its updates
        assert (
            h.fed.metrics.registry.get_sample_value(
                "fedprompt_round_errors_total", {"phase": "aggregation"}
            )
            == 1
        )

    rounds = await _retried_round_completes(tmp_path)
    assert [r.status for r in rounds] == [failure.reason, "completed"]
    assert all(c.update_accepted for c in rounds[1].clients)


@pytest.mark.asyncio
async def test_stopping_the_round_loop_is_not_a_round_failure(tmp_path: Path) -> None:
    async with federation(tmp_path) as h:
        run = h.start()
        c = FakeClient(h.fed, "c", answers_train=lambda k: False)
        for client in (FakeClient(h.fed, "a"), FakeClient(h.fed, "b"), c):
            await h.connect(client)
        await until(lambda: c.tasks != [], "round 1 training")
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert h.fed.status().round_failure is None and h.state.rounds() == []
        assert h.fed.metrics.registry.get_sample_value("fedprompt_round_loop_serving") == 1


@pytest.mark.asyncio
async def test_the_broadcast_phase_is_visible_while_round_start_models_are_encoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedprompt_coordinator.round_models as round_models_module

    gate, encoding = threading.Event(), threading.Event()
    real_encode = round_models_module.encode_model

    def slow_encode(*args: Any, **kwargs: Any) -> Any:
        encoding.set()
        gate.wait(TIMEOUT_S)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(round_models_module, "encode_model", slow_encode)
    async with federation(tmp_path) as h:
        run = h.start()
        clients = [FakeClient(h.fed, cid) for cid in "abc"]
        for client in clients:
            await h.connect(client)
        await until(encoding.is_set, "round-start encoding")
        await settle()
        status = h.fed.status()
        assert (status.phase, status.current_round) == (Phase.BROADCAST, 1)
        assert all(c.tasks == [] for c in clients)  # the tasks go out once it is done
        gate.set()
        await asyncio.wait_for(run, TIMEOUT_S)
        (record,) = h.state.rounds()
        assert record.status == "completed" and record.summary["broadcast_seconds"] > 0


class FlakyClusters(FixedClusters):
    """Fails the first call (the clusterer is down), then answers."""

    async def assign(
        self,
        members: dict[str, str],
        previous: dict[str, int],
        evidence: Mapping[str, Evidence] | None = None,
    ) -> dict[str, int]:
        if self.calls == 0:
            self.calls += 1
            raise UpstreamUnavailableError("clusterer failed: RESOURCE_EXHAUSTED: too large")
        return await super().assign(members, previous)


@pytest.mark.asyncio
async def test_a_failed_clustering_is_asked_again_the_next_round(tmp_path: Path) -> None:
    async with federation(tmp_path, rounds=2) as h:
        h.fed._clustering = flaky = FlakyClusters(CLUSTERS)
        run = h.start()
        for cid in "abc":
            await h.connect(FakeClient(h.fed, cid))
        await asyncio.wait_for(run, TIMEOUT_S)
        first, second = h.state.rounds()
        assert first.summary["clustering_degraded"] == 1.0
        assert flaky.calls == 2 and "clustering_degraded" not in second.summary
        assert {c.client_id: c.cluster_id for c in second.clients} == CLUSTERS


@pytest.mark.asyncio
@pytest.mark.parametrize("steps", [0, 7])
async def test_evaluate_tasks_ask_for_the_configured_personalization_pass(
    tmp_path: Path, steps: int
) -> None:
    training = {"local_steps": 3, "batch_size": 5, "learning_rate": 0.02}
    evaluation = {"personalize_steps": steps}
    async with federation(tmp_path, training=training, evaluation=evaluation) as h:
        run = h.start()
        clients = {c: FakeClient(h.fed, c) for c in "abc"}
        for client in clients.values():
            await h.connect(client)
        await asyncio.wait_for(run, TIMEOUT_S)
        for client in clients.values():
            train, evaluate = client.tasks[0], client.tasks[1]
            assert (train.kind, evaluate.kind) == (TaskKind.TRAIN, TaskKind.EVALUATE)
            assert train.personalize_steps == 0  # a TRAIN task never asks for the pass
            assert evaluate.personalize_steps == steps
            # the pass trains with the TRAIN tasks' settings; without a pass none travel
            assert evaluate.training == (train.training if steps else None)
            assert train.training is not None and train.training.batch_size == 5
