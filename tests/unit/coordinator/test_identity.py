"""A client's identity is its certificate's CN: over mutual TLS nobody can act for another.

The coordinator is wired like ``fedprompt_coordinator.__main__.serve`` (IdentityInterceptor,
TrafficInterceptor, CoordinatorServicer, mutual TLS) on loopback; certificates come from the
real ``fedprompt certs`` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from fedprompt.codec import encode_tensors
from fedprompt.server import CLIENT_ID_METADATA_KEY, create_channel, start_server
from fedprompt.tls import TlsConfig, channel_credentials, server_credentials
from fedprompt.transfer import payload_messages
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_coordinator.clustering_backend import make_clustering_backend
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.federation import Federation
from fedprompt_coordinator.identity import IdentityInterceptor
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.servicer import CoordinatorServicer, add_coordinator_servicer_to_server
from fedprompt_coordinator.state_store import make_state_store
from fedprompt_coordinator.traffic import TrafficInterceptor

Code = grpc.StatusCode
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    fedprompt = Path(sys.executable).parent / "fedprompt"
    subprocess.run(
        [str(fedprompt), "certs", "--out", str(out), "--silo", "alice", "--silo", "bob"],
        check=True,
        capture_output=True,
    )
    return out


def _tls(certs: Path, name: str) -> TlsConfig:
    return TlsConfig(cert=certs / f"{name}.crt", key=certs / f"{name}.key", ca=certs / "ca.crt")


@dataclass
class Served:
    federation: Federation
    port: int
    certs: Path

    def channel(self, name: str) -> grpc.aio.Channel:
        creds = channel_credentials(_tls(self.certs, name))
        return create_channel(f"127.0.0.1:{self.port}", credentials=creds)


@pytest_asyncio.fixture
async def served(tmp_path: Path, certs: Path) -> AsyncIterator[Served]:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", state_dir=tmp_path / "state", strategy="clustered"
    )
    config.state_dir.mkdir(parents=True)
    state = make_state_store(config.state_dir / "state.sqlite3")
    federation = Federation(
        config=config,
        state=state,
        models=ModelStore(config.state_dir / "models"),
        clustering=make_clustering_backend(config.clustering),
    )
    handle = await start_server(
        register=lambda s: add_coordinator_servicer_to_server(CoordinatorServicer(federation), s),
        service_names=["fedprompt.v1.Coordinator"],
        address=config.listen,
        interceptors=[IdentityInterceptor(), TrafficInterceptor(federation.traffic)],
        credentials=server_credentials(_tls(certs, "coordinator")),
    )
    yield Served(federation, handle.port, certs)
    await handle.stop(0)
    state.close()


def _join(client_id: str) -> coordinator_pb2.JoinRequest:
    return coordinator_pb2.JoinRequest(
        client_id=client_id,
        metadata_json=json.dumps({"site": client_id}),
        capabilities=common_pb2.ClientCapabilities(model_fingerprint="fp", strategy="clustered"),
        num_train_examples=5,
    )


def _md(client_id: str) -> tuple[tuple[str, str], ...]:
    return ((CLIENT_ID_METADATA_KEY, client_id),)


@pytest.mark.asyncio
async def test_a_client_acts_as_itself(served: Served) -> None:
    async with served.channel("alice") as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        reply = await stub.Join(_join("alice"), metadata=_md("alice"), timeout=TIMEOUT)
        assert reply.initial_model_requested
        reply = await stub.Join(_join("alice"), timeout=TIMEOUT)  # the header is optional
    # traffic is counted under the certificate's identity
    assert served.federation.traffic.get(0, "alice")[0] > 0


@pytest.mark.asyncio
async def test_a_message_naming_another_client_is_refused(served: Served) -> None:
    async with served.channel("alice") as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Join(_join("bob"), timeout=TIMEOUT)
        assert info.value.code() is Code.PERMISSION_DENIED
        assert "'alice' may not act for client 'bob'" in (info.value.details() or "")
        await stub.Join(_join("alice"), timeout=TIMEOUT)
        payload = encode_tensors({"prompt.global": np.zeros((2, 2), np.float32)})
        header, chunks = payload_messages(payload)

        async def upload() -> AsyncIterator[coordinator_pb2.UploadUpdateRequest]:
            yield coordinator_pb2.UploadUpdateRequest(
                header=coordinator_pb2.UpdateHeader(
                    client_id="bob",
                    round=0,
                    kind=coordinator_pb2.UPDATE_KIND_INITIAL,
                    payload=header,
                )
            )
            for chunk in chunks:
                yield coordinator_pb2.UploadUpdateRequest(chunk=chunk)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.UploadUpdate(upload(), timeout=TIMEOUT)
        assert info.value.code() is Code.PERMISSION_DENIED
        for call in (
            stub.ReportMetrics(
                coordinator_pb2.ReportMetricsRequest(client_id="bob", round=1), timeout=TIMEOUT
            ),
            stub.FetchModel(
                coordinator_pb2.FetchModelRequest(client_id="bob", round=1), timeout=TIMEOUT
            ).read(),
            stub.StreamTasks(
                coordinator_pb2.StreamTasksRequest(client_id="bob"), timeout=TIMEOUT
            ).read(),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() is Code.PERMISSION_DENIED
    assert "bob" not in {c.client_id for c in served.federation.status().clients}


@pytest.mark.asyncio
async def test_a_header_naming_another_client_is_refused(served: Served) -> None:
    async with served.channel("bob") as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Join(_join("bob"), metadata=_md("alice"), timeout=TIMEOUT)
        assert info.value.code() is Code.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetStatus(
                coordinator_pb2.GetStatusRequest(), metadata=_md("alice"), timeout=TIMEOUT
            )
        assert info.value.code() is Code.PERMISSION_DENIED
    # nothing was counted for the impersonated client
    assert served.federation.traffic.get(0, "alice") == (0, 0)


@pytest.mark.asyncio
async def test_without_a_client_certificate_nothing_connects(served: Served) -> None:
    async with create_channel(f"127.0.0.1:{served.port}") as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Join(_join("alice"), timeout=TIMEOUT)
        assert info.value.code() is Code.UNAVAILABLE
    ca_only = grpc.ssl_channel_credentials(root_certificates=(served.certs / "ca.crt").read_bytes())
    async with create_channel(f"127.0.0.1:{served.port}", credentials=ca_only) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Join(_join("alice"), timeout=TIMEOUT)
        assert info.value.code() is Code.UNAVAILABLE
