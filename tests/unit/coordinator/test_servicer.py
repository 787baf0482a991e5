"""Tests of the Coordinator service over a real aio server on loopback, with real stubs.

The server is wired exactly like ``fedprompt_coordinator.__main__.serve`` (Federation,
CoordinatorServicer, TrafficInterceptor, ``fedprompt.server.start_server``), with its state in
``tmp_path``. Every bad request must be answered with a clear status code and message while
the coordinator keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedprompt.chunking import crc32
from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.server import CLIENT_ID_METADATA_KEY, MIB, create_channel, start_server
from fedprompt.transfer import payload_messages
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_coordinator import upload_intake as upload_intake_module
from fedprompt_coordinator.__main__ import open_federation
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.federation import Federation
from fedprompt_coordinator.servicer import CoordinatorServicer, add_coordinator_servicer_to_server
from fedprompt_coordinator.traffic import TrafficInterceptor

SERVICE = "fedprompt.v1.Coordinator"
FINGERPRINT = "fp-tiny"
MAX_UPDATE_BYTES = 64 * 1024
RPC_TIMEOUT_S = 10.0
Code = grpc.StatusCode
#: Plain n-weighted FedAvg (no per-client clipping, no share cap): hand-computable rounds.
PLAIN_FEDAVG = {"clipping": {"mode": "off"}, "max_weight_share": 1.0, "max_weight_multiple": None}

INITIAL = {
    "prompt.global": np.zeros((2, 3), dtype=np.float32),
    "prompt.cluster": np.zeros((1, 3), dtype=np.float32),
    "head.weight": np.zeros((2, 3), dtype=np.float32),
}


def _delta(value: float) -> dict[str, np.ndarray]:
    return {k: np.full(v.shape, value, dtype=np.float32) for k, v in INITIAL.items()}


def _wire(message: Any) -> int:
    """Bytes one message takes inside a gRPC stream (serialized size + 5-byte prefix)."""
    return int(message.ByteSize()) + 5


def _header(
    client_id: str,
    round_id: int,
    kind: int,
    payload: bytes,
    *,
    num_examples: int = 10,
    **payload_fields: Any,
) -> coordinator_pb2.UploadUpdateRequest:
    header, _ = payload_messages(payload)
    for name, value in payload_fields.items():
        setattr(header, name, value)
    return coordinator_pb2.UploadUpdateRequest(
        header=coordinator_pb2.UpdateHeader(
            client_id=client_id,
            round=round_id,
            kind=kind,  # type: ignore[arg-type]
            num_examples=num_examples,
            payload=header,
        )
    )


def _chunks(payload: bytes) -> list[coordinator_pb2.UploadUpdateRequest]:
    _, chunks = payload_messages(payload)
    return [coordinator_pb2.UploadUpdateRequest(chunk=c) for c in chunks]


@dataclass
class Client:
    """One silo speaking the protocol through real stubs, counting its own bytes per round."""

    stub: coordinator_pb2_grpc.CoordinatorStub
    client_id: str
    num_examples: int = 10
    bucket: int = 0
    bytes: dict[int, list[int]] = field(default_factory=dict)
    stream: Any = None
    train_tasks: list[coordinator_pb2.Task] = field(default_factory=list)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((CLIENT_ID_METADATA_KEY, self.client_id),)

    def _count(self, *, up: int = 0, down: int = 0) -> None:
        cell = self.bytes.setdefault(self.bucket, [0, 0])
        cell[0] += up
        cell[1] += down

    async def join(self, **fields: Any) -> coordinator_pb2.JoinResponse:
        request = coordinator_pb2.JoinRequest(
            client_id=self.client_id,
            metadata_json=json.dumps({"site": self.client_id}),
            capabilities=common_pb2.ClientCapabilities(
                device="cpu",
                model_name="tiny",
                model_fingerprint=FINGERPRINT,
                trainable_tensors=sorted(INITIAL),
                strategy="clustered",
            ),
            num_train_examples=self.num_examples,
        )
        for name, value in fields.items():
            if name == "model_fingerprint":
                request.capabilities.model_fingerprint = value
            else:
                setattr(request, name, value)
        self._count(up=_wire(request))
        response = await self.stub.Join(request, metadata=self.metadata, timeout=RPC_TIMEOUT_S)
        self._count(down=_wire(response))
        return response

    async def send(
        self, messages: Iterable[coordinator_pb2.UploadUpdateRequest]
    ) -> coordinator_pb2.UploadUpdateResponse:
        """Stream raw upload messages (well-formed or not)."""
        sent = list(messages)

        async def requests() -> AsyncIterator[coordinator_pb2.UploadUpdateRequest]:
            for message in sent:
                yield message

        self._count(up=sum(_wire(m) for m in sent))
        response = await self.stub.UploadUpdate(
            requests(), metadata=self.metadata, timeout=RPC_TIMEOUT_S
        )
        self._count(down=_wire(response))
        return response

    async def upload(
        self, round_id: int, kind: int, tensors: dict[str, np.ndarray]
    ) -> coordinator_pb2.UploadUpdateResponse:
        payload = encode_tensors(tensors)
        n = 0 if kind == coordinator_pb2.UPDATE_KIND_INITIAL else self.num_examples
        return await self.send(
            [_header(self.client_id, round_id, kind, payload, num_examples=n), *_chunks(payload)]
        )

    async def upload_delta(
        self, round_id: int, value: float
    ) -> coordinator_pb2.UploadUpdateResponse:
        return await self.upload(round_id, coordinator_pb2.UPDATE_KIND_DELTA, _delta(value))

    def open_stream(self) -> None:
        request = coordinator_pb2.StreamTasksRequest(client_id=self.client_id)
        self.stream = self.stub.StreamTasks(request, metadata=self.metadata)
        self._count(up=_wire(request))

    async def next_task(self) -> coordinator_pb2.Task:
        task = await asyncio.wait_for(self.stream.read(), RPC_TIMEOUT_S)
        assert task is not grpc.aio.EOF, "task stream ended"
        self._count(down=_wire(task))
        return task

    async def fetch(self, round_id: int, stage: int) -> dict[str, np.ndarray]:
        request = coordinator_pb2.FetchModelRequest(
            client_id=self.client_id, round=round_id, stage=stage
        )
        call = self.stub.FetchModel(request, metadata=self.metadata, timeout=RPC_TIMEOUT_S)
        self._count(up=_wire(request))
        header, data = None, b""
        async for message in call:
            self._count(down=_wire(message))
            if message.WhichOneof("message") == "header":
                header = message.header
            else:
                assert message.chunk.crc32 == crc32(message.chunk.data)
                data += message.chunk.data
        assert header is not None and hashlib.sha256(data).digest() == header.sha256
        return decode_tensors(data)

    async def report(self, round_id: int, phase: int, metrics: dict[str, float]) -> None:
        request = coordinator_pb2.ReportMetricsRequest(
            client_id=self.client_id, round=round_id, phase=phase, metrics=metrics
        )
        self._count(up=_wire(request))
        response = await self.stub.ReportMetrics(
            request, metadata=self.metadata, timeout=RPC_TIMEOUT_S
        )
        self._count(down=_wire(response))


@dataclass
class Coordinator:
    federation: Federation
    port: int
    stub: coordinator_pb2_grpc.CoordinatorStub
    big_stub: coordinator_pb2_grpc.CoordinatorStub  # may send messages of up to 8 MiB
    health: health_pb2_grpc.HealthStub
    rounds: asyncio.Task[None]
    clients: list[Client] = field(default_factory=list)

    def client(self, client_id: str, *, num_examples: int = 10) -> Client:
        client = Client(self.stub, client_id, num_examples=num_examples)
        self.clients.append(client)
        return client

    async def status(self) -> coordinator_pb2.GetStatusResponse:
        return await self.stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=RPC_TIMEOUT_S)

    async def assert_serving(self, phase: int = common_pb2.ROUND_PHASE_TRAINING) -> None:
        """The coordinator still answers, its round task is alive and the phase is unchanged."""
        status = await self.status()
        assert status.phase == phase
        assert not self.rounds.done()
        check = await self.health.Check(
            health_pb2.HealthCheckRequest(service=SERVICE), timeout=RPC_TIMEOUT_S
        )
        assert check.status == health_pb2.HealthCheckResponse.SERVING


@pytest_asyncio.fixture
async def coordinator(tmp_path: Path) -> AsyncIterator[Coordinator]:
    async with _running_coordinator(tmp_path) as harness:
        yield harness


@contextlib.asynccontextmanager
async def _running_coordinator(tmp_path: Path, **overrides: Any) -> AsyncIterator[Coordinator]:
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "state_dir": tmp_path / "state",
        "rounds": 1,
        "strategy": "clustered",
        "min_clients": 2,
        "expected_clients": 2,
        "quorum_wait_s": 30.0,
        "round_deadline_s": 60.0,
        "eval_deadline_s": 60.0,
        "max_update_bytes": MAX_UPDATE_BYTES,
        "aggregation": PLAIN_FEDAVG,  # exact n-weighted means; clipping has its own tests
    }
    config = CoordinatorConfig(**{**settings, **overrides})
    # Wired like fedprompt_coordinator.__main__.serve (a plaintext server without identities).
    state, federation = open_federation(config)
    handle = await start_server(
        register=lambda s: add_coordinator_servicer_to_server(CoordinatorServicer(federation), s),
        service_names=[SERVICE],
        address=config.listen,
        interceptors=[TrafficInterceptor(federation.traffic)],
    )
    rounds = asyncio.create_task(federation.run(), name="rounds")
    target = f"127.0.0.1:{handle.port}"
    channel = create_channel(target)
    big_channel = create_channel(target, max_message_bytes=8 * MIB)
    harness = Coordinator(
        federation=federation,
        port=handle.port,
        stub=coordinator_pb2_grpc.CoordinatorStub(channel),
        big_stub=coordinator_pb2_grpc.CoordinatorStub(big_channel),
        health=health_pb2_grpc.HealthStub(channel),
        rounds=rounds,
    )
    try:
        yield harness
    finally:
        for client in harness.clients:
            if client.stream is not None:
                client.stream.cancel()
        await channel.close()
        await big_channel.close()
        await handle.stop(grace=0)
        rounds.cancel()
        done, _ = await asyncio.wait({rounds}, timeout=RPC_TIMEOUT_S)
        state.close()
        assert rounds in done, "the round task ignored its cancellation"


async def _open_round(coord: Coordinator) -> tuple[Client, Client]:
    """Join a and b, upload the initial model, open both task streams, read the TRAIN tasks."""
    a, b = coord.client("a", num_examples=1), coord.client("b", num_examples=3)
    assert (await a.join()).initial_model_requested
    response = await a.upload(0, coordinator_pb2.UPDATE_KIND_INITIAL, INITIAL)
    assert response.accepted and not response.duplicate
    assert not (await b.join()).initial_model_requested
    a.open_stream()
    b.open_stream()
    for client in (a, b):
        client.bucket = 1
        task = await client.next_task()
        client.train_tasks.append(task)
        assert (task.kind, task.round) == (coordinator_pb2.TASK_KIND_TRAIN, 1)
        assert [(s.name, s.dtype, list(s.shape)) for s in task.expected_update] == [
            ("head.weight", "F32", [2, 3]),
            ("prompt.cluster", "F32", [1, 3]),
            ("prompt.global", "F32", [2, 3]),
        ]
    return a, b


async def _expect(call: Awaitable[Any], code: grpc.StatusCode, fragment: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() is code, info.value.details()
    details = info.value.details() or ""
    assert fragment in details
    return details


async def _drain(call: Any) -> list[Any]:
    return [message async for message in call]


# ----------------------------------------------------------------------------- bad input

BadCall = Callable[[Coordinator, Client], Awaitable[Any]]
PAYLOAD = encode_tensors(_delta(0.5))


def _upload_with(
    *, round_id: int = 1, kind: int = coordinator_pb2.UPDATE_KIND_DELTA, **header_fields: Any
) -> BadCall:
    """A well-formed delta upload of PAYLOAD with some header fields changed."""

    def make(coord: Coordinator, a: Client) -> Awaitable[Any]:
        header = _header("a", round_id, kind, PAYLOAD, **header_fields)
        return a.send([header, *_chunks(PAYLOAD)])

    return make


def _upload_tensors(tensors: dict[str, np.ndarray]) -> BadCall:
    return lambda coord, a: a.upload(1, coordinator_pb2.UPDATE_KIND_DELTA, tensors)


def _upload_messages(
    build: Callable[
        [list[coordinator_pb2.UploadUpdateRequest]], list[coordinator_pb2.UploadUpdateRequest]
    ],
    payload: bytes = PAYLOAD,
) -> BadCall:
    def make(coord: Coordinator, a: Client) -> Awaitable[Any]:
        messages = [_header("a", 1, coordinator_pb2.UPDATE_KIND_DELTA, payload), *_chunks(payload)]
        return a.send(build(messages))

    return make


def _with_train_metrics(
    header: coordinator_pb2.UploadUpdateRequest, metrics: dict[str, float]
) -> coordinator_pb2.UploadUpdateRequest:
    header.header.train_metrics.update(metrics)
    return header


def _flip_byte(
    messages: list[coordinator_pb2.UploadUpdateRequest],
) -> list[coordinator_pb2.UploadUpdateRequest]:
    data = bytearray(messages[1].chunk.data)
    data[40] ^= 0xFF
    messages[1].chunk.data = bytes(data)  # the CRC still describes the original bytes
    return messages


def _bad_crc(
    messages: list[coordinator_pb2.UploadUpdateRequest],
) -> list[coordinator_pb2.UploadUpdateRequest]:
    messages[1].chunk.crc32 ^= 1
    return messages


def _garbage_payload() -> bytes:
    return bytes(range(256)) * 4


def _split_in_two(payload: bytes) -> list[coordinator_pb2.UploadUpdateRequest]:
    """A header announcing two chunks, and the two chunks."""
    half = len(payload) // 2
    header = _header("a", 1, coordinator_pb2.UPDATE_KIND_DELTA, payload, num_chunks=2)
    return [
        header,
        *(
            coordinator_pb2.UploadUpdateRequest(
                chunk=common_pb2.Chunk(seq=i, data=part, crc32=crc32(part))
            )
            for i, part in enumerate((payload[:half], payload[half:]))
        ),
    ]


def _unknown_stream(coord: Coordinator, a: Client) -> Awaitable[Any]:
    request = coordinator_pb2.StreamTasksRequest(client_id="ghost")
    return _drain(coord.stub.StreamTasks(request, timeout=RPC_TIMEOUT_S))


def _fetch(client_id: str, round_id: int, stage: int) -> BadCall:
    def make(coord: Coordinator, a: Client) -> Awaitable[Any]:
        request = coordinator_pb2.FetchModelRequest(
            client_id=client_id, round=round_id, stage=stage
        )
        return _drain(coord.stub.FetchModel(request, timeout=RPC_TIMEOUT_S))

    return make


def _report(client_id: str, round_id: int, phase: int, metrics: dict[str, float]) -> BadCall:
    def make(coord: Coordinator, a: Client) -> Awaitable[Any]:
        request = coordinator_pb2.ReportMetricsRequest(
            client_id=client_id, round=round_id, phase=phase, metrics=metrics
        )
        return coord.stub.ReportMetrics(request, timeout=RPC_TIMEOUT_S)

    return make


def _join(client_id: str, **fields: Any) -> BadCall:
    return lambda coord, a: Client(coord.stub, client_id).join(**fields)


async def _late_joiner_uploads(coord: Coordinator, a: Client) -> Any:
    late = coord.client("late")
    await late.join()
    return await late.upload_delta(1, 0.5)


def _oversize_chunk(coord: Coordinator, a: Client) -> Awaitable[Any]:
    big = b"\0" * (3 * MIB)
    messages = [
        _header("a", 1, coordinator_pb2.UPDATE_KIND_DELTA, PAYLOAD),
        coordinator_pb2.UploadUpdateRequest(
            chunk=common_pb2.Chunk(seq=0, data=big, crc32=crc32(big))
        ),
    ]
    return Client(coord.big_stub, "a").send(messages)


def _oversize_join(coord: Coordinator, a: Client) -> Awaitable[Any]:
    return Client(coord.big_stub, "huge").join(metadata_json=json.dumps({"x": "y" * (3 * MIB)}))


NOT_JSON_OBJECT = "[1, 2]"
NAN = float("nan")
DELTA = coordinator_pb2.UPDATE_KIND_DELTA
TRAIN = coordinator_pb2.METRICS_PHASE_TRAIN
START = coordinator_pb2.MODEL_STAGE_ROUND_START

BAD_CALLS: list[tuple[str, BadCall, grpc.StatusCode, str]] = [
    # Unknown callers.
    ("stream-unknown-client", _unknown_stream, Code.NOT_FOUND, "unknown client 'ghost'"),
    ("fetch-unknown-client", _fetch("ghost", 1, START), Code.NOT_FOUND, "unknown client 'ghost'"),
    (
        "upload-unknown-client",
        lambda coord, a: a.send([_header("ghost", 1, DELTA, PAYLOAD), *_chunks(PAYLOAD)]),
        Code.NOT_FOUND,
        "unknown client 'ghost'",
    ),
    (
        "report-unknown-client",
        _report("ghost", 1, TRAIN, {"loss": 1.0}),
        Code.NOT_FOUND,
        "unknown client",
    ),
    # Joins.
    ("join-invalid-client-id", _join("bad id!"), Code.INVALID_ARGUMENT, "client_id must be"),
    ("join-empty-client-id", _join(""), Code.INVALID_ARGUMENT, "client_id must be"),
    (
        "join-metadata-list",
        _join("c", metadata_json=NOT_JSON_OBJECT),
        Code.INVALID_ARGUMENT,
        "must be a JSON object",
    ),
    (
        "join-metadata-not-json",
        _join("c", metadata_json="{oops"),
        Code.INVALID_ARGUMENT,
        "not valid JSON",
    ),
    (
        "join-no-examples",
        _join("c", num_train_examples=0),
        Code.INVALID_ARGUMENT,
        "num_train_examples",
    ),
    (
        "join-fingerprint-mismatch",
        _join("c", model_fingerprint="other-model"),
        Code.FAILED_PRECONDITION,
        "fingerprint",
    ),
    ("join-larger-than-2-mib", _oversize_join, Code.RESOURCE_EXHAUSTED, "larger than max"),
    # Upload headers.
    (
        "upload-wrong-round",
        _upload_with(round_id=2),
        Code.FAILED_PRECONDITION,
        "round 2 is not accepting updates",
    ),
    (
        "upload-initial-for-round-1",
        _upload_with(kind=coordinator_pb2.UPDATE_KIND_INITIAL),
        Code.FAILED_PRECONDITION,
        "round 0",
    ),
    ("upload-kind-unspecified", _upload_with(kind=0), Code.INVALID_ARGUMENT, "UPDATE_KIND"),
    ("upload-no-examples", _upload_with(num_examples=0), Code.INVALID_ARGUMENT, "num_examples"),
    (
        "upload-not-a-participant",
        _late_joiner_uploads,
        Code.FAILED_PRECONDITION,
        "not a participant",
    ),
    (
        "upload-announced-over-max-update-bytes",
        _upload_with(total_bytes=MAX_UPDATE_BYTES + 1, num_chunks=1),
        Code.RESOURCE_EXHAUSTED,
        "exceeds the limit",
    ),
    (
        "upload-content-type",
        _upload_with(content_type="application/pickle"),
        Code.INVALID_ARGUMENT,
        "content_type",
    ),
    ("upload-bad-sha-length", _upload_with(sha256=b"short"), Code.INVALID_ARGUMENT, "sha256"),
    # Upload framing.
    (
        "upload-starts-with-chunk",
        _upload_messages(lambda m: m[1:]),
        Code.INVALID_ARGUMENT,
        "must start with its header",
    ),
    (
        "upload-two-headers",
        _upload_messages(lambda m: [m[0], m[0], *m[1:]]),
        Code.INVALID_ARGUMENT,
        "exactly one header",
    ),
    (
        "upload-empty-stream",
        _upload_messages(lambda m: []),
        Code.DATA_LOSS,
        "ended before its header",
    ),
    (
        "upload-larger-than-2-mib-message",
        _oversize_chunk,
        Code.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
    # Chunks.
    ("chunk-flipped-byte", _upload_messages(_flip_byte), Code.DATA_LOSS, "CRC-32"),
    ("chunk-bad-crc", _upload_messages(_bad_crc), Code.DATA_LOSS, "CRC-32"),
    (
        "upload-truncated",
        lambda coord, a: a.send(_split_in_two(PAYLOAD)[:-1]),
        Code.DATA_LOSS,
        "truncated",
    ),
    (
        "chunk-out-of-order",
        lambda coord, a: a.send([_split_in_two(PAYLOAD)[i] for i in (0, 2, 1)]),
        Code.INVALID_ARGUMENT,
        "out of order",
    ),
    (
        "upload-sha-mismatch",
        _upload_with(sha256=hashlib.sha256(b"something else").digest()),
        Code.DATA_LOSS,
        "SHA-256",
    ),
    (
        "upload-garbage-payload",
        _upload_messages(lambda m: m, _garbage_payload()),
        Code.INVALID_ARGUMENT,
        "not valid safetensors",
    ),
    # Tensors.
    (
        "tensor-shape-mismatch",
        _upload_tensors({**_delta(0.5), "head.weight": np.zeros((3, 2), np.float32)}),
        Code.INVALID_ARGUMENT,
        "'head.weight' has shape [3, 2], expected [2, 3]",
    ),
    (
        "tensor-missing",
        _upload_tensors({k: v for k, v in _delta(0.5).items() if k != "prompt.cluster"}),
        Code.INVALID_ARGUMENT,
        "missing ['prompt.cluster']",
    ),
    (
        "tensor-unexpected",
        _upload_tensors({**_delta(0.5), "extra": np.zeros(1, np.float32)}),
        Code.INVALID_ARGUMENT,
        "unexpected ['extra']",
    ),
    (
        "tensor-wrong-dtype",
        _upload_tensors({**_delta(0.5), "prompt.global": np.zeros((2, 3), np.float64)}),
        Code.INVALID_ARGUMENT,
        "dtype F64, expected F32",
    ),
    (
        "tensor-nan",
        _upload_tensors({**_delta(0.5), "prompt.global": np.full((2, 3), NAN, np.float32)}),
        Code.INVALID_ARGUMENT,
        "NaN",
    ),
    (
        "tensor-inf",
        _upload_tensors({**_delta(0.5), "head.weight": np.full((2, 3), np.inf, np.float32)}),
        Code.INVALID_ARGUMENT,
        "infinity",
    ),
    # Downloads.
    ("fetch-wrong-round", _fetch("a", 2, START), Code.FAILED_PRECONDITION, "round 2 is not open"),
    ("fetch-stage-unspecified", _fetch("a", 1, 0), Code.INVALID_ARGUMENT, "MODEL_STAGE"),
    (
        "fetch-aggregated-too-early",
        _fetch("a", 1, coordinator_pb2.MODEL_STAGE_AGGREGATED),
        Code.FAILED_PRECONDITION,
        "not been aggregated",
    ),
    # Metrics.
    ("metrics-nan", _report("a", 1, TRAIN, {"loss": NAN}), Code.INVALID_ARGUMENT, "not finite"),
    (
        "metrics-phase-unspecified",
        _report("a", 1, 0, {"loss": 1.0}),
        Code.INVALID_ARGUMENT,
        "METRICS_PHASE",
    ),
    (
        "metrics-wrong-round",
        _report("a", 4, TRAIN, {"loss": 1.0}),
        Code.FAILED_PRECONDITION,
        "round 4",
    ),
    (
        "metrics-empty-name",
        _report("a", 1, TRAIN, {"": 1.0}),
        Code.INVALID_ARGUMENT,
        "metric names",
    ),
    (
        "upload-header-metric-not-finite",
        _upload_messages(lambda m: [_with_train_metrics(m[0], {"loss": NAN}), *m[1:]]),
        Code.INVALID_ARGUMENT,
        "'loss' is not finite",
    ),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("make_call", "code", "fragment"),
    [pytest.param(call, code, fragment, id=name) for name, call, code, fragment in BAD_CALLS],
)
async def test_bad_input_gets_a_clear_status_and_the_coordinator_keeps_serving(
    coordinator: Coordinator, make_call: BadCall, code: grpc.StatusCode, fragment: str
) -> None:
    a, b = await _open_round(coordinator)
    await _expect(make_call(coordinator, a), code, fragment)
    await _round_goes_on(coordinator, a, b)


SPOOLED_CASES = [
    case
    for case in BAD_CALLS
    if case[0].startswith(("chunk-", "tensor-"))
    or case[0] in ("upload-truncated", "upload-sha-mismatch", "upload-garbage-payload")
]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("make_call", "code", "fragment"),
    [pytest.param(call, code, fragment, id=name) for name, call, code, fragment in SPOOLED_CASES],
)
async def test_bad_spooled_uploads_get_the_same_status_and_leave_no_file(
    coordinator: Coordinator,
    make_call: BadCall,
    code: grpc.StatusCode,
    fragment: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every upload spools (chunks are checked and written in a worker thread)."""
    monkeypatch.setattr(upload_intake_module, "SPOOL_THRESHOLD_BYTES", 0)
    a, b = await _open_round(coordinator)
    await _expect(make_call(coordinator, a), code, fragment)
    spool_dir = coordinator.federation._models.spool_dir
    assert not any(p.is_file() for p in spool_dir.rglob("*"))
    await _round_goes_on(coordinator, a, b)


async def _round_goes_on(coordinator: Coordinator, a: Client, b: Client) -> None:
    await coordinator.assert_serving()
    # A valid call right after works, and the round goes on with both participants.
    response = await a.upload_delta(1, 0.5)
    assert response.accepted and not response.duplicate
    assert response.received_bytes == len(PAYLOAD)
    await b.upload_delta(1, 1.5)
    for client in (a, b):
        task = await client.next_task()
        assert (task.kind, task.round) == (coordinator_pb2.TASK_KIND_EVALUATE, 1)
    aggregated = await a.fetch(1, coordinator_pb2.MODEL_STAGE_AGGREGATED)
    # n_a = 1, n_b = 3: 0.5 * 1/4 + 1.5 * 3/4 = 1.25 (the bad call left no trace).
    np.testing.assert_allclose(aggregated["prompt.global"], np.full((2, 3), 1.25))


@pytest.mark.asyncio
async def test_bad_calls_before_any_round_keep_the_coordinator_serving(
    coordinator: Coordinator,
) -> None:
    a = coordinator.client("a")
    await _expect(_join("bad id!")(coordinator, a), Code.INVALID_ARGUMENT, "client_id")
    await coordinator.assert_serving(common_pb2.ROUND_PHASE_WAITING_FOR_QUORUM)
    assert (await a.join()).initial_model_requested
    nan_model = {**INITIAL, "head.weight": np.full((2, 3), NAN, np.float32)}
    await _expect(
        a.upload(0, coordinator_pb2.UPDATE_KIND_INITIAL, nan_model), Code.INVALID_ARGUMENT, "NaN"
    )
    await _expect(
        a.upload(0, coordinator_pb2.UPDATE_KIND_INITIAL, {}), Code.INVALID_ARGUMENT, "no tensors"
    )
    await _expect(a.upload_delta(1, 0.5), Code.FAILED_PRECONDITION, "not accepting updates")
    await _expect(_fetch("a", 1, START)(coordinator, a), Code.FAILED_PRECONDITION, "not open")
    await coordinator.assert_serving(common_pb2.ROUND_PHASE_WAITING_FOR_QUORUM)
    # The refused initial models left no trace: the next join is still asked for one.
    assert (await a.join()).initial_model_requested
    assert (await a.upload(0, coordinator_pb2.UPDATE_KIND_INITIAL, INITIAL)).accepted
    assert not (await a.join()).initial_model_requested


@pytest.mark.asyncio
async def test_same_update_twice_is_a_duplicate_and_a_different_one_already_exists(
    coordinator: Coordinator,
) -> None:
    a, b = await _open_round(coordinator)
    first = await a.upload_delta(1, 0.5)
    assert (first.accepted, first.duplicate) == (True, False)
    again = await a.upload_delta(1, 0.5)
    assert (again.accepted, again.duplicate) == (True, True)
    await _expect(
        a.upload_delta(1, 9.0), Code.ALREADY_EXISTS, "already submitted a different update"
    )
    await coordinator.assert_serving()
    await b.upload_delta(1, 1.5)
    await a.next_task()
    aggregated = await a.fetch(1, coordinator_pb2.MODEL_STAGE_AGGREGATED)
    np.testing.assert_allclose(aggregated["head.weight"], np.full((2, 3), 1.25))  # not 9.0


@pytest.mark.asyncio
async def test_a_newer_task_stream_replaces_the_old_one(coordinator: Coordinator) -> None:
    a, _ = await _open_round(coordinator)
    old = a.stream
    a.open_stream()
    assert await asyncio.wait_for(old.read(), RPC_TIMEOUT_S) is grpc.aio.EOF
    task = await a.next_task()  # the open TRAIN task is delivered again
    assert (task.kind, task.round) == (coordinator_pb2.TASK_KIND_TRAIN, 1)
    await coordinator.assert_serving()


# ----------------------------------------------------------------------------- health, traffic


@pytest.mark.asyncio
async def test_health_reports_serving(coordinator: Coordinator) -> None:
    for service in (SERVICE, ""):
        response = await coordinator.health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT_S
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    await _expect(
        coordinator.health.Check(
            health_pb2.HealthCheckRequest(service="fedprompt.v1.Nope"), timeout=RPC_TIMEOUT_S
        ),
        Code.NOT_FOUND,
        "",
    )


@pytest.mark.asyncio
async def test_full_round_counts_bytes_per_client_exactly(coordinator: Coordinator) -> None:
    a, b = await _open_round(coordinator)
    deltas = {"a": 0.5, "b": 1.5}
    accuracy = {"a": 0.5, "b": 1.0}
    for client in (a, b):
        start = await client.fetch(1, START)
        for name, value in INITIAL.items():
            np.testing.assert_array_equal(start[name], value)
        assert (await client.upload_delta(1, deltas[client.client_id])).accepted
        await client.report(1, TRAIN, {"loss": 0.25, "pre_accuracy": 0.1})
    for client in (a, b):
        task = await client.next_task()
        assert (task.kind, task.round) == (coordinator_pb2.TASK_KIND_EVALUATE, 1)
        aggregated = await client.fetch(1, coordinator_pb2.MODEL_STAGE_AGGREGATED)
        np.testing.assert_allclose(aggregated["prompt.cluster"], np.full((1, 3), 1.25))
        await client.report(
            1, coordinator_pb2.METRICS_PHASE_EVALUATE, {"accuracy": accuracy[client.client_id]}
        )
    for client in (a, b):
        client.bucket = 2
        task = await client.next_task()
        assert task.kind == coordinator_pb2.TASK_KIND_FINISHED
    await asyncio.wait_for(coordinator.rounds, RPC_TIMEOUT_S)

    status = await coordinator.status()
    assert (status.completed_rounds, status.phase) == (1, common_pb2.ROUND_PHASE_DONE)
    assert status.model_fingerprint == FINGERPRINT
    (summary,) = status.rounds
    assert summary.status == "completed"
    assert summary.summary["jain_index"] == pytest.approx(0.9)  # (1.5)^2 / (2 * 1.25)
    records = {r.client_id: r for r in summary.clients}
    assert sorted(records) == ["a", "b"]
    for client in (a, b):
        record = records[client.client_id]
        assert record.update_accepted
        assert record.num_examples == client.num_examples
        assert dict(record.eval_metrics) == {"accuracy": accuracy[client.client_id]}
        assert record.bytes_up > len(PAYLOAD) and record.bytes_down > len(PAYLOAD)
        # Every message of the round, serialized size + 5, in each direction.
        assert (record.bytes_up, record.bytes_down) == tuple(client.bytes[1])
        # Set-up traffic (join, initial model, opening the stream) is kept apart.
        assert status.setup_bytes_up[client.client_id] == client.bytes[0][0]
        assert status.setup_bytes_down[client.client_id] == client.bytes[0][1]
    assert status.setup_bytes_up["a"] > status.setup_bytes_up["b"]  # a sent the initial model


@pytest.mark.asyncio
async def test_status_calls_are_not_counted_and_refused_calls_count_only_their_request(
    coordinator: Coordinator,
) -> None:
    await coordinator.status()  # no client id metadata: not counted
    refused = Client(coordinator.stub, "bad id!")  # the metadata names the (invalid) caller
    await _expect(refused.join(), Code.INVALID_ARGUMENT, "client_id")
    counted = coordinator.federation.traffic.round_totals(0)
    assert counted == {"bad id!": (refused.bytes[0][0], 0)}  # an error carries no message
    status = await coordinator.status()  # it shows the traffic of joined clients only
    assert (dict(status.setup_bytes_up), dict(status.setup_bytes_down)) == ({}, {})


def _inline(task: coordinator_pb2.Task) -> dict[str, np.ndarray]:
    """The task's inline model, after checking its digest."""
    assert task.HasField("model"), "a small model travels inside its task"
    assert hashlib.sha256(task.model.data).digest() == task.model.sha256
    return decode_tensors(task.model.data)


@pytest.mark.asyncio
async def test_small_models_travel_in_tasks_and_training_metrics_in_the_upload_header(
    coordinator: Coordinator,
) -> None:
    """A round needs only the task stream, one upload and one evaluation report per client."""
    a, b = coordinator.client("a", num_examples=1), coordinator.client("b", num_examples=3)
    await a.join()
    await a.upload(0, coordinator_pb2.UPDATE_KIND_INITIAL, INITIAL)
    await b.join()
    train_metrics = {"a": {"post_accuracy": 0.75, "train_loss": 0.5}, "b": {"train_loss": 0.25}}
    for client in (a, b):
        client.open_stream()
        client.bucket = 1
    for client in (a, b):
        task = await client.next_task()
        assert task.kind == coordinator_pb2.TASK_KIND_TRAIN
        start = _inline(task)
        assert sorted(start) == sorted(INITIAL)
        for name, value in INITIAL.items():
            np.testing.assert_array_equal(start[name], value)
        payload = encode_tensors(_delta(0.5 if client is a else 1.5))
        header = _with_train_metrics(
            _header(client.client_id, 1, DELTA, payload, num_examples=client.num_examples),
            train_metrics[client.client_id],
        )
        assert (await client.send([header, *_chunks(payload)])).accepted
    for client in (a, b):
        task = await client.next_task()
        assert task.kind == coordinator_pb2.TASK_KIND_EVALUATE
        np.testing.assert_allclose(_inline(task)["prompt.global"], np.full((2, 3), 1.25))
        await client.report(1, coordinator_pb2.METRICS_PHASE_EVALUATE, {"accuracy": 0.5})
    await asyncio.wait_for(coordinator.rounds, RPC_TIMEOUT_S)
    (summary,) = (await coordinator.status()).rounds
    assert summary.status == "completed"
    records = {r.client_id: r for r in summary.clients}
    for client in (a, b):
        assert dict(records[client.client_id].train_metrics) == train_metrics[client.client_id]
        # the inline model is counted as this round's download, like a FetchModel would be
        assert records[client.client_id].bytes_down == client.bytes[1][1] > 2 * len(PAYLOAD)


@pytest.mark.asyncio
@pytest.mark.parametrize("limit", [0, len(PAYLOAD) - 1])
async def test_models_over_the_inline_limit_are_fetched(tmp_path: Path, limit: int) -> None:
    async with _running_coordinator(tmp_path, inline_model_max_bytes=limit) as coord:
        a, b = await _open_round(coord)
        for client in (a, b):
            assert not client.train_tasks[-1].HasField("model")
            start = await client.fetch(1, START)
            np.testing.assert_array_equal(start["head.weight"], INITIAL["head.weight"])
            await client.upload_delta(1, 1.0)
        for client in (a, b):
            task = await client.next_task()
            assert task.kind == coordinator_pb2.TASK_KIND_EVALUATE
            assert not task.HasField("model")


@pytest.mark.asyncio
async def test_a_model_at_the_inline_limit_fits_the_task_message(tmp_path: Path) -> None:
    """A 1 MiB inline model (the largest allowed) passes the channels' 2 MiB message limit."""
    big = {**INITIAL, "prompt.global": np.ones((1, 262_000), dtype=np.float32)}
    payload_size = len(encode_tensors(big))
    assert MIB - 1024 < payload_size <= MIB
    async with _running_coordinator(tmp_path, max_update_bytes=2 * MIB) as coord:
        a, b = coord.client("a"), coord.client("b")
        await a.join()
        assert (await a.upload(0, coordinator_pb2.UPDATE_KIND_INITIAL, big)).accepted
        await b.join()
        for client in (a, b):
            client.open_stream()
        for client in (a, b):
            task = await client.next_task()
            assert task.kind == coordinator_pb2.TASK_KIND_TRAIN
            assert len(task.model.data) == payload_size
            np.testing.assert_array_equal(_inline(task)["prompt.global"], big["prompt.global"])


@pytest.mark.asyncio
async def test_file_backed_downloads_are_identical_for_concurrent_readers_and_end_with_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedprompt_coordinator.round_models as round_models_module

    monkeypatch.setattr(round_models_module, "SPILL_BYTES", 0)  # every model in a file
    async with _running_coordinator(tmp_path, inline_model_max_bytes=0) as coord:
        downloads = tmp_path / "state" / "models" / ".downloads"
        a, b = await _open_round(coord)
        assert len(list(downloads.iterdir())) == 1  # one cluster's round-start model
        fetched = await asyncio.gather(*(c.fetch(1, START) for c in (a, b, a, b, a)))
        expected = encode_tensors(fetched[0])
        assert all(encode_tensors(f) == expected for f in fetched)
        np.testing.assert_array_equal(fetched[0]["head.weight"], INITIAL["head.weight"])
        for client in (a, b):
            await client.upload_delta(1, 1.0)
        for client in (a, b):
            assert (await client.next_task()).kind == coordinator_pb2.TASK_KIND_EVALUATE
        assert len(list(downloads.iterdir())) == 2  # and the aggregate's
        aggregated = await asyncio.gather(
            *(c.fetch(1, coordinator_pb2.MODEL_STAGE_AGGREGATED) for c in (a, b))
        )
        assert encode_tensors(aggregated[0]) == encode_tensors(aggregated[1])
        for client in (a, b):
            await client.report(1, coordinator_pb2.METRICS_PHASE_EVALUATE, {"accuracy": 1.0})
        await asyncio.wait_for(coord.rounds, RPC_TIMEOUT_S)
        assert list(downloads.iterdir()) == []  # dropped with the round
        await _expect(
            _fetch("a", 1, coordinator_pb2.MODEL_STAGE_AGGREGATED)(coord, a),
            Code.FAILED_PRECONDITION,
            "round",
        )
