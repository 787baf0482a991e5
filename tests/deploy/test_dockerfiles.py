"""Every Dockerfile passes hadolint and follows the image rules of the deployment issue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from fedprompt.config import load_config
from fedprompt_client_agent.config import ClientAgentConfig
from fedprompt_clusterer.config import ClustererConfig
from fedprompt_coordinator.config import CoordinatorConfig

from .conftest import REPO, run, venv_tool

DOCKERFILES = sorted(
    p
    for p in REPO.rglob("Dockerfile*")
    if not {".venv", "build", ".git"} & set(p.relative_to(REPO).parts)
    and p.suffix != ".dockerignore"
)
SERVICE_DOCKERFILES = {
    "coordinator": (CoordinatorConfig, "FEDPROMPT_COORDINATOR_", {"client_id": None}),
    "clusterer": (ClustererConfig, "FEDPROMPT_CLUSTERER_", {}),
    "client_agent": (ClientAgentConfig, "FEDPROMPT_CLIENT_", {"client_id": "x"}),
}


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_repository_has_the_expected_dockerfiles() -> None:
    names = {_id(p) for p in DOCKERFILES}
    assert {
        "services/coordinator/Dockerfile",
        "services/clusterer/Dockerfile",
        "services/client_agent/Dockerfile",
        "deploy/prometheus/Dockerfile",
    } <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_id)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = run([venv_tool("hadolint"), "--no-color", dockerfile])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nCMD python app.py\n")
    result = run([venv_tool("hadolint"), "--no-color", bad])
    assert result.returncode != 0
    assert "DL3008" in result.stdout or "DL3015" in result.stdout


@pytest.mark.parametrize("service", sorted(SERVICE_DOCKERFILES))
def test_service_images_are_multi_stage_non_root_with_a_grpc_healthcheck(service: str) -> None:
    text = (REPO / "services" / service / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=", text, re.M), "images build from a local base (ARG BASE)"
    froms = re.findall(r"^FROM \$\{BASE\}", text, re.M)
    assert len(froms) == 2, "a build stage and a runtime stage"
    assert "COPY --from=build" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    healthcheck = re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"fedprompt-healthcheck\"", text, re.M)
    assert healthcheck, "HEALTHCHECK through gRPC health"
    assert "--no-index" in text, "installs from the wheelhouse only"


@pytest.mark.parametrize("service", sorted(SERVICE_DOCKERFILES))
def test_image_environment_is_a_valid_service_config(service: str) -> None:
    model, prefix, required = SERVICE_DOCKERFILES[service]
    text = (REPO / "services" / service / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", text, re.M):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    settings = {k: v for k, v in env.items() if k.startswith(prefix)}
    assert f"{prefix}METRICS_PORT" in settings and settings[f"{prefix}METRICS_HOST"] == "0.0.0.0"
    overrides = {k: v for k, v in required.items() if v is not None}
    if model is ClientAgentConfig:
        overrides["data_dir"] = "/data"
    config: BaseModel = load_config(model, env_prefix=prefix, environ=settings, overrides=overrides)
    assert config.metrics_port == 9100  # type: ignore[attr-defined]


def test_the_client_image_has_cpu_and_cuda_flavours() -> None:
    text = (REPO / "services/client_agent/Dockerfile").read_text()
    assert "ARG FLAVOUR=cpu" in text
    assert "build/wheelhouse/client_agent-${FLAVOUR}" in text
    script = (REPO / "docker/wheelhouse.sh").read_text()
    assert "--cuda" in script and "client_agent-$flavour" in script
