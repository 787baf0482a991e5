"""The silo chart's simulation mode: a StatefulSet of host processes over per-pod shards.

Rendered with the Helm SDK like ``test_helm.py``; manifests pass ``kubernetes-validate
--strict``; the pods' shard check (a bash script in the manifest) runs here on shards that
``fedprompt shard-silos`` writes from tiny silo folders and real certificates.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedprompt_cli.certs import write_certs
from fedprompt_cli.shard_silos import write_shards
from fedprompt_client_agent.host import parse_args as host_args

from .conftest import REPO, run, venv_tool
from .test_helm import CHARTS, SINGLE_SILO_VALUES, helm, kinds, load_values, render, render_notes

SIM_VALUES = CHARTS["fedprompt-silo"] / "ci/values-simulation-1000.yaml"
COORDINATOR_SIM_VALUES = CHARTS["fedprompt-coordinator"] / "ci/values-simulation-1000.yaml"
SHARD_VOLUME = REPO / "k8s/simulation/shard-volume.yaml"
SHARD = "/var/lib/fedprompt/shard"
STATE = "/var/lib/fedprompt/state"
POD_INDEX_LABEL = "metadata.labels['apps.kubernetes.io/pod-index']"


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in, key by key (a deep copy)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def simulation(changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The 1,000-silo example values with ``changes``."""
    return merged(load_values(SIM_VALUES), changes or {})


def statefulset(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one StatefulSet and its pod spec."""
    (sts,) = kinds(docs, "StatefulSet")
    return sts, sts["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def flags(container: dict[str, Any]) -> dict[str, str]:
    return dict(a.split("=", 1) if "=" in a else (a, "") for a in container["args"])


def test_a_simulation_is_a_statefulset_of_hosts_over_their_own_read_only_shards() -> None:
    values = load_values(SIM_VALUES)
    docs = render("fedprompt-silo", values, release="sim")
    # nothing of the one-silo mode: no Deployment, no silo Secret, no data or state claim
    assert {d["kind"] for d in docs} == {"Service", "StatefulSet", "NetworkPolicy"}
    sts, pod = statefulset(docs)
    spec = sts["spec"]
    assert spec["replicas"] == 20 and spec["podManagementPolicy"] == "Parallel"
    (service,) = kinds(docs, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert spec["serviceName"] == service["metadata"]["name"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert "fedprompt.io/silo" not in labels  # a pod hosts many silos

    (init,) = pod["initContainers"]
    (host,) = pod["containers"]
    assert host["command"] == ["python", "-m", "fedprompt_client_agent.host"]
    args = flags(host)
    assert args["--coordinator"] == values["silo"]["coordinator"]
    assert args["--silo-root"] == f"{SHARD}/silos"
    assert args["--tls-dir"] == f"{SHARD}/certs"
    assert args["--state-root"] == STATE
    assert "--insecure" not in args and "--client-id" not in args
    # each pod mounts shard-<its ordinal> of the claim, read-only, in both containers
    for container in (init, host):
        assert env_of(container)["POD_INDEX"] == {"fieldRef": {"fieldPath": POD_INDEX_LABEL}}
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "shards"]
        assert mount == {
            "name": "shards",
            "mountPath": SHARD,
            "subPathExpr": "shard-$(POD_INDEX)",
            "readOnly": True,
        }
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shards"]["persistentVolumeClaim"] == {
        "claimName": values["simulation"]["shards"]["existingClaim"],
        "readOnly": True,
    }
    assert not [v for v in pod["volumes"] if "secret" in v]  # no single-silo certificate
    # state: a claim per pod that follows its ordinal
    assert "state" not in volumes
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "state"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert {m["name"]: m["mountPath"] for m in host["volumeMounts"]}["state"] == STATE
    # the probe presents a hosted silo's certificate that shard-check links
    env = env_of(host)
    assert env["FEDPROMPT_HEALTHCHECK_TLS_CA"] == f"{SHARD}/certs/ca.crt"
    probe_dir = env_of(init)["PROBE_TLS_DIR"]
    assert env["FEDPROMPT_HEALTHCHECK_TLS_CERT"] == f"{probe_dir}/tls.crt"
    assert {m["name"]: m.get("readOnly", False) for m in host["volumeMounts"]}["probe-tls"]
    assert host["readinessProbe"]["exec"]["command"][0] == "fedprompt-healthcheck"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    notes = render_notes("fedprompt-silo", values, release="sim")
    assert "20 pods of up to 50 hosted silos (1000 at most)" in notes
    assert "claim fedprompt-shards" in notes and "never the CA key" in notes


def test_the_host_parser_accepts_the_simulation_args(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        host_args(["--help"])
    if "--silo-root" not in capsys.readouterr().out:
        pytest.skip(
            "HOST FLAG MISSING: fedprompt_client_agent.host has no --silo-root yet "
            "(added on the integrator's branch); the chart passes it"
        )
    for tls in (True, False):
        values = simulation({"tls": {"enabled": tls}})
        _, pod = statefulset(render("fedprompt-silo", values))
        parsed = host_args(pod["containers"][0]["args"])
        assert parsed.coordinator == values["silo"]["coordinator"]
        assert parsed.silo_root == Path(SHARD, "silos")
        assert parsed.state_root == Path(STATE)
        assert parsed.tls_dir == (Path(SHARD, "certs") if tls else None)
        assert parsed.insecure is (not tls)
        assert parsed.torch_threads == 2
        assert parsed.max_pass_examples == 64  # the chart's simulation.maxPassExamples


def test_the_network_policy_still_holds_the_pods_to_their_coordinator() -> None:
    silo_docs = render("fedprompt-silo", load_values(SIM_VALUES), release="sim")
    sts, _ = statefulset(silo_docs)
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    (policy,) = kinds(silo_docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    to_coordinator, dns = policy["spec"]["egress"]
    assert to_coordinator["ports"] == [{"port": 50051, "protocol": "TCP"}]
    assert {p["port"] for p in dns["ports"]} == {53}
    # ... and the two example releases wire together: `sim` dials `fl`'s coordinator Service,
    # its egress selects the coordinator's pods, the coordinator admits only these pods
    coordinator_docs = render(
        "fedprompt-coordinator", load_values(COORDINATOR_SIM_VALUES), release="fl"
    )
    (coordinator,) = [
        d
        for d in kinds(coordinator_docs, "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "coordinator"
    ]
    coordinator_labels = coordinator["spec"]["template"]["metadata"]["labels"]
    (peer,) = to_coordinator["to"]
    assert peer["podSelector"]["matchLabels"].items() <= coordinator_labels.items()
    services = {s["metadata"]["name"] for s in kinds(coordinator_docs, "Service")}
    host, port = load_values(SIM_VALUES)["silo"]["coordinator"].rsplit(":", 1)
    name, namespace = host.split(".")[:2]
    assert name in services and namespace == "fedprompt" and port == "50051"
    (admits,) = [
        p
        for p in kinds(coordinator_docs, "NetworkPolicy")
        if p["metadata"]["name"].endswith("-coordinator")
    ]
    (source,) = admits["spec"]["ingress"][0]["from"]
    assert source["podSelector"]["matchLabels"].items() <= pod_labels.items()
    args = flags(coordinator["spec"]["template"]["spec"]["containers"][0])
    assert args["--expected-clients"] == "1000"  # = 20 pods x 50 silos
    assert int(args["--min-clients"]) <= 1000


@pytest.mark.parametrize(
    ("clients", "passes", "per_example", "factor", "gpu"),
    [
        (1, 64, 16, 2, False),
        (50, 64, 16, 2, False),  # the defaults' 50 text silos: 3648 MiB requested
        (50, 256, 1, 2, False),
        (200, 16, 0, 1.5, False),
        (8, 64, 16, 1, True),
    ],
)
def test_requests_grow_with_the_silos_a_pod_hosts_and_its_shared_pass(
    clients: int, passes: int, per_example: int, factor: float, gpu: bool
) -> None:
    values = simulation(
        {
            "simulation": {
                "clientsPerPod": clients,
                "maxPassExamples": passes,
                "resources": {"perPassExampleMiB": per_example, "memoryLimitFactor": factor},
            },
            "gpu": {"enabled": gpu},
        }
    )
    _, pod = statefulset(render("fedprompt-silo", values))
    (host,) = pod["containers"]
    memory = 1024 + 32 * clients + passes * per_example
    expected_limits: dict[str, Any] = {"memory": f"{math.ceil(memory * factor)}Mi"}
    if gpu:
        expected_limits["nvidia.com/gpu"] = 1
    assert host["resources"] == {
        "requests": {"cpu": f"{1000 + 20 * clients}m", "memory": f"{memory}Mi"},
        "limits": expected_limits,
    }
    assert flags(host)["--max-pass-examples"] == str(passes)
    assert host["image"].endswith("-cuda") is gpu
    assert env_of(pod["initContainers"][0])["CLIENTS_PER_POD"] == str(clients)


def test_the_chart_defaults_size_the_pods_as_values_yaml_says() -> None:
    defaults = load_values(CHARTS["fedprompt-silo"] / "values.yaml")["simulation"]
    values = simulation({"simulation": {**defaults, "enabled": True, "clientsPerPod": 50}})
    values["simulation"]["shards"] = {"existingClaim": "fedprompt-shards"}
    _, pod = statefulset(render("fedprompt-silo", values))
    # values.yaml: "50 text silos with the defaults: 2 CPUs and 3.6 GiB requested, 7.1 GiB limit"
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "2000m", "memory": "3648Mi"},
        "limits": {"memory": "7296Mi"},
    }


def test_state_on_an_empty_dir_when_not_persistent() -> None:
    values = simulation({"simulation": {"state": {"persistent": False}}})
    sts, pod = statefulset(render("fedprompt-silo", values))
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["state"] == {"name": "state", "emptyDir": {}}


VARIANTS = {
    "example": {},
    "plaintext": {"tls": {"enabled": False}},
    "state-empty-dir": {"simulation": {"state": {"persistent": False}}},
    "gpu-extra-args": {
        "gpu": {"enabled": True},
        "silo": {"device": "cuda", "extraEnv": {"FEDPROMPT_CLIENT_SEED": "3"}},
        "simulation": {"extraArgs": ["--seed=3"], "state": {"storageClassName": "fast"}},
        "tls": {"serverName": "fl.example.org"},
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
    },
}


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_simulation_manifests_pass_kubernetes_validate_strict(variant: str, tmp_path: Path) -> None:
    values = simulation(VARIANTS[variant])
    report = helm.lint(str(CHARTS["fedprompt-silo"]), values, strict=True)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(render("fedprompt-silo", values)))
    result = run([venv_tool("kubernetes-validate"), "--strict", "--quiet", manifest])
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_plaintext_simulation_passes_insecure_and_mounts_no_probe_certificate() -> None:
    _, pod = statefulset(render("fedprompt-silo", simulation({"tls": {"enabled": False}})))
    (host,) = pod["containers"]
    assert "--insecure" in host["args"] and "--tls-dir" not in flags(host)
    assert not [e for e in host["env"] if "TLS" in e["name"]]
    assert "probe-tls" not in {v["name"] for v in pod["volumes"]}


HOSTILE = [
    ({"simulation": {"replicas": 0}}, "simulation.replicas must be a whole number >= 1, got 0"),
    ({"simulation": {"replicas": -3}}, "simulation.replicas must be a whole number >= 1"),
    ({"simulation": {"replicas": 2.5}}, "simulation.replicas must be a whole number >= 1"),
    ({"simulation": {"replicas": "20"}}, "simulation.replicas must be a whole number >= 1"),
    ({"simulation": {"replicas": None}}, "simulation.replicas must be a whole number >= 1"),
    ({"simulation": {"clientsPerPod": 0}}, "simulation.clientsPerPod must be a whole number"),
    ({"simulation": {"clientsPerPod": 0.5}}, "simulation.clientsPerPod must be a whole number"),
    ({"simulation": {"maxPassExamples": 0}}, "simulation.maxPassExamples must be a whole number"),
    (
        {"simulation": {"resources": {"perPassExampleMiB": -1}}},
        "simulation.resources.perPassExampleMiB must be a whole number >= 0",
    ),
    ({"simulation": {"shards": {"existingClaim": ""}}}, "simulation.shards.existingClaim is req"),
    ({"tls": {"existingSecret": "hospital-a-cert"}}, "tls.existingSecret, tls.cert, tls.key"),
    ({"tls": {"cert": "PEM", "key": "PEM", "ca": "PEM"}}, "tls.existingSecret, tls.cert"),
    ({"silo": {"id": "hospital-a"}}, "silo.id, silo.metadata and silo.extraArgs"),
    ({"silo": {"metadata": {"region": "north"}}}, "silo.id, silo.metadata and silo.extraArgs"),
    ({"silo": {"extraArgs": ["--seed=1"]}}, "simulation.extraArgs passes flags to the host"),
    ({"data": {"existingClaim": "records"}}, "data.existingClaim and state.existingClaim"),
    ({"state": {"existingClaim": "prompts"}}, "data.existingClaim and state.existingClaim"),
    ({"serviceMonitor": {"enabled": True}}, "serves no /metrics"),
    (
        {"simulation": {"resources": {"memoryLimitFactor": 0.5}}},
        "simulation.resources.memoryLimitFactor must be a number >= 1",
    ),
    (
        {"simulation": {"resources": {"memoryLimitFactor": "2"}}},
        "simulation.resources.memoryLimitFactor must be a number >= 1",
    ),
    (
        {"simulation": {"resources": {"perClient": {"memoryMiB": -32}}}},
        "simulation.resources.perClient.memoryMiB must be a whole number >= 0",
    ),
    (
        {"simulation": {"resources": {"perPod": {"cpuMillis": "1"}}}},
        "simulation.resources.perPod.cpuMillis must be a whole number >= 0",
    ),
    ({"silo": {"coordinator": ""}}, "silo.coordinator is required"),
    (
        {"networkPolicy": {"coordinator": {"namespaceSelector": None, "podSelector": None}}},
        "networkPolicy.coordinator needs",
    ),
]


@pytest.mark.parametrize(("changes", "message"), HOSTILE, ids=lambda v: str(v)[:60])
def test_nonsense_simulation_values_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as info:
        render("fedprompt-silo", simulation(changes))
    assert message in str(info.value)


@pytest.mark.parametrize("values_file", SINGLE_SILO_VALUES, ids=lambda p: p.stem)
def test_simulation_values_leave_the_one_silo_mode_as_it_was(values_file: Path) -> None:
    values = load_values(values_file)
    dormant = merged(values, {"simulation": {**simulation()["simulation"], "enabled": False}})
    with helm.Chart.load(str(CHARTS["fedprompt-silo"])) as chart:
        plain = chart.render(values, name="h", namespace="fedprompt")
        with_dormant = chart.render(dormant, name="h", namespace="fedprompt")
    assert plain == with_dormant
    docs = render("fedprompt-silo", values)
    assert not kinds(docs, "StatefulSet") and len(kinds(docs, "Deployment")) == 1
    assert not plain["fedprompt-silo/templates/statefulset.yaml"].strip()


# -- the pods' shard check, run on real shards ------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of 5 tiny silos (2 + 2 + 1) with real certificates, as the loader copies them."""
    root = tmp_path_factory.mktemp("sim")
    ids = ["site-a", "site-b", "site-c", "site-d", "site-e"]
    trains = ["train.csv", "train.jsonl", "train.npz", "train.csv", "train.jsonl"]
    for silo, train in zip(ids, trains, strict=True):
        (root / "silos" / silo).mkdir(parents=True)
        (root / "silos" / silo / train).write_text("rows\n")
    write_certs(root / "certs", silos=ids)
    write_shards(silos=root / "silos", certs=root / "certs", out=root / "shards", per_pod=2)
    return root / "shards"


def shard_check(
    shard: Path, index: int, probe: Path, *, clients: int = 2, tls: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the rendered init container's script as the pod would, on ``shard``."""
    values = simulation(
        {"simulation": {"clientsPerPod": clients, "replicas": 3}, "tls": {"enabled": tls}}
    )
    _, pod = statefulset(render("fedprompt-silo", values))
    (init,) = pod["initContainers"]
    assert init["command"][:2] == ["/bin/bash", "-euo"]
    env = {k: v for k, v in env_of(init).items() if isinstance(v, str)}
    env |= {"SHARD_DIR": str(shard), "PROBE_TLS_DIR": str(probe), "POD_INDEX": str(index)}
    probe.mkdir(exist_ok=True)
    return subprocess.run(  # the script is the manifest's own
        [*init["command"], init["args"][0]],
        env={"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_shard_check_accepts_a_shard_and_links_a_probe_certificate(
    shards: Path, tmp_path: Path
) -> None:
    for index, count in enumerate([2, 2, 1]):
        probe = tmp_path / f"probe-{index}"
        result = shard_check(shards / f"shard-{index}", index, probe)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"shard-{index}: {count} silos"
        cert, key = (probe / "tls.crt").resolve(), (probe / "tls.key").resolve()
        assert cert.parent == (shards / f"shard-{index}/certs").resolve()
        assert cert.stem == key.stem and cert.name != "ca.crt"
    plain = shard_check(shards / "shard-2", 2, tmp_path / "probe-plain", tls=False)
    assert plain.returncode == 0 and not list((tmp_path / "probe-plain").iterdir())
    # a folder without a training file is no silo, for the check as for the host
    shard = tmp_path / "shard-with-notes"
    subprocess.run(["cp", "-a", str(shards / "shard-0"), str(shard)], check=True)
    (shard / "silos/notes").mkdir()
    (shard / "silos/notes/metadata.json").write_text("{}")
    result = shard_check(shard, 0, tmp_path / "probe-notes")
    assert result.returncode == 0 and result.stdout.strip() == "shard-0: 2 silos"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("more-replicas", "shard-3 holds no silo folder: simulation.replicas is more"),
        ("no-silo", "shard-0 holds no silo folder"),
        ("too-many", "shard-0 holds 2 silos but simulation.clientsPerPod is 1"),
        ("ca-key", "shard-0/certs holds ca.key: the CA key stays offline"),
        ("no-key", "cannot read shard-0/certs/site-b.key"),
        ("no-ca", "cannot read shard-0/certs/ca.crt"),
    ],
)
def test_the_shard_check_refuses_a_shard_the_host_must_not_run(
    shards: Path, tmp_path: Path, damage: str, message: str
) -> None:
    shard = tmp_path / "shard"
    subprocess.run(["cp", "-a", str(shards / "shard-0"), str(shard)], check=True)
    index, clients = 0, 2
    if damage == "more-replicas":  # a pod whose shard the loader never wrote
        shard, index = tmp_path / "shard-3", 3
        shard.mkdir()
    elif damage == "no-silo":  # folders, but none the host would take as a silo
        for folder in (shard / "silos").iterdir():
            for file in folder.glob("train.*"):
                file.unlink()
    elif damage == "too-many":
        clients = 1
    elif damage == "ca-key":
        (shard / "certs/ca.key").write_text("the CA key")
    elif damage == "no-key":
        (shard / "certs/site-b.key").unlink()
    elif damage == "no-ca":
        (shard / "certs/ca.crt").unlink()
    result = shard_check(shard, index, tmp_path / "probe", clients=clients)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "probe" / "tls.crt").exists()


def test_the_shard_volume_example_is_the_claim_the_simulation_reads(tmp_path: Path) -> None:
    result = run([venv_tool("kubernetes-validate"), "--strict", "--quiet", SHARD_VOLUME])
    assert result.returncode == 0, result.stdout + result.stderr
    docs = list(yaml.safe_load_all(SHARD_VOLUME.read_text()))
    (claim,) = kinds(docs, "PersistentVolumeClaim")
    (loader,) = kinds(docs, "Pod")
    assert claim["metadata"]["name"] == simulation()["simulation"]["shards"]["existingClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node mounts it
    chart_user = load_values(CHARTS["fedprompt-silo"] / "values.yaml")["podSecurityContext"]
    loader_user = loader["spec"]["securityContext"]
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        assert loader_user[field] == chart_user[field]  # the keys it unpacks are the pods'
    (volume,) = loader["spec"]["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
