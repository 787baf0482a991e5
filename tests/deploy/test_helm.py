"""Both Helm charts lint and render with several values files; the manifests validate.

Rendering uses the Helm SDK (PyPI ``helm-python-sdk``, no helm binary); every rendered
manifest passes ``kubernetes-validate --strict`` except the optional ServiceMonitor, whose CRD
schema the validator does not ship (its shape is asserted here instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fedprompt_client_agent.__main__ import parse_args as client_args
from fedprompt_clusterer.__main__ import parse_args as clusterer_args
from fedprompt_coordinator.__main__ import parse_args as coordinator_args

from .conftest import REPO, run, venv_tool

helm = pytest.importorskip(
    "helm_python", reason="TOOL MISSING: helm-python-sdk (pip install -r requirements/deploy.txt)"
)

CHARTS = {
    "fedprompt-coordinator": REPO / "k8s/fedprompt-coordinator",
    "fedprompt-silo": REPO / "k8s/fedprompt-silo",
}
TLS_FLAGS = ("--tls-cert", "--tls-key", "--tls-ca", "--insecure")
CASES = [
    (chart, values)
    for chart, path in CHARTS.items()
    for values in sorted((path / "ci").glob("values-*.yaml"))
]


#: Every example values file of the coordinator chart, one test case each.
COORDINATOR_VALUES = pytest.mark.parametrize(
    "values_file",
    sorted((CHARTS["fedprompt-coordinator"] / "ci").glob("*.yaml")),
    ids=lambda p: p.stem,
)


def _case_id(case: tuple[str, Path]) -> str:
    return f"{case[0]}:{case[1].stem}"


def render(
    chart: str, values: dict[str, Any], *, release: str = "fedprompt"
) -> list[dict[str, Any]]:
    """Render a chart offline; returns every non-empty manifest document."""
    with helm.Chart.load(str(CHARTS[chart])) as loaded:
        out = loaded.render(values, name=release, namespace="fedprompt")
    docs: list[dict[str, Any]] = []
    for name, text in sorted(out.items()):
        if name.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def load_values(path: Path) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_chart_lints_cleanly(case: tuple[str, Path]) -> None:
    chart, values_file = case
    report = helm.lint(str(CHARTS[chart]), load_values(values_file), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_rendered_manifests_pass_kubernetes_validate_strict(
    case: tuple[str, Path], tmp_path: Path
) -> None:
    chart, values_file = case
    docs = render(chart, load_values(values_file))
    checked = [d for d in docs if d["kind"] != "ServiceMonitor"]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(checked))
    result = run([venv_tool("kubernetes-validate"), "--strict", "--quiet", manifest])
    assert result.returncode == 0, result.stdout + result.stderr
    for monitor in kinds(docs, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "metrics"


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path: Path) -> None:
    values = load_values(CHARTS["fedprompt-silo"] / "ci/values-hospital-a.yaml")
    (deployment,) = kinds(render("fedprompt-silo", values), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["gpuCount"] = 1
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    result = run([venv_tool("kubernetes-validate"), "--strict", "--quiet", manifest])
    assert result.returncode != 0


def _args_parse(container: dict[str, Any], parse: Any, capsys: pytest.CaptureFixture[str]) -> Any:
    """Parse a container's args with the service's own parser (TLS flags it lacks dropped)."""
    with pytest.raises(SystemExit):
        parse(["--help"])
    known = capsys.readouterr().out
    args = [
        a
        for a in container["args"]
        if not (a.startswith(TLS_FLAGS) and a.split("=")[0] not in known)
    ]
    return parse(args)


@COORDINATOR_VALUES
def test_coordinator_chart_wires_services_probes_state_and_policy(
    values_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = load_values(values_file)
    docs = render("fedprompt-coordinator", values)
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in kinds(docs, "Deployment")
    }
    assert set(deployments) == {"coordinator", "clusterer"}
    coordinator = deployments["coordinator"]["spec"]["template"]["spec"]["containers"][0]
    clusterer = deployments["clusterer"]["spec"]["template"]["spec"]["containers"][0]
    parsed = _args_parse(coordinator, coordinator_args, capsys)
    _args_parse(clusterer, clusterer_args, capsys)
    services = {s["metadata"]["name"] for s in kinds(docs, "Service")}
    assert parsed.clusterer.split(":")[0] in services  # the coordinator dials the clusterer Service
    tls = values.get("tls", {}).get("enabled", True)
    for container in (coordinator, clusterer):
        for probe in ("readinessProbe", "livenessProbe"):
            spec = container[probe]
            if tls:  # native gRPC probes cannot present a client certificate
                assert spec["exec"]["command"][0] == "fedprompt-healthcheck"
            else:
                assert spec["grpc"]["service"].startswith("fedprompt.v1.")
        assert ("--insecure" in container["args"]) is (not tls)
    if tls:
        secrets = {
            v["secret"]["secretName"]
            for d in deployments.values()
            for v in d["spec"]["template"]["spec"]["volumes"]
            if "secret" in v
        }
        assert len(secrets) == 2  # coordinator and clusterer each have their own
    persistence = values.get("persistence", {})
    volumes = {
        v["name"]: v for v in deployments["coordinator"]["spec"]["template"]["spec"]["volumes"]
    }
    if persistence.get("enabled", True):
        claim = volumes["state"]["persistentVolumeClaim"]["claimName"]
        made = {c["metadata"]["name"] for c in kinds(docs, "PersistentVolumeClaim")}
        assert claim == persistence.get("existingClaim") or claim in made
    else:
        assert "emptyDir" in volumes["state"]
    policies = {p["metadata"]["name"]: p for p in kinds(docs, "NetworkPolicy")}
    if values.get("networkPolicy", {}).get("enabled", True):
        (policy,) = [p for n, p in policies.items() if n.endswith("-clusterer")]
        grpc_rule = policy["spec"]["ingress"][0]
        assert grpc_rule["ports"] == [{"port": 50052, "protocol": "TCP"}]
        (source,) = grpc_rule["from"]
        assert source["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "coordinator"
        for rule in policy["spec"]["ingress"][1:]:  # anything else reaches /metrics only
            assert rule["ports"] == [{"port": 9100, "protocol": "TCP"}]
    else:
        assert not policies


def test_two_silo_releases_never_share_a_secret_or_a_volume() -> None:
    a = load_values(CHARTS["fedprompt-silo"] / "ci/values-hospital-b-gpu.yaml")
    b = {**a, "silo": {**a["silo"], "id": "hospital-c"}}
    docs_a = render("fedprompt-silo", a, release="hospital-b")
    docs_b = render("fedprompt-silo", b, release="hospital-c")

    def secret_and_claims(docs: list[dict[str, Any]]) -> set[str]:
        (deployment,) = kinds(docs, "Deployment")
        names = set()
        for v in deployment["spec"]["template"]["spec"]["volumes"]:
            if "secret" in v:
                names.add("secret:" + v["secret"]["secretName"])
            if "persistentVolumeClaim" in v:
                names.add("pvc:" + v["persistentVolumeClaim"]["claimName"])
        return names

    used_a, used_b = secret_and_claims(docs_a), secret_and_claims(docs_b)
    assert any(n.startswith("secret:") for n in used_a)
    assert not used_a & used_b
    (secret,) = kinds(docs_a, "Secret")
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}


#: The silo chart's example values of one silo per release (the simulation mode is
#: tested in test_helm_simulation.py).
SINGLE_SILO_VALUES = [
    p
    for p in sorted((CHARTS["fedprompt-silo"] / "ci").glob("*.yaml"))
    if not load_values(p).get("simulation", {}).get("enabled", False)
]


@pytest.mark.parametrize("values_file", SINGLE_SILO_VALUES, ids=lambda p: p.stem)
def test_silo_chart_dials_out_only_and_mounts_its_volumes(
    values_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = load_values(values_file)
    docs = render("fedprompt-silo", values)
    (deployment,) = kinds(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    parsed = _args_parse(container, client_args, capsys)
    assert parsed.client_id == values["silo"]["id"]
    assert parsed.coordinator == values["silo"]["coordinator"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {"/var/lib/fedprompt/data", "/var/lib/fedprompt/state"} <= set(mounts)
    assert pod["securityContext"]["runAsNonRoot"] is True
    gpu = values.get("gpu", {}).get("enabled", False)
    assert ("nvidia.com/gpu" in container["resources"].get("limits", {})) is gpu
    assert container["image"].endswith("-cuda") is gpu
    assert pod.get("nodeSelector", {}) == values.get("nodeSelector", {})
    assert pod.get("tolerations", []) == values.get("tolerations", [])
    if values["silo"].get("metadata"):
        (config_map,) = kinds(docs, "ConfigMap")
        assert yaml.safe_load(config_map["data"]["metadata.json"]) == values["silo"]["metadata"]
    (policy,) = kinds(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    to_coordinator, dns = policy["spec"]["egress"]
    assert to_coordinator["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert {p["port"] for p in dns["ports"]} == {53}
    for rule in policy["spec"]["ingress"]:
        assert rule["ports"] == [{"port": 9100, "protocol": "TCP"}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"existingSecret": "s"}}, "silo.id is required"),
        ({"silo": {"id": "h"}, "tls": {"existingSecret": "s"}}, "silo.coordinator is required"),
        ({"silo": {"id": "h", "coordinator": "c:1"}}, "tls.existingSecret"),
        ({"silo": {"id": "h", "coordinator": "c:1"}, "tls": {"cert": "x"}}, "tls.existingSecret"),
        (
            {"silo": {"id": "h", "coordinator": "c:1"}, "tls": {"existingSecret": "s"}},
            "networkPolicy.coordinator",
        ),
    ],
)
def test_silo_chart_refuses_incomplete_values(values: dict[str, Any], message: str) -> None:
    egress = {"networkPolicy": {"coordinator": {"ipBlocks": ["192.0.2.1/32"]}}}
    if message != "networkPolicy.coordinator":
        values = {**values, **egress}
    with pytest.raises(helm.HelmError) as info:
        render("fedprompt-silo", values)
    assert message in str(info.value)


def render_notes(chart: str, values: dict[str, Any], *, release: str = "fedprompt") -> str:
    """The chart's NOTES.txt as an install prints it."""
    with helm.Chart.load(str(CHARTS[chart])) as loaded:
        out = loaded.render(values, name=release, namespace="fedprompt")
    (notes,) = [text for name, text in out.items() if name.endswith("NOTES.txt")]
    return str(notes)


@COORDINATOR_VALUES
def test_coordinator_notes_name_the_certificates_the_wiring_needs(
    values_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = load_values(values_file)
    notes = render_notes("fedprompt-coordinator", values, release="fl")
    if not values.get("tls", {}).get("enabled", True):
        assert "WARNING: TLS is off" in notes and "--operator" not in notes
        return
    docs = render("fedprompt-coordinator", values, release="fl")
    (coordinator,) = [
        d
        for d in kinds(docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "coordinator"
    ]
    parsed = _args_parse(
        coordinator["spec"]["template"]["spec"]["containers"][0], coordinator_args, capsys
    )
    clusterer_host = parsed.clusterer.rsplit(":", 1)[0]
    # the coordinator dials the clusterer's Service but verifies the name `clusterer`
    # (clustering.server_name), which `fedprompt certs` writes: no Service name as a SAN
    assert clusterer_host.endswith("-clusterer") and f"--san {clusterer_host}" not in notes
    assert "`clusterer` (the coordinator verifies it whatever Service address it dials" in notes
    assert "--operator" in notes and "server name `coordinator`" in notes
    assert "read_full_status" in notes


@pytest.mark.parametrize("server_name", ["", "fl.example.org"])
def test_silo_agents_verify_the_coordinator_name(server_name: str) -> None:
    values = load_values(CHARTS["fedprompt-silo"] / "ci/values-hospital-a.yaml")
    values["tls"] = {**values["tls"], "serverName": server_name}
    (deployment,) = kinds(render("fedprompt-silo", values), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    expected = server_name or "coordinator"
    # empty: the agent's default, `coordinator` (fedprompt.tls.expected_server_name)
    assert env.get("FEDPROMPT_CLIENT_TLS__SERVER_NAME", "coordinator") == expected
    assert f"names `{expected}`" in render_notes("fedprompt-silo", values)
    # the probe presents the silo's own certificate and checks the same coordinator name
    assert env["FEDPROMPT_HEALTHCHECK_TLS_CERT"] == "/etc/fedprompt/tls/tls.crt"
    assert env["FEDPROMPT_HEALTHCHECK_TLS_SERVER_NAME"] == expected


def test_a_plaintext_silo_sets_no_server_name() -> None:
    values = load_values(CHARTS["fedprompt-silo"] / "ci/values-in-cluster-lab.yaml")
    values["tls"] = {**values["tls"], "serverName": "ignored.example.org"}
    (deployment,) = kinds(render("fedprompt-silo", values), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--insecure" in container["args"]
    assert not [e for e in container["env"] if "TLS" in e["name"]]
