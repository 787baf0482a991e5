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


def _status(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status a refused SecAggStep gets (the servicer maps the error's code)."""
    from fedprompt.errors import STATUS_BY_CODE, FedPromptError

    assert isinstance(exc, FedPromptError), repr(exc)
    return STATUS_BY_CODE[exc.code]


def _refused(secure: SecureRound, request: coordinator_pb2.SecAggStepRequest) -> grpc.StatusCode:
    """Send ``request`` as the servicer would (proto -> domain -> round); it must be refused."""
    try:
        secure.add_step(serde.secagg_step_from_proto(request))
    except Exception as exc:  # noqa: BLE001 - the refusal is what is checked
        return _status(exc)
    raise AssertionError(f"accepted a hostile SecAggStep: {request}")


@pytest.mark.asyncio
async def test_hostile_secagg_fields_are_refused_and_the_honest_round_goes_on() -> None:
    """A member (m4) sends every field of SecAggStep wrong: keys of the wrong size or of order
    zero, another member's key, ciphertexts to another silo that is no neighbour, of the
    wrong size or too few, unmask shares of secrets it does not hold or malformed, answers
    for another group, round or stage. Each is refused with its status code and changes
    nothing: the three honest members' sum is released exactly."""
    config = CoordinatorConfig(strategy="fedavg", secure_aggregation={"enabled": True})
    members = {"m1": 0, "m2": 0, "m3": 0, "m4": 0, "x1": 1, "x2": 1}
    secure = SecureRound(
        round_id=1,
        participants=members,
        spec=SPEC,
        global_names=("prompt.global",),
        examples=dict.fromkeys(members, 5),
        plan=SecurePlan.from_config(config, mechanisms=None),
    )
    agents = {c: ClientAgent(_Runtime(c), coordinator="127.0.0.1:1") for c in members}  # type: ignore[arg-type]
    client = _RecordingClient()
    honest = [c for c in members if c != "m4"]
    inv, pre = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION

    def step(cid: str, group: str = "cluster-0", rnd: int = 1, **kw: Any) -> Any:
        return coordinator_pb2.SecAggStepRequest(client_id=cid, round=rnd, group=group, **kw)

    def keys(c_pk: bytes, s_pk: bytes) -> coordinator_pb2.SecAggPublicKeys:
        return coordinator_pb2.SecAggPublicKeys(c_pk=c_pk, s_pk=s_pk)

    async def answer(kind: TaskKind, tasks: dict[str, SecAggTask], who: list[str]) -> None:
        for cid in who:
            if cid not in tasks:
                continue
            before = len(client.sent)
            await agents[cid]._secagg_step(client, _task(kind, tasks[cid]))  # type: ignore[arg-type]
            for request in client.sent[before:]:
                secure.add_step(serde.secagg_step_from_proto(request))

    # --- keys: wrong sizes, a low-order point, oversized, another group/round/stage
    key_tasks = secure.keys_tasks()
    await answer(TaskKind.SECAGG_KEYS, key_tasks, honest)
    good = client.sent[0].keys  # m1's keys
    assert _refused(secure, step("m4", keys=keys(b"c" * 31, b"s" * 32))) == inv
    assert _refused(secure, step("m4", keys=keys(b"c" * 32, b"s" * (1 << 20)))) == inv
    assert _refused(secure, step("m4", keys=keys(bytes(32), b"s" * 32))) == inv  # order 0
    assert _refused(secure, step("m4", keys=keys(good.c_pk, good.s_pk))) == inv  # m1's key
    fresh = keys(b"c" * 32, b"s" * 32)
    assert _refused(secure, step("m4", group="cluster-1", keys=fresh)) == pre  # not its group
    assert _refused(secure, step("m4", rnd=2, keys=fresh)) == pre
    assert _refused(secure, step("m4", keys=good)) == inv  # names m1 as the member
    assert _refused(secure, step("m1", keys=good)) == inv  # twice
    shares = coordinator_pb2.SecAggShares()
    assert _refused(secure, step("m4", shares=shares)) == pre  # the keys stage is open
    # --- shares: m4 never sent usable keys, so whatever it sends now is refused
    share_tasks = secure.open_shares()
    assert "m4" not in share_tasks
    forged = coordinator_pb2.SecAggShares()
    forged.ciphertexts.add(recipient="x1", ciphertext=b"z" * 200)  # another cluster's silo
    assert _refused(secure, step("m4", shares=forged)) in (inv, pre)
    await answer(TaskKind.SECAGG_SHARES, share_tasks, honest)
    short = coordinator_pb2.SecAggShares()
    short.ciphertexts.add(recipient="m2", ciphertext=b"z" * 7)
    assert _refused(secure, step("m1", shares=short)) == inv  # twice, and malformed
    # --- masked inputs from the honest members, then unmask
    for cid, info in secure.open_training().items():
        member = agents[cid]._secure
        assert member is not None
        encoding = member.receive(serde.secagg_task_to_proto(info))
        delta = {"prompt.global": np.full((2, 3), 0.01 * (1 + honest.index(cid)), np.float32)}
        masked = member.mask(delta, encoding, num_examples=5, cluster_id=members[cid], centroids={})
        secure.add_masked(cid, masked)
    unmask_tasks = secure.open_unmask()
    assert "m4" not in unmask_tasks
    bogus = coordinator_pb2.SecAggUnmaskReply()
    bogus.b_shares.add(owner="m2", share=b"\x00" * 70)
    assert _refused(secure, step("m4", unmask=bogus)) in (inv, pre)
    await answer(TaskKind.SECAGG_UNMASK, unmask_tasks, honest)
    again = coordinator_pb2.SecAggUnmaskReply()
    again.b_shares.add(owner="m2", share=b"\x01" * 70)
    assert _refused(secure, step("m1", unmask=again)) == inv  # a second answer
    # --- the honest federation goes on: both groups released from their honest members
    from fedprompt_coordinator.domain import FederationModel

    base = {"prompt.global": np.zeros((2, 3), np.float32)}
    model = FederationModel(global_tensors=base, cluster_tensors={}, cluster_template={})
    out = secure.aggregate(model)
    assert sorted(secure.released) == [0, 1]
    # examples-weighted mean of 0.01·(1..5) over the five honest members
    expected = np.mean([0.01 * (1 + i) for i in range(len(honest))])
    np.testing.assert_allclose(out.global_tensors["prompt.global"], expected, rtol=1e-6)
