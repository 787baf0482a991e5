"""docker-compose.yml validates with the compose v2 binary and wires the federation right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedprompt_client_agent.__main__ import parse_args as client_args
from fedprompt_clusterer.__main__ import parse_args as clusterer_args
from fedprompt_coordinator.__main__ import parse_args as coordinator_args

from .conftest import REPO, compose_binary, run

COMPOSE = REPO / "docker-compose.yml"
MTLS = REPO / "docker-compose.mtls.yml"
CLIENTS = ["client-0", "client-1", "client-2"]
TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca", "--insecure")


def resolved(*files: Path, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The compose model after interpolation and merging, as the compose binary prints it."""
    cmd: list[str | Path] = [compose_binary()]
    for f in files:
        cmd += ["-f", f]
    for p in profiles:
        cmd += ["--profile", p]
    result = run([*cmd, "config", "--format", "json"], cwd=REPO)
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


@pytest.mark.parametrize(
    ("files", "profiles"),
    [((COMPOSE,), ()), ((COMPOSE,), ("gpu",)), ((COMPOSE, MTLS), ()), ((COMPOSE, MTLS), ("gpu",))],
    ids=["default", "gpu", "mtls", "mtls-gpu"],
)
def test_compose_files_validate(files: tuple[Path, ...], profiles: tuple[str, ...]) -> None:
    cmd: list[str | Path] = [compose_binary()]
    for f in files:
        cmd += ["-f", f]
    for p in profiles:
        cmd += ["--profile", p]
    result = run([*cmd, "config", "--quiet"], cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_an_invalid_compose_file_is_rejected(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["coordinator"]["depends_on"]["no-such-service"] = {
        "condition": "service_healthy"
    }
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = run([compose_binary(), "-f", path, "config", "--quiet"], cwd=REPO)
    assert result.returncode != 0
    assert "no-such-service" in result.stderr


def test_every_silo_has_its_own_data_and_prompt_volumes() -> None:
    services = resolved(COMPOSE, profiles=("gpu",))["services"]
    data, state = set(), set()
    for name in [*CLIENTS, "client-gpu"]:
        mounts = {v["target"]: v for v in services[name]["volumes"]}
        d = mounts["/var/lib/fedprompt/data"]
        s = mounts["/var/lib/fedprompt/state"]
        assert d["type"] == s["type"] == "volume"
        assert d.get("read_only") is True  # a silo cannot change its own partition
        data.add(d["source"])
        state.add(s["source"])
    assert len(data) == len(state) == 4 and not data & state
    written = {v["source"] for v in services["silo-data"]["volumes"]}
    assert data == written


def test_the_gpu_silo_reserves_a_gpu_and_uses_the_cuda_image() -> None:
    services = resolved(COMPOSE, profiles=("gpu",))["services"]
    gpu = services["client-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert gpu["build"]["args"]["FLAVOUR"] == "cuda"
    assert gpu["image"].endswith("-cuda")
    assert "client-gpu" not in resolved(COMPOSE)["services"]  # only with --profile gpu


def test_prometheus_scrapes_every_service_that_exposes_metrics() -> None:
    services = resolved(COMPOSE, profiles=("gpu",))["services"]
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {
        t.split(":")[0]
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for t in static["targets"]
    }
    exposing = {"coordinator", "clusterer", *CLIENTS, "client-gpu"}
    assert exposing <= set(services)
    assert exposing <= targets
    silos = {
        static["labels"]["silo"]
        for job in config["scrape_configs"]
        if job["job_name"] == "fedprompt-silo"
        for static in job["static_configs"]
    }
    assert silos == {"clinic-0", "clinic-1", "clinic-2", "clinic-3"}


def _strip_tls(args: list[str], parser_help: str) -> list[str]:
    """Drop TLS flags a service does not know yet (they arrive with the mTLS work)."""
    return [a for a in args if not (a.startswith(TLS_FLAGS) and a.split("=")[0] not in parser_help)]


@pytest.mark.parametrize("overlay", [False, True], ids=["plaintext", "mtls"])
def test_service_commands_are_flags_the_services_accept(
    overlay: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    files = (COMPOSE, MTLS) if overlay else (COMPOSE,)
    services = resolved(*files, profiles=("gpu",))["services"]
    parsers = {"coordinator": coordinator_args, "clusterer": clusterer_args}
    for name in ("coordinator", "clusterer", *CLIENTS, "client-gpu"):
        parse = parsers.get(name, client_args)
        with pytest.raises(SystemExit):
            parse(["--help"])
        help_text = capsys.readouterr().out
        args = _strip_tls(list(services[name].get("command") or []), help_text)
        parse(args)  # raises SystemExit on an unknown flag or a bad value
    coordinator = coordinator_args(services["coordinator"]["command"][:8])
    assert coordinator.min_clients == 2 and coordinator.expected_clients == 3
    assert coordinator.clusterer == "clusterer:50052"
