"""The coordinator's channel to the clusterer and the silos' health probe check server names.

The coordinator dials the clusterer at whatever address its deployment gives (a Kubernetes
Service name, a compose host) and verifies that the server's certificate names
``clusterer`` (``clustering.server_name``); a server holding another federation
certificate, even the coordinator's own (which has the server-auth usage), is refused
during the TLS handshake. ``fedprompt-healthcheck --tls-server-name`` checks a name the
same way, as the silo chart's readiness probe does for ``coordinator``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from fedprompt import healthcheck
from fedprompt.errors import UpstreamUnavailableError
from fedprompt.server import ServerHandle, start_server
from fedprompt.tls import CLUSTERER_IDENTITY, COORDINATOR_IDENTITY, channel_credentials
from fedprompt.tls import server_credentials as tls_server_credentials
from fedprompt.v1 import clusterer_pb2_grpc
from fedprompt_clusterer.servicer import SERVICE_NAME, ClustererServicer
from fedprompt_coordinator.clustering_backend import GrpcClusteringBackend
from fedprompt_coordinator.config import ClusteringConfig

from .conftest import tls_of

MEMBERS = {
    "a": '{"specialty": "oncology", "region": "north"}',
    "b": '{"specialty": "oncology", "region": "north"}',
    "c": '{"specialty": "pain", "region": "south"}',
    "d": '{"specialty": "pain", "region": "south"}',
}


@contextlib.asynccontextmanager
async def clusterer_as(certs: Path, identity: str) -> AsyncIterator[ServerHandle]:
    """A real clusterer on 127.0.0.1 presenting ``identity``'s certificate."""
    handle = await start_server(
        register=lambda s: clusterer_pb2_grpc.add_ClustererServicer_to_server(
            ClustererServicer(), s
        ),
        service_names=[SERVICE_NAME],
        address="127.0.0.1:0",
        credentials=tls_server_credentials(tls_of(certs, identity), role=identity),
    )
    try:
        yield handle
    finally:
        await handle.stop(0)


async def _assign(certs: Path, port: int, **config: object) -> dict[str, int]:
    backend = GrpcClusteringBackend(
        ClusteringConfig(address=f"127.0.0.1:{port}", retries=0, timeout_s=10, **config),  # type: ignore[arg-type]
        credentials=channel_credentials(tls_of(certs, COORDINATOR_IDENTITY)),
    )
    try:
        return await backend.assign(MEMBERS, {})
    finally:
        await backend.close()


@pytest.mark.asyncio
async def test_the_coordinator_accepts_the_clusterer_by_name_whatever_it_dials(
    hostile_certs: Path,
) -> None:
    async with clusterer_as(hostile_certs, CLUSTERER_IDENTITY) as handle:
        assignment = await _assign(hostile_certs, handle.port)  # default server_name
    assert sorted(assignment) == sorted(MEMBERS)
    assert assignment["a"] == assignment["b"] != assignment["c"] == assignment["d"]


@pytest.mark.asyncio
async def test_another_federation_certificate_cannot_serve_as_the_clusterer(
    hostile_certs: Path,
) -> None:
    # the coordinator's certificate may serve (server-auth), but it does not name `clusterer`
    async with clusterer_as(hostile_certs, COORDINATOR_IDENTITY) as handle:
        with pytest.raises(UpstreamUnavailableError, match="UNAVAILABLE"):
            await _assign(hostile_certs, handle.port)
    # the same server is accepted by a coordinator that expects that name instead
    async with clusterer_as(hostile_certs, COORDINATOR_IDENTITY) as handle:
        assert await _assign(hostile_certs, handle.port, server_name=COORDINATOR_IDENTITY)


@pytest.mark.asyncio
async def test_the_health_probe_checks_the_server_name_it_is_given(hostile_certs: Path) -> None:
    async with clusterer_as(hostile_certs, CLUSTERER_IDENTITY) as handle:
        target = f"127.0.0.1:{handle.port}"
        files = healthcheck.TlsFiles(
            ca=hostile_certs / "ca.crt",
            cert=hostile_certs / "operator.crt",
            key=hostile_certs / "operator.key",
        )
        assert await healthcheck.check(target, tls=files) == "SERVING"  # 127.0.0.1 is a SAN
        named = healthcheck.TlsFiles(**{**files.__dict__, "server_name": CLUSTERER_IDENTITY})
        assert await healthcheck.check(target, tls=named) == "SERVING"
        wrong = healthcheck.TlsFiles(**{**files.__dict__, "server_name": COORDINATOR_IDENTITY})
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the TLS handshake fails
            await healthcheck.check(target, tls=wrong, timeout_s=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
