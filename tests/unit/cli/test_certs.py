"""``fedprompt certs`` and mutual TLS between real aio servers and channels on loopback."""

from __future__ import annotations

import ipaddress
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedprompt.server import ServerHandle, create_channel, start_server
from fedprompt.tls import (
    AllowedPeersInterceptor,
    TlsConfig,
    TlsError,
    channel_credentials,
    server_credentials,
)
from fedprompt.v1 import clusterer_pb2, clusterer_pb2_grpc
from fedprompt_cli.__main__ import main
from fedprompt_cli.certs import CertError, subject_common_name, write_certs

Code = grpc.StatusCode


def _tls(certs: Path, name: str) -> TlsConfig:
    return TlsConfig(cert=certs / f"{name}.crt", key=certs / f"{name}.key", ca=certs / "ca.crt")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    write_certs(out, silos=["clinic-a", "clinic-b"], extra_sans=["coord.example.org"])
    return out


def test_files_names_and_subjects(certs: Path) -> None:
    names = {p.name for p in certs.iterdir()}
    assert names == {
        f"{n}.{ext}"
        for n in ("ca", "coordinator", "clusterer", "clinic-a", "clinic-b")
        for ext in ("crt", "key")
    }
    for name in ("coordinator", "clusterer", "clinic-a"):
        assert subject_common_name(certs / f"{name}.crt") == name
        assert stat.S_IMODE((certs / f"{name}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((certs / "ca.key").stat().st_mode) == 0o600


def test_service_sans_and_usages(certs: Path) -> None:
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    for name in ("coordinator", "clusterer"):
        cert = x509.load_pem_x509_certificate((certs / f"{name}.crt").read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", name, "coord.example.org"} <= set(
            san.get_values_for_type(x509.DNSName)
        )
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _usages(path: Path) -> set[x509.ObjectIdentifier]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_each_role_gets_only_its_usages(tmp_path: Path) -> None:
    write_certs(tmp_path, silos=["clinic-a"], operator=True)
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    assert _usages(tmp_path / "coordinator.crt") == {server, client}  # it dials the clusterer
    assert _usages(tmp_path / "clusterer.crt") == {server, client}  # its health probe dials
    assert _usages(tmp_path / "clinic-a.crt") == {client}
    assert _usages(tmp_path / "operator.crt") == {client}
    assert subject_common_name(tmp_path / "operator.crt") == "operator"
    silo = x509.load_pem_x509_certificate((tmp_path / "clinic-a.crt").read_bytes())
    san = silo.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["clinic-a"]
    assert san.get_values_for_type(x509.IPAddress) == []


def test_existing_ca_is_reused_for_new_silos(tmp_path: Path) -> None:
    write_certs(tmp_path, silos=["a"])
    ca_before = (tmp_path / "ca.crt").read_bytes()
    coord_before = (tmp_path / "coordinator.crt").read_bytes()
    written = write_certs(tmp_path, silos=["a", "b"])
    assert written == [tmp_path / "b.crt", tmp_path / "b.key"]
    assert (tmp_path / "ca.crt").read_bytes() == ca_before
    assert (tmp_path / "coordinator.crt").read_bytes() == coord_before
    ca = x509.load_pem_x509_certificate(ca_before)
    x509.load_pem_x509_certificate((tmp_path / "b.crt").read_bytes()).verify_directly_issued_by(ca)


@pytest.mark.parametrize(
    ("silo", "reason"),
    [
        ("coordinator", "reserved"),
        ("Coordinator", "reserved"),
        ("clusterer", "reserved"),
        ("operator", "reserved"),
        ("ca", "reserved"),
        ("localhost", "reserved"),
        ("LOCALHOST", "reserved"),
        ("127.0.0.1", "IP address"),
        ("10.0.0.5", "IP address"),
        ("coord.example.org", "--san"),
        ("../x", "1-128"),
        ("", "1-128"),
        ("a b", "1-128"),
    ],
)
def test_bad_reserved_or_server_like_silo_ids_are_refused(
    tmp_path: Path, silo: str, reason: str
) -> None:
    with pytest.raises(CertError, match=reason):
        write_certs(tmp_path, silos=[silo], extra_sans=["coord.example.org"])
    assert not (tmp_path / f"{silo}.key").exists() or silo in {"coordinator", "clusterer"}


def test_cli_writes_files_and_refuses_bad_ids(tmp_path: Path) -> None:
    assert main(["certs", "--out", str(tmp_path), "--silo", "s1", "--san", "10.0.0.5"]) == 0
    assert (tmp_path / "s1.crt").exists() and (tmp_path / "clusterer.key").exists()
    assert main(["certs", "--out", str(tmp_path), "--silo", "clusterer"]) == 2
    assert main(["certs", "--out", str(tmp_path), "--silo", "localhost"]) == 2
    assert not (tmp_path / "operator.crt").exists()
    assert main(["certs", "--out", str(tmp_path), "--operator"]) == 0
    assert (tmp_path / "operator.crt").exists() and (tmp_path / "operator.key").exists()


def test_missing_files_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="fedprompt certs"):
        server_credentials(TlsConfig())
    with pytest.raises(TlsError, match="cannot read"):
        channel_credentials(TlsConfig(cert=tmp_path / "x", key=tmp_path / "y", ca=tmp_path / "z"))


def test_insecure_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert server_credentials(TlsConfig(insecure=True), role="clusterer") is None
    assert "WITHOUT TLS" in caplog.text


class _Echo(clusterer_pb2_grpc.ClustererServicer):
    async def Cluster(  # noqa: N802 - gRPC method name
        self, request: clusterer_pb2.ClusterRequest, context: object
    ) -> clusterer_pb2.ClusterResponse:
        return clusterer_pb2.ClusterResponse(num_clusters=len(request.members))


@pytest_asyncio.fixture
async def clusterer_like(certs: Path) -> AsyncIterator[ServerHandle]:
    """A Cluster service with mutual TLS that accepts the coordinator's certificate only."""
    handle = await start_server(
        register=lambda s: clusterer_pb2_grpc.add_ClustererServicer_to_server(_Echo(), s),
        service_names=["fedprompt.v1.Clusterer"],
        address="127.0.0.1:0",
        interceptors=[AllowedPeersInterceptor({"coordinator"})],
        credentials=server_credentials(_tls(certs, "clusterer")),
    )
    yield handle
    await handle.stop(0)


async def _cluster(port: int, credentials: grpc.ChannelCredentials | None) -> int:
    async with create_channel(f"127.0.0.1:{port}", credentials=credentials) as channel:
        stub = clusterer_pb2_grpc.ClustererStub(channel)
        request = clusterer_pb2.ClusterRequest(members=[clusterer_pb2.MemberMetadata()])
        response = await stub.Cluster(request, timeout=10)
        return response.num_clusters


@pytest.mark.asyncio
async def test_coordinator_certificate_is_accepted(
    clusterer_like: ServerHandle, certs: Path
) -> None:
    creds = channel_credentials(_tls(certs, "coordinator"))
    assert await _cluster(clusterer_like.port, creds) == 1


@pytest.mark.asyncio
async def test_a_silo_certificate_is_refused_by_the_clusterer(
    clusterer_like: ServerHandle, certs: Path
) -> None:
    creds = channel_credentials(_tls(certs, "clinic-a"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _cluster(clusterer_like.port, creds)
    assert info.value.code() is Code.PERMISSION_DENIED
    assert "clinic-a" in (info.value.details() or "")
    # health checks answer any federation certificate (probes)
    async with create_channel(f"127.0.0.1:{clusterer_like.port}", credentials=creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.asyncio
async def test_plaintext_and_foreign_ca_clients_cannot_connect(
    clusterer_like: ServerHandle, tmp_path: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _cluster(clusterer_like.port, None)
    assert info.value.code() is Code.UNAVAILABLE
    foreign = tmp_path / "foreign"
    write_certs(foreign)  # a different CA that issued its own "coordinator"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _cluster(clusterer_like.port, channel_credentials(_tls(foreign, "coordinator")))
    assert info.value.code() is Code.UNAVAILABLE
