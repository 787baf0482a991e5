"""A real Prometheus (Debian package) scrapes a running federation and sees rounds arrive.

Coordinator and two client agents run as processes on 127.0.0.1 with ``--metrics-port``;
Prometheus scrapes them every second; the test polls Prometheus' query API (never sleeps a
fixed time) until the coordinator's completed round and the silos' training show up there.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedprompt_cli.processes import Child, console_script, stop_all

from .conftest import system_tool

pytestmark = pytest.mark.integration

SILOS = 2
TIMEOUT_S = 420.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(prometheus: int, expr: str) -> list[dict[str, Any]]:
    """Instant query against Prometheus' HTTP API; returns the result vector."""
    url = f"http://127.0.0.1:{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def poll(prometheus: int, expr: str, children: list[Child], what: str) -> list[dict[str, Any]]:
    """Poll until ``expr`` returns a non-empty vector; fail early if a process died."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for child in children:
            if child.name == "coordinator" or child.poll() not in (None, 0):
                child.check()
        try:
            result = query(prometheus, expr)
        except OSError:
            result = []  # Prometheus still starting
        if result:
            return result
        time.sleep(0.5)
    logs = "\n".join(f"--- {c.name}\n{c.log_tail()}" for c in children)
    raise AssertionError(f"Prometheus never saw {what} ({expr})\n{logs}")


@pytest.fixture
def silos(tmp_path: Path) -> Path:
    out = tmp_path / "silos"
    subprocess.run(
        [console_script("fedprompt-make-silos"), "--num-silos", str(SILOS), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    try:
        yield started
    finally:
        stop_all(started)


def test_prometheus_scrapes_rounds_from_a_running_federation(
    tmp_path: Path, silos: Path, children: list[Child]
) -> None:
    prometheus_bin = system_tool("prometheus", "prometheus")
    coordinator_metrics = free_port()
    client_metrics = [free_port() for _ in range(SILOS)]
    web = free_port()
    logs = tmp_path / "logs"

    coordinator = Child(
        "coordinator",
        [
            console_script("fedprompt-coordinator"),
            "--listen", "127.0.0.1:0",
            "--insecure",
            "--state-dir", str(tmp_path / "coordinator"),
            "--rounds", "1",
            "--min-clients", str(SILOS),
            "--expected-clients", str(SILOS),
            "--local-steps", "2",
            "--batch-size", "8",
            "--metrics-port", str(coordinator_metrics),
            "--metrics-host", "127.0.0.1",
        ],
        logs / "coordinator.log",
    )  # fmt: skip
    coordinator.start()
    children.append(coordinator)
    port = coordinator.wait_for_port()

    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "fedprompt-coordinator",
                "static_configs": [{"targets": [f"127.0.0.1:{coordinator_metrics}"]}],
            },
            {
                "job_name": "fedprompt-silo",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{p}"], "labels": {"silo": f"silo-{i}"}}
                    for i, p in enumerate(client_metrics)
                ],
            },
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prometheus = Child(
        "prometheus",
        [
            str(prometheus_bin),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ],
        logs / "prometheus.log",
    )
    prometheus.start()
    children.append(prometheus)

    # the coordinator is scraped before any client exists: round 0, waiting for quorum
    up = poll(web, 'up{job="fedprompt-coordinator"} == 1', children, "the coordinator up")
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{coordinator_metrics}"
    (waiting,) = poll(
        web, 'fedprompt_phase{phase="waiting_for_quorum"} == 1', children, "the first phase"
    )
    assert waiting["value"][1] == "1"

    for i, silo in enumerate(sorted(p for p in silos.iterdir() if p.is_dir())):
        client = Child(
            silo.name,
            [
                console_script("fedprompt-client-agent"),
                "--client-id", f"silo-{i}",
                "--coordinator", f"127.0.0.1:{port}",
                "--data-dir", str(silo),
                "--state-dir", str(tmp_path / "clients" / silo.name),
                "--max-length", "32",
                "--torch-threads", "1",
                "--device", "cpu",
                "--insecure",
                "--metrics-port", str(client_metrics[i]),
            ],
            logs / f"{silo.name}.log",
        )  # fmt: skip
        client.start()
        children.append(client)

    (completed,) = poll(web, "fedprompt_rounds_completed >= 1", children, "a completed round")
    assert completed["value"][1] == "1"
    (rounds,) = poll(
        web, 'fedprompt_rounds_total{status="completed"} >= 1', children, "the round counter"
    )
    (duration,) = query(web, "fedprompt_round_duration_seconds_count")
    assert duration["value"][1] == "1"
    (participants,) = query(web, "fedprompt_round_participants")
    assert participants["value"][1] == str(SILOS)
    (traffic,) = query(web, 'fedprompt_traffic_bytes_total{direction="up"}')
    assert float(traffic["value"][1]) > 10_000  # the prompts travelled
    trained = poll(
        web,
        "max_over_time(fedprompt_client_rounds_trained_total[10m]) >= 1",
        children,
        "the silos' training",
    )
    assert sorted(r["metric"]["silo"] for r in trained) == [f"silo-{i}" for i in range(SILOS)]
    assert rounds["metric"]["job"] == "fedprompt-coordinator"
