"""Tests of the shared /metrics endpoint and the gRPC health-check command."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from prometheus_client import Gauge

from fedprompt import healthcheck
from fedprompt.server import ServerHandle, start_server
from fedprompt.telemetry import new_registry, serve_metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_zero_serves_nothing() -> None:
    assert serve_metrics(new_registry(), host="127.0.0.1", port=0) is None


def test_metrics_endpoint_serves_the_registry_and_frees_its_port() -> None:
    registry = new_registry()
    Gauge("fedprompt_test_value", "A test gauge.", registry=registry).set(7)
    port = free_port()
    server = serve_metrics(registry, host="127.0.0.1", port=port)
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.close()
    assert "fedprompt_test_value 7.0" in text
    assert "process_cpu_seconds_total" in text
    with socket.socket() as s:  # closed: nobody listens there any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_a_taken_port_raises_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            serve_metrics(new_registry(), host="127.0.0.1", port=s.getsockname()[1])


@pytest_asyncio.fixture
async def server() -> AsyncIterator[ServerHandle]:
    handle = await start_server(
        register=lambda s: None, service_names=["fedprompt.v1.Test"], address="127.0.0.1:0"
    )
    try:
        yield handle
    finally:
        await handle.stop(0)


@pytest.mark.asyncio
async def test_healthcheck_reports_serving_and_unknown_services(server: ServerHandle) -> None:
    target = f"127.0.0.1:{server.port}"
    assert await healthcheck.check(target, service="fedprompt.v1.Test") == "SERVING"
    await server.health.enter_graceful_shutdown()
    assert await healthcheck.check(target) == "NOT_SERVING"


@pytest.mark.asyncio
async def test_healthcheck_cli_exit_codes(
    server: ServerHandle, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(healthcheck.TARGET_ENV, f"127.0.0.1:{server.port}")
    # the command runs its own event loop: in a thread, while this loop serves
    assert await asyncio.to_thread(healthcheck.main, ["--service", "fedprompt.v1.Test"]) == 0
    assert "SERVING" in capsys.readouterr().out
    port = free_port()  # nothing listens there
    unreachable = ["--target", f"127.0.0.1:{port}", "--timeout-s", "0.5"]
    assert await asyncio.to_thread(healthcheck.main, unreachable) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
    monkeypatch.delenv(healthcheck.TARGET_ENV)
    assert await asyncio.to_thread(healthcheck.main, []) == 2
    half_tls = ["--target", "x:1", "--tls-cert", "c.pem"]
    assert await asyncio.to_thread(healthcheck.main, half_tls) == 2
