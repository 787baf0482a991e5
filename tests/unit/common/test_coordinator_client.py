"""The shared coordinator client against a real in-process aio server on 127.0.0.1."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio

from fedprompt.chunking import ChunkAssembler
from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.coordinator_client import CoordinatorClient, UploadStatusLostError
from fedprompt.errors import CorruptPayloadError, WrongRoundError
from fedprompt.server import CLIENT_ID_METADATA_KEY, ServerHandle, create_channel, start_server
from fedprompt.transfer import chunk_from_proto, payload_info_from_proto, payload_messages
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

ROUND_START = {"prompt.global": np.arange(12, dtype=np.float32).reshape(3, 4)}
AGGREGATED = {"prompt.global": np.full((3, 4), 0.5, dtype=np.float32)}


def _inline(tensors: dict[str, np.ndarray]) -> coordinator_pb2.InlineModel:
    data = encode_tensors(tensors)
    return coordinator_pb2.InlineModel(data=data, sha256=hashlib.sha256(data).digest())


class _Coordinator(coordinator_pb2_grpc.CoordinatorServicer):
    """Records what a client sent; serves one inline TRAIN and one fetched EVALUATE task."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (rpc, client id in the call metadata)
        self.joined: list[coordinator_pb2.JoinRequest] = []
        self.uploads: list[tuple[coordinator_pb2.UpdateHeader, bytes]] = []
        self.reports: list[coordinator_pb2.ReportMetricsRequest] = []
        self.fetched: list[coordinator_pb2.FetchModelRequest] = []
        self.headerless_fetch = False
        self.refuse_uploads = False

    def _record(self, rpc: str, context: Any) -> None:
        metadata = dict(context.invocation_metadata())
        self.calls.append((rpc, metadata.get(CLIENT_ID_METADATA_KEY, "")))

    async def Join(  # noqa: N802 - gRPC method name
        self, request: coordinator_pb2.JoinRequest, context: Any
    ) -> coordinator_pb2.JoinResponse:
        self._record("Join", context)
        self.joined.append(request)
        return coordinator_pb2.JoinResponse(
            current_round=1, total_rounds=2, initial_model_requested=True
        )

    async def StreamTasks(  # noqa: N802 - gRPC method name
        self, request: coordinator_pb2.StreamTasksRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.Task]:
        self._record("StreamTasks", context)
        yield coordinator_pb2.Task(
            kind=coordinator_pb2.TASK_KIND_TRAIN, round=1, model=_inline(ROUND_START)
        )
        yield coordinator_pb2.Task(kind=coordinator_pb2.TASK_KIND_EVALUATE, round=1)
        yield coordinator_pb2.Task(kind=coordinator_pb2.TASK_KIND_FINISHED, message="done")

    async def FetchModel(  # noqa: N802 - gRPC method name
        self, request: coordinator_pb2.FetchModelRequest, context: Any
    ) -> AsyncIterator[coordinator_pb2.FetchModelResponse]:
        self._record("FetchModel", context)
        self.fetched.append(request)
        header, chunks = payload_messages(encode_tensors(AGGREGATED))
        if not self.headerless_fetch:
            yield coordinator_pb2.FetchModelResponse(header=header)
        for chunk in chunks:
            yield coordinator_pb2.FetchModelResponse(chunk=chunk)

    async def UploadUpdate(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[coordinator_pb2.UploadUpdateRequest], context: Any
    ) -> coordinator_pb2.UploadUpdateResponse:
        self._record("UploadUpdate", context)
        if self.refuse_uploads:  # refuse at the header, while the client is still writing
            await anext(aiter(request_iterator))
            raise WrongRoundError("round 1 is not accepting updates")
        header: coordinator_pb2.UpdateHeader | None = None
        assembler: ChunkAssembler | None = None
        async for message in request_iterator:
            if message.WhichOneof("message") == "header":
                header = message.header
                assembler = ChunkAssembler(
                    payload_info_from_proto(header.payload), max_total_bytes=1 << 20
                )
            else:
                assert assembler is not None
                assembler.add(chunk_from_proto(message.chunk))
        assert header is not None and assembler is not None
        self.uploads.append((header, assembler.finish()))
        return coordinator_pb2.UploadUpdateResponse(accepted=True)

    async def ReportMetrics(  # noqa: N802 - gRPC method name
        self, request: coordinator_pb2.ReportMetricsRequest, context: Any
    ) -> coordinator_pb2.ReportMetricsResponse:
        self._record("ReportMetrics", context)
        self.reports.append(request)
        return coordinator_pb2.ReportMetricsResponse()


@pytest_asyncio.fixture
async def coordinator() -> AsyncIterator[tuple[_Coordinator, ServerHandle]]:
    servicer = _Coordinator()
    handle = await start_server(
        register=lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, s),
        service_names=["fedprompt.v1.Coordinator"],
        address="127.0.0.1:0",
    )
    try:
        yield servicer, handle
    finally:
        await handle.stop(0)


@pytest.mark.asyncio
async def test_one_client_joins_trains_evaluates_and_reports(
    coordinator: tuple[_Coordinator, ServerHandle],
) -> None:
    servicer, handle = coordinator
    async with create_channel(f"127.0.0.1:{handle.port}") as channel:
        client = CoordinatorClient(channel, "silo-a")
        joined = await client.join(
            metadata_json='{"region": "north"}',
            capabilities=common_pb2.ClientCapabilities(strategy="fedavg"),
            num_train_examples=7,
        )
        assert joined.initial_model_requested and joined.total_rounds == 2
        initial = encode_tensors(ROUND_START)
        await client.upload(
            round_id=0,
            kind=coordinator_pb2.UPDATE_KIND_INITIAL,
            payload=initial,
            num_examples=0,
        )
        seen: list[int] = []
        async for task in client.tasks():
            seen.append(task.kind)
            if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                model = await client.task_model(task, coordinator_pb2.MODEL_STAGE_ROUND_START)
                np.testing.assert_array_equal(model["prompt.global"], ROUND_START["prompt.global"])
                assert model["prompt.global"].flags.writeable  # owned, not a view of the task
                delta = encode_tensors({"prompt.global": np.ones((3, 4), np.float32)})
                await client.upload(
                    round_id=task.round,
                    kind=coordinator_pb2.UPDATE_KIND_DELTA,
                    payload=delta,
                    num_examples=7,
                    train_metrics={"train_loss": 0.25},
                )
            elif task.kind == coordinator_pb2.TASK_KIND_EVALUATE:
                payload = await client.task_payload(task, coordinator_pb2.MODEL_STAGE_AGGREGATED)
                np.testing.assert_array_equal(
                    decode_tensors(payload)["prompt.global"], AGGREGATED["prompt.global"]
                )
                await client.report_metrics(
                    round_id=task.round,
                    phase=coordinator_pb2.METRICS_PHASE_EVALUATE,
                    metrics={"accuracy": 0.75},
                )
    assert seen == [
        coordinator_pb2.TASK_KIND_TRAIN,
        coordinator_pb2.TASK_KIND_EVALUATE,
        coordinator_pb2.TASK_KIND_FINISHED,
    ]
    # every call names the client in its metadata; the inline model needed no download
    assert [rpc for rpc, _ in servicer.calls] == [
        "Join",
        "UploadUpdate",
        "StreamTasks",
        "UploadUpdate",
        "FetchModel",
        "ReportMetrics",
    ]
    assert {client_id for _, client_id in servicer.calls} == {"silo-a"}
    assert servicer.joined[0].client_id == "silo-a" and servicer.joined[0].num_train_examples == 7
    assert servicer.joined[0].metadata_json == '{"region": "north"}'
    (first, first_payload), (delta_header, delta_payload) = servicer.uploads
    assert first.kind == coordinator_pb2.UPDATE_KIND_INITIAL and first_payload == initial
    assert (delta_header.client_id, delta_header.round, delta_header.num_examples) == (
        "silo-a",
        1,
        7,
    )
    assert dict(delta_header.train_metrics) == {"train_loss": 0.25}
    assert delta_header.payload.sha256 == hashlib.sha256(delta_payload).digest()
    assert servicer.fetched[0].stage == coordinator_pb2.MODEL_STAGE_AGGREGATED
    assert servicer.fetched[0].round == 1 and servicer.fetched[0].client_id == "silo-a"
    assert servicer.reports[0].metrics["accuracy"] == pytest.approx(0.75)


@pytest.mark.asyncio
async def test_update_header_describes_the_payload(
    coordinator: tuple[_Coordinator, ServerHandle],
) -> None:
    _, handle = coordinator
    async with create_channel(f"127.0.0.1:{handle.port}") as channel:
        client = CoordinatorClient(channel, "silo-b")
        payload = encode_tensors(AGGREGATED)
        header = client.update_header(
            round_id=3, kind=coordinator_pb2.UPDATE_KIND_DELTA, payload=payload, num_examples=2
        )
        assert header.client_id == "silo-b" and header.round == 3
        assert header.payload.total_bytes == len(payload)
        response = await client.send_update(header, payload)
        assert response.accepted


@pytest.mark.asyncio
async def test_model_failures(coordinator: tuple[_Coordinator, ServerHandle]) -> None:
    servicer, handle = coordinator
    async with create_channel(f"127.0.0.1:{handle.port}") as channel:
        client = CoordinatorClient(channel, "silo-c", max_model_bytes=1 << 20)
        bad = coordinator_pb2.Task(
            kind=coordinator_pb2.TASK_KIND_TRAIN,
            round=1,
            model=coordinator_pb2.InlineModel(data=b"xyz", sha256=b"\x00" * 32),
        )
        with pytest.raises(CorruptPayloadError):
            await client.task_payload(bad, coordinator_pb2.MODEL_STAGE_ROUND_START)
        servicer.headerless_fetch = True
        with pytest.raises(RuntimeError, match="silo-c: model download for round 4 carried no"):
            await client.fetch_payload(4, coordinator_pb2.MODEL_STAGE_AGGREGATED)


@pytest.mark.asyncio
async def test_calls_to_nobody_fail_with_the_grpc_status() -> None:
    async with create_channel("127.0.0.1:1") as channel:
        client = CoordinatorClient(channel, "silo-d", call_timeout_s=0.5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.report_metrics(
                round_id=1, phase=coordinator_pb2.METRICS_PHASE_EVALUATE, metrics={}
            )
    assert caught.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


@pytest.mark.asyncio
async def test_an_upload_refused_mid_stream_never_surfaces_as_internal(
    coordinator: tuple[_Coordinator, ServerHandle],
) -> None:
    servicer, handle = coordinator
    servicer.refuse_uploads = True
    payload = encode_tensors({"x": np.zeros(6 * 1024 * 1024 // 4, np.float32)})  # 6 chunks
    outcomes = set()
    async with create_channel(f"127.0.0.1:{handle.port}") as channel:
        client = CoordinatorClient(channel, "silo-a")
        for _ in range(20):
            try:
                await client.upload(
                    round_id=1, kind=coordinator_pb2.UPDATE_KIND_DELTA, payload=payload,
                    num_examples=3,
                )  # fmt: skip
            except UploadStatusLostError:
                outcomes.add("status lost")
            except grpc.aio.AioRpcError as exc:
                outcomes.add(exc.code().name)
    # the server's own code, or the lost-status error the agent treats as a refusal
    assert outcomes <= {"FAILED_PRECONDITION", "status lost"}, outcomes
    assert outcomes
