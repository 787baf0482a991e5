"""Certificates by role: no silo certificate can serve as the coordinator.

``fedprompt certs`` gives silos (and the operator) client-auth certificates naming only
themselves, refuses silo ids that could name a server, and client agents check that the
server they dial is named ``coordinator``. A server started with a silo's certificate
(or one the old tool made for a silo called ``localhost``, or one naming ``coordinator``
without the server-auth usage) is refused by a real client agent's channel during the TLS
handshake, while the coordinator's certificate carries a whole round.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedprompt.tls import (
    COORDINATOR_IDENTITY,
    TlsConfig,
    channel_credentials,
    expected_server_name,
)
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_cli.__main__ import main as fedprompt_main
from fedprompt_cli.certs import (
    CLIENT_AUTH,
    SERVER_AUTH,
    issue,
    load_or_create_authority,
    write_certs,
)
from fedprompt_client_agent.agent import ClientAgent, TrainSettings
from fedprompt_coordinator.federation import Federation

Code = grpc.StatusCode
SHARED = ("prompt.global", "prompt.cluster", "head.weight")


class TinyRuntime:
    """A silo's learning runtime in numpy: three small tensors, one step of 'training'."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.num_train_examples = 8
        self.metadata: Mapping[str, object] = {"site": client_id}
        self.capabilities = common_pb2.ClientCapabilities(
            device="cpu",
            model_name="tiny",
            model_fingerprint="fp-roles",
            trainable_tensors=list(SHARED),
            strategy="clustered",
        )
        self._state = {name: np.zeros((1, 2), np.float32) for name in SHARED}

    def shared_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._state.items()}

    def load_shared_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        self._state = {k: np.array(tensors[k], copy=True) for k in SHARED}

    def train(self, settings: TrainSettings) -> dict[str, float]:
        for value in self._state.values():
            value += 0.01
        return {"loss": 1.0}

    def evaluate(self) -> dict[str, float]:
        return {"accuracy": 0.5}

    def save_personal(self) -> None:
        return None


def _tls(certs: Path, name: str) -> TlsConfig:
    return TlsConfig(cert=certs / f"{name}.crt", key=certs / f"{name}.key", ca=certs / "ca.crt")


def _agent(certs: Path, silo: str, port: int, **kwargs: Any) -> ClientAgent:
    """A client agent wired as ``fedprompt-client-agent`` wires it (its TLS settings)."""
    tls = _tls(certs, silo)
    return ClientAgent(
        TinyRuntime(silo),  # type: ignore[arg-type]
        coordinator=f"127.0.0.1:{port}",
        credentials=channel_credentials(tls),
        server_name=expected_server_name(tls, service=COORDINATOR_IDENTITY),
        **kwargs,
    )


@pytest_asyncio.fixture
async def coordinator_as(
    tmp_path: Path, hostile_certs: Path, serve_hostile: Any
) -> AsyncIterator[Any]:
    """Start real coordinators, each presenting the certificate ``<name>.crt`` of ``folder``."""
    numbers = itertools.count()
    async with contextlib.AsyncExitStack() as stack:

        async def start(name: str, folder: Path | None = None) -> tuple[int, Federation]:
            served = await stack.enter_async_context(
                serve_hostile(
                    state_dir=tmp_path / f"state-{name}-{next(numbers)}",
                    min_clients=2,
                    expected_clients=2,
                    tls=_tls(folder or hostile_certs, name),
                )
            )
            return served.port, served.federation

        yield start


HOSTNAME = "hostname verification check failed"
PURPOSE = "unsupported certificate purpose"  # no server-auth usage


async def _refused_by_agent(certs: Path, port: int, because: str) -> None:
    """A client agent's own channel fails the TLS handshake with the server on ``port``."""
    agent = _agent(certs, "honest-a", port)
    request = coordinator_pb2.JoinRequest(
        client_id="honest-a",
        metadata_json="{}",
        capabilities=TinyRuntime("honest-a").capabilities,
        num_train_examples=8,
    )
    async with agent.open_channel() as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Join(request, timeout=10)  # not wait_for_ready: fail at the handshake
    assert info.value.code() is Code.UNAVAILABLE
    why = (info.value.debug_error_string() or "").lower()
    assert because in why, why


@pytest.mark.asyncio
async def test_the_coordinator_certificate_carries_a_round_for_real_client_agents(
    coordinator_as: Any, hostile_certs: Path
) -> None:
    port, federation = await coordinator_as("coordinator")
    agents = [_agent(hostile_certs, silo, port) for silo in ("honest-a", "honest-b")]
    messages = await asyncio.wait_for(asyncio.gather(*(a.run() for a in agents)), 60)
    assert all("completed 1 rounds" in m for m in messages)
    assert federation.status().completed_rounds == 1


@pytest.mark.asyncio
async def test_a_silo_certificate_cannot_serve_as_the_coordinator(
    coordinator_as: Any, hostile_certs: Path
) -> None:
    port, federation = await coordinator_as("mallory")  # a silo's cert and key
    await _refused_by_agent(hostile_certs, port, PURPOSE)
    assert len(federation.status().clients) == 0  # not one call got through the handshake


@pytest.mark.asyncio
async def test_the_operator_certificate_cannot_serve_either(
    coordinator_as: Any, hostile_certs: Path
) -> None:
    port, federation = await coordinator_as("operator")
    await _refused_by_agent(hostile_certs, port, PURPOSE)
    assert len(federation.status().clients) == 0


def _write(folder: Path, name: str, key: Any, cert: x509.Certificate) -> None:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.mark.asyncio
async def test_legacy_or_misissued_silo_certificates_are_refused_too(
    coordinator_as: Any, hostile_certs: Path, tmp_path: Path
) -> None:
    """Both checks hold on their own: the coordinator's name, and the server-auth usage."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    for name in ("ca.crt", "ca.key", "honest-a.crt", "honest-a.key"):
        (folder / name).write_bytes((hostile_certs / name).read_bytes())
    authority, created = load_or_create_authority(folder)
    assert not created
    # what the old tool issued to a silo called `localhost`: server + client auth
    key, cert = issue(
        authority, "localhost", sans=["localhost", "127.0.0.1"], usages=(SERVER_AUTH, CLIENT_AUTH)
    )
    _write(folder, "localhost", key, cert)
    port, _ = await coordinator_as("localhost", folder)
    await _refused_by_agent(folder, port, HOSTNAME)  # it does not name `coordinator`
    # a certificate that names `coordinator` but may only dial (a silo's usages)
    key, cert = issue(authority, "coordinator", sans=["coordinator"], usages=(CLIENT_AUTH,))
    _write(folder, "coordinator", key, cert)
    port, _ = await coordinator_as("coordinator", folder)
    await _refused_by_agent(folder, port, PURPOSE)  # not for serving


def test_certs_refuse_silo_ids_that_could_name_a_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for silo in ("localhost", "coordinator", "operator", "127.0.0.1", "::1", "coord.example.org"):
        argv = ["certs", "--out", str(tmp_path), "--silo", silo, "--san", "coord.example.org"]
        assert fedprompt_main(argv) == 2, silo
        assert "silo id" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.crt"))


def test_every_role_has_only_its_usages(hostile_certs: Path) -> None:
    def usages(name: str) -> set[x509.ObjectIdentifier]:
        cert = x509.load_pem_x509_certificate((hostile_certs / f"{name}.crt").read_bytes())
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)

    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    assert usages("coordinator") == {server, client}
    assert usages("clusterer") == {server, client}  # its own health probe presents it
    assert usages("operator") == usages("mallory") == usages("honest-a") == {client}


@pytest.mark.asyncio
async def test_the_operator_identity_is_no_client_id(
    coordinator_as: Any, hostile_certs: Path
) -> None:
    port, _ = await coordinator_as("coordinator")
    from fedprompt.server import create_channel

    channel = create_channel(
        f"127.0.0.1:{port}",
        credentials=channel_credentials(_tls(hostile_certs, "operator")),
        server_name=COORDINATOR_IDENTITY,
    )
    async with channel:
        request = coordinator_pb2.JoinRequest(
            client_id="operator",
            metadata_json="{}",
            capabilities=TinyRuntime("operator").capabilities,
            num_train_examples=1,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await coordinator_pb2_grpc.CoordinatorStub(channel).Join(request, timeout=10)
    assert info.value.code() is Code.INVALID_ARGUMENT
    assert "reserved" in (info.value.details() or "")


def test_a_fresh_folder_gets_the_operator_only_when_asked(tmp_path: Path) -> None:
    write_certs(tmp_path, silos=["s1"])
    assert not (tmp_path / "operator.crt").exists()
    write_certs(tmp_path, operator=True)
    assert (tmp_path / "operator.crt").exists()
