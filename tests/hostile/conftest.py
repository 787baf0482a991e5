"""Shared fixtures of the hostile tests: real certificates and a coordinator served for real.

Certificates come from the ``fedprompt certs`` code (:func:`fedprompt_cli.certs.write_certs`)
in a temporary folder: the services, the operator and a few silos. :func:`serve_coordinator`
wires a coordinator as ``fedprompt-coordinator`` does (its server factory
:func:`~fedprompt_coordinator.__main__.start_coordinator_server`: mutual TLS, identity and
traffic interceptors, stream limits; the round task running) on 127.0.0.1, port 0; callers dial it as the client
agents do (their certificate, the coordinator's name checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedprompt.server import create_channel
from fedprompt.tls import COORDINATOR_IDENTITY, TlsConfig, channel_credentials, server_credentials
from fedprompt.v1 import coordinator_pb2_grpc
from fedprompt_cli.certs import write_certs
from fedprompt_coordinator.__main__ import open_federation, start_coordinator_server
from fedprompt_coordinator.config import CoordinatorConfig
from fedprompt_coordinator.federation import Federation
from fedprompt_coordinator.state_store import StateStore

#: Silo certificates of the hostile tests: two honest silos and an attacker.
SILOS = ("honest-a", "honest-b", "mallory")


def tls_of(certs: Path, name: str) -> TlsConfig:
    """The TLS settings of the holder of ``<name>.crt``."""
    return TlsConfig(cert=certs / f"{name}.crt", key=certs / f"{name}.key", ca=certs / "ca.crt")


@pytest.fixture(scope="session")
def hostile_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation CA, the service and operator certificates, and one per silo of SILOS."""
    out = tmp_path_factory.mktemp("hostile-certs")
    write_certs(out, silos=SILOS, operator=True)
    return out


@dataclass
class ServedCoordinator:
    """A coordinator served on loopback with mutual TLS, and the means to dial it."""

    federation: Federation
    state: StateStore
    port: int
    certs: Path

    def channel(self, name: str) -> grpc.aio.Channel:
        """A channel holding ``<name>``'s certificate that checks the coordinator's name."""
        return create_channel(
            f"127.0.0.1:{self.port}",
            credentials=channel_credentials(tls_of(self.certs, name)),
            server_name=COORDINATOR_IDENTITY,
        )

    @staticmethod
    def stub(channel: grpc.aio.Channel) -> Any:
        """The Coordinator stub generated from the .proto, over ``channel``."""
        return coordinator_pb2_grpc.CoordinatorStub(channel)


@contextlib.asynccontextmanager
async def serve_coordinator(
    tmp_path: Path, certs: Path, **overrides: Any
) -> AsyncIterator[ServedCoordinator]:
    """Serve a coordinator like ``fedprompt_coordinator.__main__.serve`` until the block ends.

    Parameters
    ----------
    tmp_path
        Where its state lives.
    certs
        The folder of ``fedprompt certs`` files (``coordinator.crt`` is presented, unless
        ``overrides`` give another ``tls``, e.g. ``{"insecure": True}``).
    overrides
        :class:`CoordinatorConfig` fields (a one-round ``clustered`` federation of two by
        default).
    """
    settings: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "state_dir": tmp_path / "state",
        "rounds": 1,
        "strategy": "clustered",
        "min_clients": 2,
        "quorum_wait_s": 0.0,
        "round_deadline_s": 60.0,
        "eval_deadline_s": 60.0,
        "tls": tls_of(certs, COORDINATOR_IDENTITY),
    }
    config = CoordinatorConfig(**{**settings, **overrides})
    state, federation = open_federation(config)
    handle = await start_coordinator_server(
        config, federation, credentials=server_credentials(config.tls, role="coordinator")
    )
    rounds = asyncio.create_task(federation.run(), name="rounds")
    try:
        yield ServedCoordinator(federation, state, handle.port, certs)
    finally:
        await handle.stop(grace=0)
        rounds.cancel()
        await asyncio.wait({rounds}, timeout=10)
        state.close()


#: Starts a coordinator for one test: ``async with serve_hostile(**config_overrides) as c``.
ServeCoordinator = Callable[..., contextlib.AbstractAsyncContextManager[ServedCoordinator]]


@pytest.fixture
def serve_hostile(tmp_path: Path, hostile_certs: Path) -> ServeCoordinator:
    """:func:`serve_coordinator` bound to the test's folder and the hostile certificates."""
    return functools.partial(serve_coordinator, tmp_path, hostile_certs)
