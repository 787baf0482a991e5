"""Secure aggregation against a curious coordinator and against callers of SecAggStep.

(a) A curious coordinator asks a live member for both secrets of a live member (its self-mask
    seed and its mask-agreement key): in one unmask request naming it both surviving and
    dropped, or in a second request after the member answered one. The client agent answers
    neither (a warning, no SecAggStep): the masked input of a live member stays masked.
(b) SecAggStep over mutual TLS: another silo's identity is PERMISSION_DENIED, a step without
    a secure round FAILED_PRECONDITION, a request without a step INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest

from fedprompt.v1 import common_pb2, coordinator_pb2
from fedprompt_client_agent.agent import ClientAgent
from fedprompt_coordinator import serde
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.domain import SecAggTask, TaskKind, TensorSpec
from fedprompt_coordinator.secure_round import SecurePlan, SecureRound
from tests.hostile.conftest import ServeCoordinator

MEMBERS = {"m1": 0, "m2": 0, "m3": 0, "m4": 0}
SPEC = (TensorSpec("prompt.global", "F32", (2, 3)),)


class _RecordingClient:
    """Stands in for CoordinatorClient: records the SecAggStep requests the agent sends."""

    def __init__(self) -> None:
        self.sent: list[coordinator_pb2.SecAggStepRequest] = []

    async def secagg_step(self, request: coordinator_pb2.SecAggStepRequest) -> None:
        self.sent.append(request)


class _Runtime:
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id


def _task(kind: TaskKind, info: SecAggTask) -> coordinator_pb2.Task:
    task = coordinator_pb2.Task(kind=coordinator_pb2.TaskKind.Value(f"TASK_KIND_{kind.name}"))
    task.round = 1
    task.secure_aggregation.CopyFrom(serde.secagg_task_to_proto(info))
    return task


@pytest.mark.asyncio
async def test_curious_coordinator_gets_neither_secret_twice() -> None:
    config = CoordinatorConfig(strategy="fedavg", secure_aggregation={"enabled": True})
    secure = SecureRound(
        round_id=1,
        participants=MEMBERS,
        spec=SPEC,
        global_names=("prompt.global",),
        examples=dict.fromkeys(MEMBERS, 5),
        plan=SecurePlan.from_config(config, mechanisms=None),
    )
    agents = {c: ClientAgent(_Runtime(c), coordinator="127.0.0.1:1") for c in MEMBERS}  # type: ignore[arg-type]
    client = _RecordingClient()

    async def answer(kind: TaskKind, tasks: dict[str, SecAggTask]) -> None:
        for cid, info in tasks.items():
            before = len(client.sent)
            await agents[cid]._secagg_step(client, _task(kind, info))  # type: ignore[arg-type]
            for request in client.sent[before:]:
                secure.add_step(serde.secagg_step_from_proto(request))

    await answer(TaskKind.SECAGG_KEYS, secure.keys_tasks())
    await answer(TaskKind.SECAGG_SHARES, secure.open_shares())
    for cid, info in secure.open_training().items():
        member = agents[cid]._secure
        assert member is not None
        encoding = member.receive(serde.secagg_task_to_proto(info))
        delta = {"prompt.global": np.full((2, 3), 0.01, np.float32)}
        masked = member.mask(delta, encoding, num_examples=5, cluster_id=0, centroids={})
        secure.add_masked(cid, masked)
    honest = secure.open_unmask()
    victim, asked = "m2", "m1"  # both live; m1 holds shares of m2's secrets

    # one request naming the victim both surviving and dropped: refused, nothing sent
    both = SecAggTask(
        group="cluster-0",
        unmask=type(honest[asked].unmask)(  # type: ignore[misc]
            dropped=(victim,), survivors=tuple(sorted(MEMBERS))
        ),
    )
    sent = len(client.sent)
    await agents[asked]._secagg_step(client, _task(TaskKind.SECAGG_UNMASK, both))  # type: ignore[arg-type]
    assert len(client.sent) == sent

    # the honest request is answered once (the victim's self-mask seed share) ...
    await agents[asked]._secagg_step(client, _task(TaskKind.SECAGG_UNMASK, honest[asked]))  # type: ignore[arg-type]
    assert len(client.sent) == sent + 1
    reply = client.sent[-1].unmask
    assert victim in {s.owner for s in reply.b_shares}
    assert not reply.s_sk_shares
    # ... and a second request claiming the victim dropped gets nothing at all
    dropped = SecAggTask(
        group="cluster-0",
        unmask=type(honest[asked].unmask)(  # type: ignore[misc]
            dropped=(victim,), survivors=tuple(c for c in sorted(MEMBERS) if c != victim)
        ),
    )
    await agents[asked]._secagg_step(client, _task(TaskKind.SECAGG_UNMASK, dropped))  # type: ignore[arg-type]
    assert len(client.sent) == sent + 1


async def _secagg_code(stub: Any, request: coordinator_pb2.SecAggStepRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SecAggStep(request, timeout=10)
    code: grpc.StatusCode = err.value.code()
    return code


@pytest.mark.asyncio
async def test_secagg_step_status_codes(serve_hostile: ServeCoordinator) -> None:
    async with serve_hostile(secure_aggregation={"enabled": True}) as served:
        keys = coordinator_pb2.SecAggPublicKeys(c_pk=b"c" * 32, s_pk=b"s" * 32)
        async with served.channel("mallory") as channel:
            stub = served.stub(channel)
            as_other = coordinator_pb2.SecAggStepRequest(
                client_id="honest-a", round=1, group="cluster-0", keys=keys
            )
            assert await _secagg_code(stub, as_other) == grpc.StatusCode.PERMISSION_DENIED
            no_step = coordinator_pb2.SecAggStepRequest(client_id="mallory", round=1)
            assert await _secagg_code(stub, no_step) == grpc.StatusCode.INVALID_ARGUMENT
        async with served.channel("honest-a") as channel:
            stub = served.stub(channel)
            await stub.Join(
                coordinator_pb2.JoinRequest(
                    client_id="honest-a",
                    num_train_examples=5,
                    capabilities=common_pb2.ClientCapabilities(
                        model_name="m", model_fingerprint="f/v1", strategy="clustered"
                    ),
                ),
                timeout=10,
            )
            own = coordinator_pb2.SecAggStepRequest(
                client_id="honest-a", round=1, group="cluster-0", keys=keys
            )
            assert await _secagg_code(stub, own) == grpc.StatusCode.FAILED_PRECONDITION
