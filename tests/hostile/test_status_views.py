"""GetStatus by certificate, and bounded for any input.

A silo certificate sees its own client record and its own per-round records plus
federation-level aggregates, never another silo's metadata, sample count or metrics; the
operator certificate (``fedprompt certs --operator``) sees everything; a plaintext
coordinator has no identities and shows everything to everyone. With every client field
at its maximum, many clients and many rounds, every answer stays under the 2 MiB message
limit (a page, flagged ``truncated``), and paging reads the whole status back.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from fedprompt.client_input import MAX_METADATA_BYTES, canonical_metadata_json, parse_metadata
from fedprompt.server import DEFAULT_MAX_MESSAGE_BYTES, create_channel
from fedprompt.status_pages import read_full_status_async
from fedprompt.tls import TlsConfig
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_coordinator.domain import ClientRoundRecord, RoundRecord

Code = grpc.StatusCode
TIMEOUT = 30.0
SILO = coordinator_pb2.STATUS_VIEW_SILO
FULL = coordinator_pb2.STATUS_VIEW_FULL


def _join(client_id: str, *, metadata: str, fingerprint: str = "fp", **caps: str) -> Any:
    return coordinator_pb2.JoinRequest(
        client_id=client_id,
        metadata_json=metadata,
        capabilities=common_pb2.ClientCapabilities(
            model_fingerprint=fingerprint, strategy="clustered", **caps
        ),
        num_train_examples=1000 + len(client_id),
    )


def _record(round_id: int, clients: list[str], *, metrics: dict[str, float]) -> RoundRecord:
    return RoundRecord(
        round=round_id,
        status="completed",
        started_unix=1.0,
        finished_unix=2.0,
        num_clusters=len(clients),
        clients=tuple(
            ClientRoundRecord(
                client_id=c,
                cluster_id=i,
                num_examples=1000 + i,
                update_accepted=True,
                bytes_up=10,
                bytes_down=20,
                train_metrics=dict(metrics),
                eval_metrics=dict(metrics),
            )
            for i, c in enumerate(clients)
        ),
        summary={
            "accuracy_mean": 0.5,
            "participants": float(len(clients)),
            **{f"cluster_{i}_accuracy_mean": 0.5 for i in range(len(clients))},
        },
    )


async def _status(channel: grpc.aio.Channel, **page: Any) -> coordinator_pb2.GetStatusResponse:
    return await coordinator_pb2_grpc.CoordinatorStub(channel).GetStatus(
        coordinator_pb2.GetStatusRequest(**page), timeout=TIMEOUT
    )


@pytest.mark.asyncio
async def test_a_silo_sees_itself_and_aggregates_the_operator_everything(
    serve_hostile: Any,
) -> None:
    silos = ("honest-a", "honest-b", "mallory")
    async with serve_hostile() as coordinator:
        for silo in silos:
            async with coordinator.channel(silo) as channel:
                meta = json.dumps({"site": f"secret-site-of-{silo}"})
                await coordinator.stub(channel).Join(_join(silo, metadata=meta), timeout=TIMEOUT)
        coordinator.state.record_round(_record(1, list(silos), metrics={"accuracy": 0.25}))

        async with coordinator.channel("mallory") as channel:
            seen = await _status(channel)
        assert seen.view == SILO
        assert [c.client_id for c in seen.clients] == ["mallory"]
        assert seen.clients[0].metadata_json == '{"site": "secret-site-of-mallory"}'
        assert (seen.clients_total, seen.next_clients_after, seen.truncated) == (3, "", False)
        (summary,) = seen.rounds
        assert [c.client_id for c in summary.clients] == ["mallory"]
        assert summary.summary["accuracy_mean"] == 0.5  # federation-level aggregates stay
        assert not [k for k in summary.summary if k.startswith("cluster_")]
        wire = seen.SerializeToString()
        for other in ("honest-a", "honest-b"):
            assert other.encode() not in wire  # no id, metadata, count or metric of others
        assert b"secret-site-of-honest" not in wire

        async with coordinator.channel("operator") as channel:
            full = await _status(channel)
        assert full.view == FULL
        assert [c.client_id for c in full.clients] == list(silos)
        assert [c.client_id for c in full.rounds[0].clients] == list(silos)
        assert "cluster_0_accuracy_mean" in full.rounds[0].summary

        # the coordinator's own certificate is no operator: it gets a silo view of nobody
        async with coordinator.channel("coordinator") as channel:
            service = await _status(channel)
        assert (service.view, list(service.clients), service.clients_total) == (SILO, [], 3)
        assert all(len(r.clients) == 0 for r in service.rounds)
        # nor is the clusterer's (it may dial, for its health probe)
        async with coordinator.channel("clusterer") as channel:
            assert list((await _status(channel)).clients) == []


@pytest.mark.asyncio
async def test_plaintext_has_no_identities_and_every_caller_sees_everything(
    serve_hostile: Any,
) -> None:
    async with (
        serve_hostile(tls=TlsConfig(insecure=True)) as coordinator,
        create_channel(f"127.0.0.1:{coordinator.port}") as channel,
    ):
        stub = coordinator.stub(channel)
        for silo in ("a", "b"):
            await stub.Join(_join(silo, metadata="{}"), timeout=TIMEOUT)
        status = await _status(channel)
    assert status.view == FULL and [c.client_id for c in status.clients] == ["a", "b"]


def _maximal_metadata() -> str:
    """The largest metadata document the validator accepts: 64 fields, near 16 KiB."""
    keys = [f"k{i:02d}" + "x" * 61 for i in range(64)]
    length = 256
    while True:
        text = canonical_metadata_json({k: "v" * length for k in keys})
        if len(text.encode()) <= MAX_METADATA_BYTES:
            parse_metadata(text)
            return text
        length -= 1


@pytest.mark.asyncio
async def test_maximal_inputs_keep_every_answer_under_the_limit_and_paging_reads_them_all(
    serve_hostile: Any,
) -> None:
    clients = [f"{i:03d}-" + "c" * 124 for i in range(101)]  # 128-char ids, > one page
    metadata = _maximal_metadata()
    metrics = {f"{i:02d}" + "m" * 62: 1.0 + i for i in range(64)}  # 64 names of 64 chars
    rounds = 4  # more than one page of rounds (3 here, to keep the test short)
    async with (
        serve_hostile(tls=TlsConfig(insecure=True), status_page_rounds=3) as coordinator,
        create_channel(f"127.0.0.1:{coordinator.port}") as channel,
    ):
        stub = coordinator.stub(channel)
        for cid in clients:
            request = _join(
                cid, metadata=metadata, fingerprint="f" * 256, device="d" * 256,
                model_name="n" * 256,
            )  # fmt: skip
            await stub.Join(request, timeout=TIMEOUT)
        for r in range(1, rounds + 1):
            coordinator.state.record_round(_record(r, clients, metrics=metrics))
        first = await _status(channel)
        assert first.ByteSize() <= DEFAULT_MAX_MESSAGE_BYTES
        assert first.truncated and first.next_clients_after
        assert 0 < len(first.clients) <= 100 and first.clients_total == len(clients)
        assert first.round_records_total == rounds

        sizes: list[int] = []

        async def get(request: coordinator_pb2.GetStatusRequest) -> Any:
            answer = await stub.GetStatus(request, timeout=TIMEOUT)
            sizes.append(answer.ByteSize())
            return answer

        whole = await read_full_status_async(get)
    assert max(sizes) <= DEFAULT_MAX_MESSAGE_BYTES
    assert sum(sizes) > 2 * DEFAULT_MAX_MESSAGE_BYTES  # the whole status is far over one answer
    assert [c.client_id for c in whole.clients] == clients
    assert [r.round for r in whole.rounds] == list(range(1, rounds + 1))
    for record in whole.rounds:
        assert [c.client_id for c in record.clients] == clients
        assert dict(record.clients[0].train_metrics) == metrics
    assert {c.metadata_json for c in whole.clients} == {metadata}


@pytest.mark.asyncio
async def test_absurd_paging_fields_are_refused_or_clamped_and_the_page_stays_bounded(
    serve_hostile: Any,
) -> None:
    """Every GetStatusRequest field at its extreme: a clear status code or a bounded page."""
    silos = ["honest-a", "mallory"]
    async with serve_hostile() as coordinator:
        for silo in silos:
            async with coordinator.channel(silo) as channel:
                await coordinator.stub(channel).Join(_join(silo, metadata="{}"), timeout=TIMEOUT)
        for r in range(1, 4):
            coordinator.state.record_round(_record(r, silos, metrics={"accuracy": 0.5}))
        async with coordinator.channel("operator") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _status(channel, clients_after="z" * 129)
            assert refused.value.code() == Code.INVALID_ARGUMENT
            assert "clients_after" in (refused.value.details() or "")

            huge = await _status(channel, max_clients=2**32 - 1, max_round_records=2**32 - 1)
            assert [c.client_id for c in huge.clients] == silos  # clamped to the page size
            assert [r.round for r in huge.rounds] == [1, 2, 3]
            assert huge.ByteSize() < DEFAULT_MAX_MESSAGE_BYTES

            beyond = await _status(channel, first_round_record=2**32 - 1)
            assert (list(beyond.rounds), beyond.round_records_total) == ([], 3)
            assert beyond.first_round_record == 3  # clamped to the end, not an error

            past_everyone = await _status(channel, clients_after="\U0010ffff" * 128)
            assert (list(past_everyone.clients), past_everyone.next_clients_after) == ([], "")

        # the federation is unharmed: an honest silo still joins and reads its own record
        async with coordinator.channel("honest-b") as channel:
            await coordinator.stub(channel).Join(_join("honest-b", metadata="{}"), timeout=TIMEOUT)
            assert [c.client_id for c in (await _status(channel)).clients] == ["honest-b"]
