"""Mutual TLS between real service processes: identities, refusals, --insecure, no secrets logged.

These tests start the coordinator and the clusterer as processes (no client agents: the
callers are raw gRPC stubs holding silo certificates from ``fedprompt certs``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from fedprompt.server import CLIENT_ID_METADATA_KEY, channel_options
from fedprompt.v1 import (
    clusterer_pb2,
    clusterer_pb2_grpc,
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
)
from fedprompt_cli.processes import Child, stop_all
from fedprompt_cli.processes import console_script as script

pytestmark = pytest.mark.integration
Code = grpc.StatusCode


def _creds(certs: Path, name: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{name}.key").read_bytes(),
        certificate_chain=(certs / f"{name}.crt").read_bytes(),
    )


def _join(client_id: str) -> coordinator_pb2.JoinRequest:
    return coordinator_pb2.JoinRequest(
        client_id=client_id,
        metadata_json=json.dumps({"site": client_id}),
        capabilities=common_pb2.ClientCapabilities(model_fingerprint="fp", strategy="fpl"),
        num_train_examples=3,
    )


@pytest.fixture
def services(
    tmp_path: Path, tls_flags: Callable[[str], list[str]]
) -> Iterator[tuple[int, int, Path]]:
    """Clusterer + coordinator with mutual TLS; yields (coordinator port, clusterer port, logs)."""
    logs = tmp_path / "logs"
    children: list[Child] = []
    try:
        clusterer = Child(
            "clusterer",
            [script("fedprompt-clusterer"), "--listen", "127.0.0.1:0", *tls_flags("clusterer")],
            logs / "clusterer.log",
        )
        clusterer.start()
        children.append(clusterer)
        cport = clusterer.wait_for_port()
        coordinator = Child(
            "coordinator",
            [script("fedprompt-coordinator"), "--listen", "127.0.0.1:0",
             "--state-dir", str(tmp_path / "state"), "--clusterer", f"127.0.0.1:{cport}",
             *tls_flags("coordinator")],
            logs / "coordinator.log",
        )  # fmt: skip
        coordinator.start()
        children.append(coordinator)
        yield coordinator.wait_for_port(), cport, logs
    finally:
        stop_all(children)


def test_silos_act_only_as_themselves(services: tuple[int, int, Path], certs: Path) -> None:
    port, _, logs = services
    target = f"127.0.0.1:{port}"
    with grpc.secure_channel(target, _creds(certs, "probe-a"), channel_options()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        reply = stub.Join(_join("probe-a"), timeout=10)
        assert reply.initial_model_requested
        with pytest.raises(grpc.RpcError) as info:
            stub.Join(_join("probe-b"), timeout=10)
        assert info.value.code() is Code.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as info:
            stub.Join(_join("probe-a"), metadata=((CLIENT_ID_METADATA_KEY, "probe-b"),), timeout=10)
        assert info.value.code() is Code.PERMISSION_DENIED
        status = stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)
        assert [c.client_id for c in status.clients] == ["probe-a"]
        assert status.view == coordinator_pb2.STATUS_VIEW_SILO  # its own record only
    with grpc.secure_channel(target, _creds(certs, "probe-b"), channel_options()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        status = stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)
        assert (list(status.clients), status.clients_total) == ([], 1)  # not probe-a's record
    # the operator sees everything, and checks it talks to the coordinator by name
    options = [*channel_options(), ("grpc.ssl_target_name_override", "coordinator")]
    with grpc.secure_channel(target, _creds(certs, "operator"), options) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        status = stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)
        assert status.view == coordinator_pb2.STATUS_VIEW_FULL
        assert [c.client_id for c in status.clients] == ["probe-a"]
    # a plaintext caller does not get through the TLS handshake
    with grpc.insecure_channel(target, channel_options()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Join(_join("probe-b"), timeout=5)
        assert info.value.code() is Code.UNAVAILABLE
    for log in logs.glob("*.log"):
        text = log.read_text()
        assert "PRIVATE KEY" not in text
        for key in certs.glob("*.key"):
            body = key.read_text().splitlines()[1]  # first base64 line of the key
            assert body not in text


def test_the_clusterer_accepts_the_coordinator_certificate_only(
    services: tuple[int, int, Path], certs: Path
) -> None:
    _, cport, _ = services
    request = clusterer_pb2.ClusterRequest(
        members=[
            clusterer_pb2.MemberMetadata(client_id=c, metadata_json=json.dumps({"x": i}))
            for i, c in enumerate(["a", "b", "c", "d"])
        ],
        min_cluster_size=2,
        min_samples=1,
    )
    target = f"127.0.0.1:{cport}"
    with grpc.secure_channel(target, _creds(certs, "coordinator"), channel_options()) as channel:
        reply = clusterer_pb2_grpc.ClustererStub(channel).Cluster(request, timeout=30)
        assert set(reply.assignment) == {"a", "b", "c", "d"}
    with grpc.secure_channel(target, _creds(certs, "probe-a"), channel_options()) as channel:
        with pytest.raises(grpc.RpcError) as info:
            clusterer_pb2_grpc.ClustererStub(channel).Cluster(request, timeout=30)
        assert info.value.code() is Code.PERMISSION_DENIED
        # nor the streamed form (a silo could otherwise keep HDBSCAN busy with 100k members)
        with pytest.raises(grpc.RpcError) as info:
            list(
                clusterer_pb2_grpc.ClustererStub(channel).ClusterStream(iter([request]), timeout=30)
            )
        assert info.value.code() is Code.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("coordinator", ["fedprompt-coordinator", "--listen", "127.0.0.1:0"]),
        ("clusterer", ["fedprompt-clusterer", "--listen", "127.0.0.1:0"]),
        ("client", ["fedprompt-client-agent", "--client-id", "x", "--data-dir", "."]),
    ],
)
def test_no_certificates_and_no_insecure_flag_is_a_clear_error(
    name: str, argv: list[str], tmp_path: Path
) -> None:
    proc = subprocess.run(
        [script(argv[0]), *argv[1:], "--state-dir" if name != "clusterer" else "--log-level",
         str(tmp_path) if name != "clusterer" else "INFO"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "--tls-cert" in out and "--insecure" in out and "fedprompt certs" in out


def test_insecure_is_explicit_and_logged(tmp_path: Path) -> None:
    log = tmp_path / "coordinator.log"
    coordinator = Child(
        "coordinator",
        [script("fedprompt-coordinator"), "--listen", "127.0.0.1:0",
         "--state-dir", str(tmp_path / "state"), "--insecure"],
        log,
    )  # fmt: skip
    coordinator.start()
    try:
        port = coordinator.wait_for_port()
        with grpc.insecure_channel(f"127.0.0.1:{port}", channel_options()) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            # plaintext: the client id is whatever the client says, as before
            stub.Join(_join("anyone"), metadata=((CLIENT_ID_METADATA_KEY, "anyone"),), timeout=10)
    finally:
        stop_all([coordinator])
    text = log.read_text()
    assert "WITHOUT TLS" in text and "(plaintext)" in text
