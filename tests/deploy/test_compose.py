"""docker-compose.yml validates with the compose v2 binary and wires the federation right."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedprompt_client_agent.__main__ import parse_args as client_args
from fedprompt_clusterer.__main__ import parse_args as clusterer_args
from fedprompt_coordinator.__main__ import parse_args as coordinator_args

from .conftest import REPO, compose_binary, docker_module, run

COMPOSE = REPO / "docker-compose.yml"
MTLS = REPO / "docker-compose.mtls.yml"
CLIENTS = ["client-0", "client-1", "client-2"]
#: The identity each service of the mTLS overlay holds (its certificate's CN, its volume).
IDENTITIES: dict[str, str] = docker_module("compose_checks").SERVICE_IDENTITIES
TLS_DIR = "/etc/fedprompt/tls"
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


def _tls_volumes(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        v
        for v in service.get("volumes", [])
        if v["type"] == "volume" and str(v["source"]).startswith("tls-")
    ]


@pytest.fixture(scope="module")
def mtls_services() -> dict[str, Any]:
    services: dict[str, Any] = resolved(COMPOSE, MTLS, profiles=("gpu",))["services"]
    return services


def test_only_the_certs_one_shot_mounts_the_ca_volume(mtls_services: dict[str, Any]) -> None:
    holders = {
        name
        for name, service in mtls_services.items()
        for v in _tls_volumes(service)
        if v["source"] == "tls-ca"
    }
    assert holders == {"certs"}
    certs = mtls_services["certs"]
    assert certs["network_mode"] == "none" and certs["restart"] == "no"


def test_every_service_mounts_only_its_own_identity(mtls_services: dict[str, Any]) -> None:
    for name, service in mtls_services.items():
        if name == "certs":
            continue
        mounts = _tls_volumes(service)
        identity = IDENTITIES.get(name)
        if identity is None:  # silo-data, Prometheus, Grafana: no identity at all
            assert not mounts, name
            continue
        (mount,) = mounts
        assert mount["source"] == f"tls-{identity}", name
        assert mount["target"] == TLS_DIR and mount.get("read_only") is True, name
        # the flags and the health probe use the files of that one mount
        command = service["command"]
        assert f"--tls-cert={TLS_DIR}/tls.crt" in command, name
        assert f"--tls-key={TLS_DIR}/tls.key" in command, name
        assert f"--tls-ca={TLS_DIR}/ca.crt" in command, name
        env = service["environment"]
        assert env["FEDPROMPT_HEALTHCHECK_TLS_CERT"] == f"{TLS_DIR}/tls.crt", name
        assert env["FEDPROMPT_HEALTHCHECK_TLS_KEY"] == f"{TLS_DIR}/tls.key", name
        assert env["FEDPROMPT_HEALTHCHECK_TLS_CA"] == f"{TLS_DIR}/ca.crt", name
        assert [v for k, v in env.items() if k.endswith("TLS__INSECURE")] == ["false"], name
        assert not any(k.endswith("TLS__SERVER_NAME") for k in env), name  # checks `coordinator`
        assert "certs" in service["depends_on"], name
    for name in [*CLIENTS, "client-gpu"]:  # a silo's certificate is issued for its client id
        ids = [a for a in mtls_services[name]["command"] if a.startswith("--client-id=")]
        assert ids == [f"--client-id={IDENTITIES[name]}"]


def test_the_certs_one_shot_issues_every_identity_into_its_own_volume(
    mtls_services: dict[str, Any],
) -> None:
    certs = mtls_services["certs"]
    silos = {IDENTITIES[n] for n in [*CLIENTS, "client-gpu"]}
    assert set(certs["command"]) == silos  # the silo ids given to `fedprompt certs`
    written = {v["source"]: v["target"] for v in _tls_volumes(certs)}
    expected = {f"tls-{i}": f"/identities/{i}" for i in [*IDENTITIES.values(), "operator"]}
    assert written == {**expected, "tls-ca": "/ca"}
    script = {v["target"]: v for v in certs["volumes"] if v["type"] == "bind"}
    assert script["/opt/compose-certs.sh"]["source"] == str(REPO / "docker/compose-certs.sh")
    # the operator's identity is mounted by no service: it is copied out for the operator
    assert not [
        n
        for n, s in mtls_services.items()
        if n != "certs" and any(v["source"] == "tls-operator" for v in _tls_volumes(s))
    ]


def test_the_plaintext_file_alone_has_no_certificates() -> None:
    services = resolved(COMPOSE, profiles=("gpu",))["services"]
    assert "certs" not in services
    for name, service in services.items():
        assert not _tls_volumes(service), name
        insecure = [v for k, v in service.get("environment", {}).items() if "TLS__INSECURE" in k]
        assert insecure in ([], ["true"]), name


@pytest.mark.parametrize(
    ("make_args", "env", "overlay"),
    [
        ([], {}, True),
        (["MTLS=0"], {}, False),
        ([], {"FEDPROMPT_COMPOSE_MTLS": "0"}, False),
        (["MTLS=1"], {"FEDPROMPT_COMPOSE_MTLS": "0"}, True),
    ],
    ids=["default-mtls", "MTLS=0", "env-0", "MTLS=1-wins"],
)
def test_make_compose_targets_run_the_overlay_unless_told_not_to(
    make_args: list[str], env: dict[str, str], overlay: bool
) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("TOOL MISSING: make")
    environ = {k: v for k, v in os.environ.items() if k != "FEDPROMPT_COMPOSE_MTLS"}
    result = run(
        [make, "-n", "compose-up", "compose-e2e", *make_args], cwd=REPO, env={**environ, **env}
    )
    assert result.returncode == 0, result.stderr
    up = next(line for line in result.stdout.splitlines() if " up -d " in line)
    assert ("-f docker-compose.mtls.yml" in up) is overlay
    e2e = next(line for line in result.stdout.splitlines() if line.endswith("compose_e2e.py"))
    assert f"FEDPROMPT_COMPOSE_MTLS={1 if overlay else 0}" in e2e


@pytest.mark.parametrize(
    ("value", "mtls"),
    [(None, True), ("1", True), ("true", True), ("0", False), ("off", False), ("maybe", None)],
)
def test_the_e2e_reads_the_mtls_switch(value: str | None, mtls: bool | None) -> None:
    project = docker_module("compose_project")
    env = {} if value is None else {project.MTLS_ENV: value}
    if mtls is None:
        with pytest.raises(ValueError, match="FEDPROMPT_COMPOSE_MTLS"):
            project.mtls_wanted(env)
        return
    assert project.mtls_wanted(env) is mtls
    files = project.compose_files(mtls=mtls)
    assert files == ([COMPOSE, MTLS] if mtls else [COMPOSE])
