"""Hostile silos against the coordinator's resources: streams, uploads, spool disk, memory.

The attacker holds a valid silo certificate (``mallory``, made by ``fedprompt certs``) and
speaks the protocol through stubs generated from our ``.proto``. The in-process tests run the
coordinator's own server wiring (``start_coordinator_server``: identity, traffic, keepalive,
idle timeout) over mutual TLS on 127.0.0.1; the flood test starts the real
``fedprompt-coordinator`` process and reads its memory from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio

from fedprompt.chunking import describe_payload, split_payload
from fedprompt.codec import encode_tensors
from fedprompt.coordinator_client import CoordinatorClient
from fedprompt.server import create_channel
from fedprompt.tls import TlsConfig, channel_credentials, server_credentials
from fedprompt.transfer import chunk_to_proto, payload_header_to_proto
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_cli.processes import Child, console_script
from fedprompt_coordinator.__main__ import start_coordinator_server
from fedprompt_coordinator.clustering_backend import make_clustering_backend
from fedprompt_coordinator.config import CoordinatorConfig, ResourceLimits
from fedprompt_coordinator.federation import Federation
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.state_store import make_state_store

Code = grpc.StatusCode
STRATEGY = "fedavg"
FINGERPRINT = "fp-hostile"
#: Guard against a hang (never a performance threshold): no single wait here needs more.
HANG_GUARD_S = 60.0
SILOS = ("alice", "bob", "mallory")
MIB = 1024**2


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation CA, the services' and every silo's certificate (``fedprompt certs``)."""
    out = tmp_path_factory.mktemp("certs")
    argv = [str(Path(sys.executable).parent / "fedprompt"), "certs", "--out", str(out)]
    for silo in SILOS:
        argv += ["--silo", silo]
    subprocess.run(argv, check=True, capture_output=True)
    return out


def _tls(certs: Path, name: str) -> TlsConfig:
    return TlsConfig(cert=certs / f"{name}.crt", key=certs / f"{name}.key", ca=certs / "ca.crt")


def _capabilities(names: list[str]) -> common_pb2.ClientCapabilities:
    return common_pb2.ClientCapabilities(
        device="cpu",
        model_name="tiny",
        model_fingerprint=FINGERPRINT,
        trainable_tensors=names,
        strategy=STRATEGY,
    )


def _model(floats: int) -> dict[str, np.ndarray]:
    return {"prompt.global": np.linspace(-1, 1, floats, dtype=np.float32)}


def _upload_messages(
    client_id: str, payload: bytes, *, chunk_size: int, kind: int, round_id: int = 0
) -> tuple[coordinator_pb2.UploadUpdateRequest, list[coordinator_pb2.UploadUpdateRequest]]:
    """The header message and the chunk messages of one upload."""
    header = coordinator_pb2.UploadUpdateRequest(
        header=coordinator_pb2.UpdateHeader(
            client_id=client_id,
            round=round_id,
            kind=kind,  # type: ignore[arg-type]
            num_examples=0 if kind == coordinator_pb2.UPDATE_KIND_INITIAL else 10,
            payload=payload_header_to_proto(describe_payload(payload, chunk_size=chunk_size)),
        )
    )
    chunks = [
        coordinator_pb2.UploadUpdateRequest(chunk=chunk_to_proto(c))
        for c in split_payload(payload, chunk_size=chunk_size)
    ]
    return header, chunks


@dataclass
class HeldUpload:
    """An upload that sends its header and the first ``sent`` chunks, then waits for release."""

    call: Any
    release: asyncio.Event

    async def outcome(self) -> tuple[grpc.StatusCode, str]:
        """The call's status code and details (OK for an accepted upload)."""
        try:
            await asyncio.wait_for(self.call, HANG_GUARD_S)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return Code.OK, ""


def hold_upload(
    stub: coordinator_pb2_grpc.CoordinatorStub,
    header: coordinator_pb2.UploadUpdateRequest,
    chunks: list[coordinator_pb2.UploadUpdateRequest],
    *,
    sent: int,
    release: asyncio.Event | None = None,
) -> HeldUpload:
    """Start an upload that stalls after ``sent`` chunks until its ``release`` is set."""
    release = release or asyncio.Event()

    async def requests() -> AsyncIterator[coordinator_pb2.UploadUpdateRequest]:
        yield header
        for chunk in chunks[:sent]:
            yield chunk
        await release.wait()
        for chunk in chunks[sent:]:
            yield chunk

    # the client's own deadline stays far away: a DEADLINE_EXCEEDED seen here is the server's
    return HeldUpload(stub.UploadUpdate(requests(), timeout=10 * HANG_GUARD_S), release)


def send_upload(
    stub: coordinator_pb2_grpc.CoordinatorStub,
    header: coordinator_pb2.UploadUpdateRequest,
    chunks: list[coordinator_pb2.UploadUpdateRequest],
) -> HeldUpload:
    """Start an upload that sends its header and every chunk, then closes its stream."""
    done = asyncio.Event()
    done.set()
    return hold_upload(stub, header, chunks, sent=len(chunks), release=done)


async def eventually(what: str, predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds (polling), or fail after the hang guard."""
    async with asyncio.timeout(HANG_GUARD_S):
        while not predicate():
            await asyncio.sleep(0.01)
    assert predicate(), what


@dataclass
class Served:
    """A coordinator served in-process over mutual TLS, with its federation at hand."""

    federation: Federation
    models: ModelStore
    port: int
    certs: Path
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stub(self, name: str, *, port: int | None = None) -> coordinator_pb2_grpc.CoordinatorStub:
        """A stub over a new mTLS channel with ``name``'s certificate (to ``port`` if given)."""
        creds = channel_credentials(_tls(self.certs, name))
        channel = create_channel(f"127.0.0.1:{port or self.port}", credentials=creds)
        self.channels.append(channel)
        return coordinator_pb2_grpc.CoordinatorStub(channel)

    async def join(
        self, stub: coordinator_pb2_grpc.CoordinatorStub, client_id: str
    ) -> coordinator_pb2.JoinResponse:
        request = coordinator_pb2.JoinRequest(
            client_id=client_id,
            metadata_json=json.dumps({"site": client_id}),
            capabilities=_capabilities(["prompt.global"]),
            num_train_examples=10,
        )
        response: coordinator_pb2.JoinResponse = await stub.Join(request, timeout=HANG_GUARD_S)
        return response

    def spool_files(self) -> list[Path]:
        return [p for p in self.models.spool_dir.rglob("*") if p.is_file()]

    def connected(self, client_id: str) -> bool:
        return any(
            c.connected for c in self.federation.status().clients if c.client_id == client_id
        )


@contextlib.asynccontextmanager
async def serve(state_dir: Path, certs: Path, **config: Any) -> AsyncIterator[Served]:
    """Serve a federation (no round loop: joins, uploads and task streams need none)."""
    cfg = CoordinatorConfig(
        listen="127.0.0.1:0", state_dir=state_dir, strategy=STRATEGY, rounds=1, **config
    )
    state_dir.mkdir(parents=True, exist_ok=True)
    state = make_state_store(state_dir / "state.sqlite3")
    models = ModelStore(state_dir / "models")
    federation = Federation(
        config=cfg, state=state, models=models, clustering=make_clustering_backend(cfg.clustering)
    )
    handle = await start_coordinator_server(
        cfg, federation, credentials=server_credentials(_tls(certs, "coordinator"))
    )
    served = Served(federation, models, handle.port, certs)
    try:
        yield served
    finally:
        for channel in served.channels:
            await channel.close()
        await handle.stop(0)
        state.close()


@pytest_asyncio.fixture
async def served(tmp_path: Path, certs: Path) -> AsyncIterator[Served]:
    async with serve(tmp_path / "state", certs) as s:
        yield s


# --------------------------------------------------------------------- one upload each


@pytest.mark.asyncio
async def test_a_second_concurrent_upload_is_refused_while_the_first_goes_on(
    served: Served,
) -> None:
    mallory, alice = served.stub("mallory"), served.stub("alice")
    assert (await served.join(mallory, "mallory")).initial_model_requested
    assert (await served.join(alice, "alice")).initial_model_requested
    payload = encode_tensors(_model(4096))
    header, chunks = _upload_messages(
        "mallory", payload, chunk_size=4096, kind=coordinator_pb2.UPDATE_KIND_INITIAL
    )
    first = hold_upload(mallory, header, chunks, sent=1)
    intake = served.federation.uploads
    await eventually("the first upload is open", lambda: intake.open_uploads == 1)
    reserved = intake.reserved_memory_bytes
    assert reserved == len(payload)

    second = send_upload(mallory, header, chunks)
    code, details = await second.outcome()
    assert code is Code.ABORTED
    assert "'mallory' already has an upload open" in details
    # the refusal cost nothing: no reservation, no buffer, the first upload still open
    assert intake.open_uploads == 1 and intake.reserved_memory_bytes == reserved

    # another identity is not affected: alice's upload goes through beside mallory's
    alice_header, alice_chunks = _upload_messages(
        "alice", payload, chunk_size=4096, kind=coordinator_pb2.UPDATE_KIND_INITIAL
    )
    assert (await send_upload(alice, alice_header, alice_chunks).outcome())[0] is Code.OK

    first.release.set()  # mallory's first upload continues and ends normally
    assert await first.outcome() == (Code.OK, "")
    assert intake.open_uploads == 0 and intake.reserved_memory_bytes == 0


# --------------------------------------------------------------------------- idle


@pytest.mark.asyncio
async def test_an_idle_upload_is_cancelled_and_its_spool_file_is_gone(
    tmp_path: Path, certs: Path
) -> None:
    # no upload memory: even this small upload spools to a file, as a large one would
    limits = ResourceLimits(upload_idle_timeout_s=0.5, max_buffered_upload_bytes=0)
    async with serve(tmp_path / "state", certs, limits=limits) as s:
        mallory = s.stub("mallory")
        await s.join(mallory, "mallory")
        payload = encode_tensors(_model(4096))
        header, chunks = _upload_messages(
            "mallory", payload, chunk_size=4096, kind=coordinator_pb2.UPDATE_KIND_INITIAL
        )
        idle = hold_upload(mallory, header, chunks, sent=2)
        await eventually("the upload spools", lambda: len(s.spool_files()) == 1)
        code, details = await idle.outcome()
        assert code is Code.DEADLINE_EXCEEDED
        assert "no message for 0.5 s" in details
        intake = s.federation.uploads
        assert s.spool_files() == []
        assert (intake.open_uploads, intake.reserved_spool_bytes) == (0, 0)

        # a stream that never sends its header is closed the same way
        silent = asyncio.Event()

        async def nothing() -> AsyncIterator[coordinator_pb2.UploadUpdateRequest]:
            await silent.wait()
            yield header

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await mallory.UploadUpdate(nothing(), timeout=HANG_GUARD_S)
        assert info.value.code() is Code.DEADLINE_EXCEEDED

        # and the client may upload again at once
        idle.release.set()
        retry = send_upload(mallory, header, chunks)
        assert (await retry.outcome())[0] is Code.OK
        assert s.spool_files() == []


# ------------------------------------------------------------------ initial models


@pytest.mark.asyncio
async def test_initial_models_only_from_asked_clients_before_the_model_exists(
    tmp_path: Path, certs: Path
) -> None:
    state_dir = tmp_path / "state"
    small = encode_tensors(_model(16))
    kind = coordinator_pb2.UPDATE_KIND_INITIAL

    async def send(stub: coordinator_pb2_grpc.CoordinatorStub, cid: str, payload: bytes) -> Any:
        header, chunks = _upload_messages(cid, payload, chunk_size=1024, kind=kind)
        return await send_upload(stub, header, chunks).outcome()

    limits = ResourceLimits(max_initial_model_bytes=64 * 1024)
    async with serve(state_dir, certs, limits=limits) as s:
        mallory = s.stub("mallory")
        await s.join(mallory, "mallory")  # asked: no model yet
    # The coordinator restarts before any model exists; mallory does not join again.
    async with serve(state_dir, certs, limits=limits) as s:
        mallory, alice, bob = s.stub("mallory"), s.stub("alice"), s.stub("bob")
        code, details = await send(mallory, "mallory", small)
        assert code is Code.FAILED_PRECONDITION
        assert "did not ask client 'mallory' for the initial model" in details

        assert (await s.join(alice, "alice")).initial_model_requested
        assert (await s.join(bob, "bob")).initial_model_requested
        # over max_initial_model_bytes: refused at the header, before any chunk
        big = encode_tensors(_model(20_000))
        header, chunks = _upload_messages("bob", big, chunk_size=1024, kind=kind)
        code, details = await hold_upload(bob, header, chunks, sent=0).outcome()
        assert code is Code.RESOURCE_EXHAUSTED and "exceeds the limit of 65536" in details
        assert s.federation.uploads.open_uploads == 0

        assert await send(alice, "alice", small) == (Code.OK, "")  # the federation's model
        assert not (await s.join(mallory, "mallory")).initial_model_requested
        code, details = await send(mallory, "mallory", small)
        assert code is Code.FAILED_PRECONDITION and "model exists" in details
        # bob was asked before the model existed: one late copy, no larger than the model
        too_big = encode_tensors(_model(4096))  # under the 64 KiB limit, over the model
        header, chunks = _upload_messages("bob", too_big, chunk_size=1024, kind=kind)
        code, details = await hold_upload(bob, header, chunks, sent=0).outcome()
        assert code is Code.RESOURCE_EXHAUSTED and "larger than the round's tensors" in details
        code, details = await send(bob, "bob", small)
        assert code is Code.FAILED_PRECONDITION and "model exists" in details


@pytest.mark.asyncio
async def test_an_asked_clients_late_duplicate_is_idempotent(served: Served) -> None:
    alice, bob = served.stub("alice"), served.stub("bob")
    for stub, cid in ((alice, "alice"), (bob, "bob")):
        assert (await served.join(stub, cid)).initial_model_requested
    payload = encode_tensors(_model(16))
    for stub, cid in ((alice, "alice"), (bob, "bob")):
        header, chunks = _upload_messages(
            cid, payload, chunk_size=1024, kind=coordinator_pb2.UPDATE_KIND_INITIAL
        )
        response = await send_upload(stub, header, chunks).call
        assert response.accepted and response.duplicate == (cid == "bob")


# ------------------------------------------------------------------ spool and memory


@pytest.mark.asyncio
async def test_the_spool_cap_is_enforced_before_any_chunk(tmp_path: Path, certs: Path) -> None:
    payload = encode_tensors(_model(10_000))  # ~40 KB
    limits = ResourceLimits(
        max_spool_bytes=64 * 1024, max_buffered_upload_bytes=48 * 1024, max_initial_model_bytes=None
    )
    async with serve(tmp_path / "state", certs, max_update_bytes=64 * 1024, limits=limits) as s:
        stubs = {cid: s.stub(cid) for cid in SILOS}
        for cid, stub in stubs.items():
            await s.join(stub, cid)
        held: dict[str, HeldUpload] = {}
        intake = s.federation.uploads
        for cid in ("alice", "bob"):
            header, chunks = _upload_messages(
                cid, payload, chunk_size=8192, kind=coordinator_pb2.UPDATE_KIND_INITIAL
            )
            held[cid] = hold_upload(stubs[cid], header, chunks, sent=1)
            await eventually("the upload is open", lambda: set(held) == intake.open_clients)
        # alice's upload sits in memory, bob's spooled (memory was full): both budgets taken
        assert intake.reserved_memory_bytes == len(payload)
        assert intake.reserved_spool_bytes == len(payload)
        assert len(s.spool_files()) == 1
        header, chunks = _upload_messages(
            "mallory", payload, chunk_size=8192, kind=coordinator_pb2.UPDATE_KIND_INITIAL
        )
        code, details = await hold_upload(stubs["mallory"], header, chunks, sent=0).outcome()
        assert code is Code.RESOURCE_EXHAUSTED and "spool is full" in details
        assert len(s.spool_files()) == 1 and intake.open_uploads == 2
        for upload in held.values():
            upload.release.set()
            assert (await upload.outcome())[0] is Code.OK
        assert (intake.reserved_memory_bytes, intake.reserved_spool_bytes) == (0, 0)
        # with the budget free again the refused client is served (a late duplicate)
        ok = send_upload(stubs["mallory"], header, chunks)
        assert (await ok.outcome())[0] is Code.OK
        assert s.spool_files() == []


# --------------------------------------------------------------------- task streams


@pytest.mark.asyncio
async def test_a_newer_task_stream_replaces_the_old_one(served: Served) -> None:
    mallory = served.stub("mallory")
    await served.join(mallory, "mallory")
    request = coordinator_pb2.StreamTasksRequest(client_id="mallory")
    old = mallory.StreamTasks(request)
    await eventually("mallory is connected", lambda: served.connected("mallory"))
    for _ in range(20):
        new = mallory.StreamTasks(request)
        assert await asyncio.wait_for(old.read(), HANG_GUARD_S) is grpc.aio.EOF
        old = new
    connected = [c.client_id for c in served.federation.status().clients if c.connected]
    assert connected == ["mallory"]
    old.cancel()
    await eventually("mallory is disconnected", lambda: not served.connected("mallory"))


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 that can stop forwarding while keeping its sockets open.

    A frozen proxy is a peer that is gone without closing anything: a cut cable, a host
    that hung, a NAT that dropped the mapping.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self._flowing.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            await self._flowing.wait()
            writer.write(data)
            await writer.drain()


@pytest.mark.asyncio
async def test_a_task_stream_whose_peer_is_gone_is_detected(tmp_path: Path, certs: Path) -> None:
    limits = ResourceLimits(keepalive_time_s=0.5, keepalive_timeout_s=0.5)
    async with serve(tmp_path / "state", certs, limits=limits) as s:
        proxy = FreezableProxy(s.port)
        await proxy.start()
        try:
            mallory = s.stub("mallory", port=proxy.port)
            await s.join(mallory, "mallory")
            stream = mallory.StreamTasks(coordinator_pb2.StreamTasksRequest(client_id="mallory"))
            await eventually("mallory is connected", lambda: s.connected("mallory"))
            proxy.freeze()  # the peer is gone; nothing is closed
            await eventually(
                "the keepalive marks mallory disconnected", lambda: not s.connected("mallory")
            )
            assert s.federation.status().phase.name == "WAITING_FOR_QUORUM"
            stream.cancel()
        finally:
            await proxy.close()


# ------------------------------------------------------------- flood, real process


def _kib(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


#: Streams in each wave of the flood, and what each sends before it stalls.
FLOOD_STREAMS = 200
FLOOD_CHUNKS = 4
#: Bound on the coordinator's RSS growth under the flood. The flood sends
#: 2 x 200 x 4 MiB = 1.6 GiB; before the limits one wave of it grew RSS by ~550 MiB. After:
#: one open upload of at most 8 MiB (the one admitted) plus transport buffers.
FLOOD_RSS_GROWTH_BOUND = 160 * MIB
#: How a flood stream may end: refused at its header, or cut when idle; never accepted.
REFUSED = {"ABORTED", "DEADLINE_EXCEEDED", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"}
#: What a grpc.aio client may report instead of the server's status when the server ends a
#: client stream while the client is still writing (grpc/grpc#36066): its own failed write.
AIO_CLIENT_WRITE_RACE = ("INTERNAL", "Internal error from Core")


async def _honest_client(port: int, certs: Path, cid: str) -> int:
    """A silo that follows the protocol (no training); returns the rounds it completed."""
    creds = channel_credentials(_tls(certs, cid))
    async with create_channel(f"127.0.0.1:{port}", credentials=creds) as channel:
        client = CoordinatorClient(channel, cid, call_timeout_s=HANG_GUARD_S)
        initial = _model(64)
        response = await client.join(
            metadata_json=json.dumps({"site": cid}),
            capabilities=_capabilities(sorted(initial)),
            num_train_examples=10,
        )
        if response.initial_model_requested:
            await client.upload(
                round_id=0,
                kind=coordinator_pb2.UPDATE_KIND_INITIAL,
                payload=encode_tensors(initial),
                num_examples=0,
            )
        evaluated = 0
        async for task in client.tasks():
            if task.kind == coordinator_pb2.TASK_KIND_TRAIN:
                model = await client.task_model(task, coordinator_pb2.MODEL_STAGE_ROUND_START)
                delta = {k: np.full_like(v, 0.01) for k, v in model.items()}
                await client.upload(
                    round_id=task.round,
                    kind=coordinator_pb2.UPDATE_KIND_DELTA,
                    payload=encode_tensors(delta),
                    num_examples=10,
                )
            elif task.kind == coordinator_pb2.TASK_KIND_EVALUATE:
                await client.report_metrics(
                    round_id=task.round,
                    phase=coordinator_pb2.METRICS_PHASE_EVALUATE,
                    metrics={"accuracy": 0.5},
                )
                evaluated += 1
            elif task.kind == coordinator_pb2.TASK_KIND_FINISHED:
                return evaluated
    raise AssertionError(f"{cid}: the task stream ended without FINISHED")


def _flood(
    stub: coordinator_pb2_grpc.CoordinatorStub, stop: asyncio.Event, n: int
) -> list[HeldUpload]:
    """Open ``n`` initial-model uploads at once, each announcing 8 MiB and stalling."""
    payload = np.random.default_rng(0).bytes(8 * MIB)  # in memory before the limits
    header, chunks = _upload_messages(
        "mallory", payload, chunk_size=MIB, kind=coordinator_pb2.UPDATE_KIND_INITIAL
    )
    # each stalls after its chunks until the test ends, unless the server ends it first
    return [
        hold_upload(stub, header, chunks[:FLOOD_CHUNKS], sent=FLOOD_CHUNKS, release=stop)
        for _ in range(n)
    ]


@pytest.fixture
def coordinator_process(tmp_path: Path, certs: Path) -> Iterator[Child]:
    """A real ``fedprompt-coordinator`` over mutual TLS: 2 rounds, quorum 2, idle 3 s."""
    child = Child(
        "coordinator",
        [console_script("fedprompt-coordinator"), "--listen", "127.0.0.1:0",
         "--state-dir", str(tmp_path / "state"), "--rounds", "2", "--min-clients", "2",
         "--expected-clients", "2", "--strategy", STRATEGY, "--round-deadline-s", "120",
         "--log-level", "INFO",
         "--tls-cert", str(certs / "coordinator.crt"), "--tls-key", str(certs / "coordinator.key"),
         "--tls-ca", str(certs / "ca.crt")],
        tmp_path / "coordinator.log",
        env={
            "FEDPROMPT_COORDINATOR_QUORUM_WAIT_S": "0",
            "FEDPROMPT_COORDINATOR_LIMITS__UPLOAD_IDLE_TIMEOUT_S": "3",
        },
    )  # fmt: skip
    child.start()
    try:
        yield child
    finally:
        child.stop()


def test_a_stream_flood_from_one_certificate_leaves_rss_bounded_and_honest_clients_finish(
    coordinator_process: Child, certs: Path
) -> None:
    port = coordinator_process.wait_for_port(60)
    pid = coordinator_process.pid

    async def attack() -> tuple[int, int, Counter[str], list[int]]:
        creds = channel_credentials(_tls(certs, "mallory"))
        async with create_channel(f"127.0.0.1:{port}", credentials=creds) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            joined = await stub.Join(
                coordinator_pb2.JoinRequest(
                    client_id="mallory",
                    metadata_json="{}",
                    capabilities=_capabilities(["prompt.global"]),
                    num_train_examples=10,
                ),
                timeout=HANG_GUARD_S,
            )
            assert joined.initial_model_requested  # the attack needs no more than this
            baseline = _kib(pid, "VmRSS") * 1024
            stop = asyncio.Event()
            # wave 1: before the federation's model exists, as in the report
            first = _flood(stub, stop, FLOOD_STREAMS)
            outcomes = [asyncio.ensure_future(u.outcome()) for u in first]
            await eventually(
                "all but one stream refused",
                lambda: sum(o.done() for o in outcomes) >= len(first) - 1,
            )
            # the honest silos join and run their rounds while wave 2 hits the coordinator
            honest = asyncio.gather(*(_honest_client(port, certs, c) for c in ("alice", "bob")))
            second = _flood(stub, stop, FLOOD_STREAMS)
            outcomes += [asyncio.ensure_future(u.outcome()) for u in second]
            rounds = await asyncio.wait_for(honest, 10 * HANG_GUARD_S)
            results = await asyncio.gather(*outcomes)
            stop.set()
            peak = _kib(pid, "VmHWM") * 1024
            unexpected = [
                f"{c.name}: {d}"
                for c, d in results
                if c.name not in REFUSED and (c.name, d) != AIO_CLIENT_WRITE_RACE
            ]
            assert not unexpected, unexpected[:5]
            return baseline, peak, Counter(code.name for code, _ in results), rounds

    baseline, peak, codes, rounds = asyncio.run(attack())
    # every flood stream was refused at its header or cut when idle, none accepted: the
    # coordinator's log says what it answered (its clients may see the aio write race)
    log = coordinator_process.log_path.read_text()
    answered = Counter(re.findall(r"/UploadUpdate -> ([A-Z_]+):", log))
    print(
        f"flood: RSS baseline {baseline / MIB:.0f} MiB, peak {peak / MIB:.0f} MiB "
        f"(+{(peak - baseline) / MIB:.0f} MiB), now {_kib(pid, 'VmRSS') / 1024:.0f} MiB; "
        f"coordinator answered {dict(answered)}; clients saw {dict(codes)}"
    )
    assert rounds == [2, 2]  # both honest silos evaluated both rounds and got FINISHED
    assert set(answered) <= REFUSED and sum(answered.values()) == 2 * FLOOD_STREAMS, answered
    assert answered["ABORTED"] > 0  # most of them: one upload at a time per identity
    assert codes["OK"] == 0
    assert peak - baseline < FLOOD_RSS_GROWTH_BOUND
    assert "Traceback" not in log
