"""Coordinator + clusterer + 3 client agents as real processes, 2 real rounds of prompt tuning.

Every channel is mutual TLS with certificates from ``fedprompt certs``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedprompt.codec import decode_tensors
from fedprompt.server import channel_options
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_cli.processes import Child, stop_all
from fedprompt_cli.processes import console_script as script

pytestmark = pytest.mark.integration

ROUNDS = 2


@pytest.fixture
def federation(tmp_path: Path, silos_root: Path, tls_flags: Callable[[str], list[str]]):  # type: ignore[no-untyped-def]
    """Start the three services; yield (coordinator port, state dir, clients); stop them."""
    children: list[Child] = []
    try:
        clusterer = Child(
            "clusterer",
            [script("fedprompt-clusterer"), "--listen", "127.0.0.1:0", *tls_flags("clusterer")],
            tmp_path / "logs" / "clusterer.log",
        )
        clusterer.start()
        children.append(clusterer)
        cport = clusterer.wait_for_port()
        state_dir = tmp_path / "coordinator"
        coordinator = Child(
            "coordinator",
            [
                script("fedprompt-coordinator"),
                "--listen", "127.0.0.1:0",
                "--state-dir", str(state_dir),
                "--rounds", str(ROUNDS),
                "--min-clients", "3",
                "--expected-clients", "3",
                "--clusterer", f"127.0.0.1:{cport}",
                "--local-steps", "3",
                "--batch-size", "8",
                *tls_flags("coordinator"),
            ],
            tmp_path / "logs" / "coordinator.log",
        )  # fmt: skip
        coordinator.start()
        children.append(coordinator)
        port = coordinator.wait_for_port()
        clients = []
        for silo in sorted(p for p in silos_root.iterdir() if p.is_dir()):
            child = Child(
                silo.name,
                [
                    script("fedprompt-client-agent"),
                    "--client-id", silo.name,
                    "--coordinator", f"127.0.0.1:{port}",
                    "--data-dir", str(silo),
                    "--state-dir", str(tmp_path / "clients" / silo.name),
                    "--max-length", "32",
                    "--torch-threads", "1",
                    "--device", "cpu",
                    *tls_flags(silo.name),
                ],
                tmp_path / "logs" / f"{silo.name}.log",
            )  # fmt: skip
            child.start()
            children.append(child)
            clients.append(child)
        yield port, state_dir, clients, tmp_path
    finally:
        stop_all(children)


def _wait_done(
    stub: coordinator_pb2_grpc.CoordinatorStub, clients: list[Child], timeout_s: float
) -> coordinator_pb2.GetStatusResponse:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in clients:
            child.check()
        status = stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)
        if status.completed_rounds >= ROUNDS and status.phase == common_pb2.ROUND_PHASE_DONE:
            return status
        time.sleep(0.3)
    raise AssertionError("federation did not finish in time")


def test_two_rounds_with_real_processes(federation, certs: Path) -> None:  # type: ignore[no-untyped-def]
    port, state_dir, clients, tmp_path = federation
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / "operator.key").read_bytes(),
        certificate_chain=(certs / "operator.crt").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=channel_options()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        status = _wait_done(stub, clients, timeout_s=480)

    # every client took part in both rounds and reported accuracy
    completed = [r for r in status.rounds if r.status == "completed"]
    assert [r.round for r in completed] == [1, 2]
    names = sorted(c.name for c in clients)
    for r in completed:
        assert sorted(c.client_id for c in r.clients) == names
        for c in r.clients:
            assert c.update_accepted
            assert 0.0 <= c.eval_metrics["accuracy"] <= 1.0
            assert "pre_accuracy" in c.train_metrics and "post_accuracy" in c.train_metrics
            assert c.bytes_up > 10_000 and c.bytes_down > 10_000  # prompts travelled
        assert "accuracy_mean" in r.summary and "jain_index" in r.summary

    # every server ran mutual TLS, and no private key reached a log
    logs = tmp_path / "logs"
    assert "(mutual TLS)" in (logs / "coordinator.log").read_text()
    assert "(mutual TLS)" in (logs / "clusterer.log").read_text()
    for log in logs.glob("*.log"):
        assert "PRIVATE KEY" not in log.read_text()

    # the state database holds both rounds
    db = sqlite3.connect(state_dir / "state.sqlite3")
    rows = db.execute("SELECT round, status FROM rounds ORDER BY round").fetchall()
    assert rows == [(1, "completed"), (2, "completed")]
    n = db.execute("SELECT COUNT(*) FROM client_rounds WHERE update_accepted=1").fetchone()[0]
    assert n == 3 * ROUNDS
    db.close()

    # the shared prompts changed: round-2 snapshot differs from the initial model
    models = state_dir / "models"
    initial = decode_tensors((models / "round-000000" / "global.safetensors").read_bytes())
    final = decode_tensors((models / "round-000002" / "global.safetensors").read_bytes())
    assert set(initial) == {"prompt.global"}
    assert not np.allclose(initial["prompt.global"], final["prompt.global"])
    template = decode_tensors((models / "round-000000" / "template.safetensors").read_bytes())
    for cluster_file in (models / "round-000002").glob("cluster-*.safetensors"):
        tensors = decode_tensors(cluster_file.read_bytes())
        assert set(tensors) == set(template) == {"prompt.cluster", "head.weight", "head.bias"}
        assert not np.allclose(tensors["prompt.cluster"], template["prompt.cluster"])

    # clients exited cleanly and kept their personal prompt (incl. the local segment)
    for child in clients:
        assert child.process is not None
        assert child.process.wait(60) == 0
        personal = decode_tensors(
            (tmp_path / "clients" / child.name / "personal_prompt.safetensors").read_bytes()
        )
        assert "prompt.local" in personal
