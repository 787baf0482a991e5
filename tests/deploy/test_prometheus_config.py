"""Prometheus config, alert rules and every PromQL expression of the Grafana dashboards check
with ``promtool``; the dashboards only use metrics the services really export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from fedprompt_client_agent.metrics import ClientMetrics
from fedprompt_clusterer.metrics import ClustererMetrics
from fedprompt_coordinator.domain import Phase, RoundRecord
from fedprompt_coordinator.metrics import CoordinatorMetrics, FederationGauges

from .conftest import REPO, run, system_tool

PROMETHEUS_DIR = REPO / "deploy/prometheus"
DASHBOARD_DIR = REPO / "deploy/grafana/dashboards"
#: Series Prometheus itself adds to every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "le", "and", "or", "on", "max",
    "min", "avg", "without", "max_over_time", "group_left", "unless", "count", "bool",
}  # fmt: skip


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def dashboard_expressions() -> list[tuple[str, str]]:
    """(dashboard/panel title, PromQL) for every target of every panel."""
    out = []
    for name, board in dashboards().items():
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{name}/{panel['title']}", target["expr"]))
    return out


def exported_metric_names() -> set[str]:
    """Every sample name the three services' registries expose (with sample suffixes)."""
    coordinator = CoordinatorMetrics()
    coordinator.watch(lambda: FederationGauges(1, 0, 5, Phase.TRAINING, 3, 3, 0.0, 0.0, 0.0))
    registries = [coordinator.registry, ClustererMetrics().registry, ClientMetrics().registry]
    names = set()
    for registry in registries:
        for family in registry.collect():
            names.update(sample.name for sample in family.samples)
            # labelled series without children yet have no samples: name them by type
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
            names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def test_dashboards_are_generated_from_the_script() -> None:
    script = REPO / "deploy/grafana/generate_dashboards.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_the_four_dashboards_exist_and_are_provisioned() -> None:
    boards = dashboards()
    assert {b["uid"] for b in boards.values()} == {
        "fedprompt-overview",
        "fedprompt-clusters-silos",
        "fedprompt-privacy",
        "fedprompt-system-health",
    }
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == "prometheus"
    datasources = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [d["uid"] for d in datasources] == ["prometheus"]
    providers = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/fedprompt.yml").read_text()
    )["providers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{providers[0]['options']['path']}:ro" in mounts


def test_promtool_accepts_the_prometheus_config_and_rules(tmp_path: Path) -> None:
    promtool = system_tool("promtool", "prometheus")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    # the container path of the rules, pointed at the repository's copy
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules" / "*.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", local])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rules found" in result.stdout
    result = run([promtool, "check", "rules", *sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_every_dashboard_expression(tmp_path: Path) -> None:
    promtool = system_tool("promtool", "prometheus")
    expressions = dashboard_expressions()
    assert len(expressions) > 30
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"fedprompt:dashboard_expr_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool, "check", "rules", path])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(expressions)} rules found" in result.stdout


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    promtool = system_tool("promtool", "prometheus")
    path = tmp_path / "bad.yml"
    bad = {
        "groups": [{"name": "g", "rules": [{"record": "x:y", "expr": "sum by (le (rate(x[5m])"}]}]
    }
    path.write_text(yaml.safe_dump(bad))
    assert run([promtool, "check", "rules", path]).returncode != 0


def test_dashboards_and_rules_use_only_exported_metrics() -> None:
    exported = exported_metric_names() | SCRAPE_SERIES
    expressions = [e for _, e in dashboard_expressions()]
    for group in yaml.safe_load((PROMETHEUS_DIR / "rules/fedprompt.yml").read_text())["groups"]:
        expressions += [r["expr"] for r in group["rules"]]
    unknown = set()
    for expr in expressions:
        without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", "", expr)
        for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_labels):
            if word not in PROMQL_WORDS and word not in exported:
                unknown.add(word)
    labels = {
        "direction",
        "stat",
        "cluster",
        "phase",
        "status",
        "outcome",
        "job",
        "instance",
        "silo",
    }
    assert unknown - labels == set(), "dashboards or rules name metrics nobody exports"


@pytest.mark.parametrize("service", ["coordinator", "clusterer", "client_agent"])
def test_promtool_lints_each_services_exposition(service: str) -> None:
    promtool = system_tool("promtool", "prometheus")
    if service == "coordinator":
        metrics: Any = CoordinatorMetrics()
        metrics.watch(lambda: FederationGauges(1, 0, 5, Phase.DONE, 2, 2, 1.0, 4.0, 1e-5))
        metrics.observe_round(RoundRecord(1, "completed", 0.0, 3.0, 1, (), {}))
    elif service == "clusterer":
        metrics = ClustererMetrics()
    else:
        metrics = ClientMetrics()
        metrics.observe_training(1, {"loss": 1.0, "step_seconds": 0.1})
    text = generate_latest(metrics.registry)
    result = subprocess.run(
        [str(promtool), "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    names = {line.split(" ")[2] for line in text.decode().splitlines() if line.startswith("# TYPE")}
    assert all(n.startswith(("fedprompt_", "process_", "python_")) for n in names)
