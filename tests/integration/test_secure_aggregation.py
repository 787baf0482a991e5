"""Secure aggregation with real processes: a coordinator and four client agents over mutual
TLS, ``--secure-aggregation`` on; one member is SIGKILLed by PID once the TRAIN tasks are out
(after it sent its keys and shares), and the round completes with the three survivors: its
pairwise masks are removed with its neighbours' shares, the cluster's sum is released.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from fedprompt.server import channel_options
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedprompt_cli.processes import Child, stop_all
from fedprompt_cli.processes import console_script as script

pytestmark = pytest.mark.integration

SILOS = 4
WAIT_S = 240.0


def _tls(certs: Path, name: str) -> list[str]:
    return [
        "--tls-cert", str(certs / f"{name}.crt"),
        "--tls-key", str(certs / f"{name}.key"),
        "--tls-ca", str(certs / "ca.crt"),
    ]  # fmt: skip


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[int, list[Child], Path]]:
    """Four silos, their certificates, the coordinator and four agents; stopped at the end."""
    silos_root = tmp_path / "silos"
    subprocess.run(
        [script("fedprompt-make-silos"), "--num-silos", str(SILOS), "--seed", "0",
         "--out", str(silos_root)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    silos = sorted(p for p in silos_root.iterdir() if p.is_dir())
    certs = tmp_path / "certs"
    argv = [script("fedprompt"), "certs", "--out", str(certs), "--operator"]
    for silo in silos:
        argv += ["--silo", silo.name]
    subprocess.run(argv, check=True, capture_output=True)
    # a killed member's connection is found dead by the keepalive within ~2 s: its stage ends
    config = tmp_path / "coordinator.yaml"
    config.write_text("limits:\n  keepalive_time_s: 1.0\n  keepalive_timeout_s: 1.0\n")
    children: list[Child] = []
    try:
        coordinator = Child(
            "coordinator",
            [
                script("fedprompt-coordinator"),
                "--config", str(config),
                "--listen", "127.0.0.1:0",
                "--state-dir", str(tmp_path / "coordinator"),
                "--rounds", "1",
                "--min-clients", str(SILOS - 1),
                "--expected-clients", str(SILOS),
                "--local-steps", "2",
                "--batch-size", "8",
                "--round-deadline-s", "120",
                "--secure-aggregation",
                *_tls(certs, "coordinator"),
            ],
            tmp_path / "logs" / "coordinator.log",
        )  # fmt: skip
        coordinator.start()
        children.append(coordinator)
        port = coordinator.wait_for_port()
        clients = []
        for silo in silos:
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
                    *_tls(certs, silo.name),
                ],
                tmp_path / "logs" / f"{silo.name}.log",
            )  # fmt: skip
            child.start()
            children.append(child)
            clients.append(child)
        yield port, clients, certs
    finally:
        stop_all(children)


def test_round_completes_without_a_member_killed_mid_round(federation) -> None:  # type: ignore[no-untyped-def]
    port, clients, certs = federation
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / "operator.key").read_bytes(),
        certificate_chain=(certs / "operator.crt").read_bytes(),
    )
    victim = clients[-1]
    survivors = clients[:-1]
    seen_phases: set[int] = set()
    killed = False
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=channel_options()) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        deadline = time.monotonic() + WAIT_S
        while True:
            assert time.monotonic() < deadline, "the secure round did not finish in time"
            for child in survivors:
                child.check()
            status = stub.GetStatus(coordinator_pb2.GetStatusRequest(), timeout=10)
            seen_phases.add(status.phase)
            if not killed and status.phase == common_pb2.ROUND_PHASE_TRAINING:
                # the TRAIN tasks are out: the victim sent its keys and shares; it dies now
                os.kill(victim.pid, signal.SIGKILL)
                killed = True
            if status.completed_rounds >= 1 and status.phase == common_pb2.ROUND_PHASE_DONE:
                break
            time.sleep(0.05)

    assert killed
    assert common_pb2.ROUND_PHASE_TRAINING in seen_phases
    rounds = [r for r in status.rounds if r.status == "completed"]
    assert [r.round for r in rounds] == [1]
    summary = rounds[0].summary
    assert summary["secagg_groups"] == 1
    assert summary["secagg_released"] == 1
    assert summary["secagg_dropped"] == 1
    assert summary["secagg_recovered"] == 1  # it had sent its shares: its masks were removed
    assert summary["secagg_bytes"] > 0
    assert "secagg_key_exchange_seconds" in summary and "secagg_unmask_seconds" in summary
    accepted = {c.client_id: c.update_accepted for c in rounds[0].clients}
    assert accepted == {**{c.name: True for c in survivors}, victim.name: False}
    for c in rounds[0].clients:
        if c.client_id != victim.name:
            assert 0.0 <= c.eval_metrics["accuracy"] <= 1.0
    coordinator_log = (certs.parent / "logs" / "coordinator.log").read_text()
    assert "masked input from" in coordinator_log
    for child in survivors:
        assert child.process is not None
        assert child.process.wait(60) == 0
