"""A secure round through the Federation's methods (no gRPC): the stages, the tasks each
member gets, masked uploads, the model from the unmasked sums and the round summary."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fedprompt.errors import WrongRoundError
from fedprompt_client_agent.secure_aggregation import SecureMember
from fedprompt_coordinator import serde
from fedprompt_coordinator.domain import (
    MetricsPhase,
    ModelStage,
    Phase,
    SecAggStep,
    Task,
    TaskKind,
    UpdateKind,
)
from fedprompt_coordinator.federation import Federation
from tests.unit.coordinator.test_federation import (
    ACCURACY,
    DELTAS,
    EXAMPLES,
    TIMEOUT_S,
    FakeClient,
    _assert_tensors,
    _f32,
    _upload,
    federation,
    until,
)

SECURE = {"enabled": True, "clip_bound": 100.0}


@dataclass
class SecureClient(FakeClient):
    """A member answering the secure stages with the client agent's SecureMember."""

    member: SecureMember | None = None
    kill_after_shares: bool = False
    #: Receives its tasks and answers none of them.
    silent: bool = False
    steps: list[TaskKind] = field(default_factory=list)

    async def serve(self) -> None:
        fed: Federation = self.fed
        async for task in fed.task_stream(self.client_id):
            self.tasks.append(task)
            info = task.secure_aggregation
            if self.silent:
                continue
            if task.kind is TaskKind.SECAGG_KEYS:
                assert info is not None
                self.member = SecureMember(
                    self.client_id, task.round, serde.secagg_task_to_proto(info)
                )
                await self._step(self.member.keys())
            elif task.kind is TaskKind.SECAGG_SHARES:
                assert info is not None and self.member is not None
                await self._step(self.member.shares(serde.secagg_task_to_proto(info)))
                if self.kill_after_shares:
                    return  # its task stream ends: the member is gone
            elif task.kind is TaskKind.TRAIN:
                assert info is not None
                self._fetch(task.round, ModelStage.ROUND_START)
                if info.encoding is None:  # a group not aggregated: train, upload nothing
                    self.trained_rounds.append(task.round)
                    continue
                assert self.member is not None
                encoding = self.member.receive(serde.secagg_task_to_proto(info))
                masked = self.member.mask(
                    _f32(DELTAS[self.client_id]),
                    encoding,
                    num_examples=EXAMPLES[self.client_id],
                    cluster_id=task.cluster_id,
                    centroids={},
                )
                await _upload(fed, self.client_id, task.round, UpdateKind.MASKED, masked, 1)
                self.trained_rounds.append(task.round)
            elif task.kind is TaskKind.SECAGG_UNMASK:
                assert info is not None and self.member is not None
                await self._step(self.member.unmask(serde.secagg_task_to_proto(info)))
            elif task.kind is TaskKind.EVALUATE:
                self._fetch(task.round, ModelStage.AGGREGATED)
                await fed.report_metrics(
                    self.client_id,
                    task.round,
                    MetricsPhase.EVALUATE,
                    {"accuracy": ACCURACY[self.client_id]},
                )

    async def _step(self, request: object) -> None:
        await self.fed.secagg_step(serde.secagg_step_from_proto(request))  # type: ignore[arg-type]


def _kinds(tasks: list[Task]) -> list[TaskKind]:
    return [t.kind for t in tasks]


@pytest.mark.asyncio
async def test_secure_round_through_the_federation(tmp_path: Path) -> None:
    async with federation(tmp_path, secure_aggregation=SECURE) as h:
        run = h.start()
        clients = {c: SecureClient(h.fed, c) for c in "abc"}
        for client in clients.values():
            await h.connect(client)
        await asyncio.wait_for(run, TIMEOUT_S)
        await until(
            lambda: all(c.tasks[-1].kind is TaskKind.FINISHED for c in clients.values()), "done"
        )
        # a and b form cluster 0's group; c is alone in cluster 1: trains, uploads nothing
        for cid in "ab":
            assert _kinds(clients[cid].tasks) == [
                TaskKind.SECAGG_KEYS,
                TaskKind.SECAGG_SHARES,
                TaskKind.TRAIN,
                TaskKind.SECAGG_UNMASK,
                TaskKind.EVALUATE,
                TaskKind.FINISHED,
            ]
        assert _kinds(clients["c"].tasks) == [TaskKind.TRAIN, TaskKind.EVALUATE, TaskKind.FINISHED]
        assert clients["c"].trained_rounds == [1]
        # cluster 0: 10 + (1*2 + 3*6)/4 = 15; global from cluster 0 alone: [1,2] + [1, 5];
        # cluster 1 keeps its tensors (not aggregated this round)
        _assert_tensors(
            clients["a"].fetched[(1, ModelStage.AGGREGATED)],
            {"prompt.global": [2.0, 7.0], "prompt.cluster": [15.0]},
        )
        _assert_tensors(
            clients["c"].fetched[(1, ModelStage.AGGREGATED)],
            {"prompt.global": [2.0, 7.0], "prompt.cluster": [10.0]},
        )
        (record,) = h.state.rounds()
        assert record.status == "completed"
        assert record.summary["secagg_groups"] == 2
        assert record.summary["secagg_released"] == 1
        assert record.summary["secagg_cluster_1_skipped"] == 1
        assert [(c.client_id, c.update_accepted) for c in record.clients] == [
            ("a", True),
            ("b", True),
            ("c", False),
        ]
        assert record.clients[2].eval_metrics == {"accuracy": 0.25}
        assert h.fed.phase is Phase.DONE
        with pytest.raises(WrongRoundError):
            await h.fed.secagg_step(SecAggStep("a", 1, "cluster-0"))


@pytest.mark.asyncio
async def test_plain_deltas_are_refused_in_a_secure_round(tmp_path: Path) -> None:
    async with federation(tmp_path, secure_aggregation=SECURE) as h:
        h.start()
        clients = {c: SecureClient(h.fed, c, silent=(c == "a")) for c in "abc"}
        for client in clients.values():
            await h.connect(client)
        await until(lambda: h.fed.phase is Phase.KEY_EXCHANGE, "key exchange")
        with pytest.raises(WrongRoundError):
            await _upload(h.fed, "b", 1, UpdateKind.DELTA, _f32(DELTAS["b"]), 3)
        with pytest.raises(WrongRoundError):  # an unmask answer while keys are collected
            await h.fed.secagg_step(SecAggStep("b", 1, "cluster-0", ciphertexts={"a": b"x" * 8}))


@pytest.mark.asyncio
async def test_member_gone_after_its_shares_is_recovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # four members in one cluster: min_survivors 3, so one may drop after its shares
    monkeypatch.setitem(EXAMPLES, "d", 2)
    monkeypatch.setitem(DELTAS, "d", {"prompt.global": [3.0, 0.0], "prompt.cluster": [4.0]})
    monkeypatch.setitem(ACCURACY, "d", 0.5)
    async with federation(
        tmp_path, secure_aggregation=SECURE, min_clients=3, expected_clients=4
    ) as h:
        h.clustering.table = dict.fromkeys("abcd", 0)
        run = h.start()
        clients = {c: SecureClient(h.fed, c, kill_after_shares=(c == "c")) for c in "abcd"}
        for client in clients.values():
            await h.connect(client)
        await asyncio.wait_for(run, TIMEOUT_S)
        (record,) = h.state.rounds()
        assert record.status == "completed"
        assert record.summary["secagg_dropped"] == 1
        assert record.summary["secagg_recovered"] == 1
        saved = h.models.load(1, expected=h.state.snapshots()[1])
        # a, b and d: global [1,2] + (1*[4,8] + 3*[0,4] + 2*[3,0])/6, cluster 10 + 28/6
        np.testing.assert_allclose(
            saved.global_tensors["prompt.global"], [1 + 10 / 6, 2 + 20 / 6], rtol=1e-6
        )
        np.testing.assert_allclose(saved.for_cluster(0)["prompt.cluster"], [10 + 28 / 6])
