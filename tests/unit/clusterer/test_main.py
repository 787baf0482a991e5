"""Process test: the clusterer as a subprocess on loopback, stopped by a signal."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import grpc
import pytest

from fedprompt.v1 import clusterer_pb2, clusterer_pb2_grpc

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 30.0


def start_clusterer(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fedprompt_clusterer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def read_port(process: subprocess.Popen[str]) -> int:
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            if line.startswith("LISTENING "):
                return int(line.split()[1])
        elif process.poll() is not None:
            break
    raise AssertionError(f"no LISTENING line; exit code {process.poll()}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_process_serves_and_stops_cleanly_on_signal(signum: signal.Signals) -> None:
    # plaintext (the signal handling is under test here; tests/integration/test_tls.py
    # covers the clusterer's mutual TLS); the tls section is set through the environment
    process = start_clusterer(
        "--listen",
        "127.0.0.1:0",
        env={"FEDPROMPT_CLUSTERER_LOG_LEVEL": "debug", "FEDPROMPT_CLUSTERER_TLS__INSECURE": "true"},
    )
    try:
        port = read_port(process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = clusterer_pb2_grpc.ClustererStub(channel)
            members = [
                clusterer_pb2.MemberMetadata(
                    client_id=f"c{i}", metadata_json=json.dumps({"x": float(x)})
                )
                for i, x in enumerate([-10, -9.9, 10, 10.1])
            ]
            response = stub.Cluster(clusterer_pb2.ClusterRequest(members=members), timeout=30)
        assert response.num_clusters == 2
        assert response.assignment["c0"] == response.assignment["c1"] != response.assignment["c2"]
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "stopped" in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_invalid_config_exits_with_code_2() -> None:
    process = start_clusterer("--listen", "no-port")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "listen" in stderr
