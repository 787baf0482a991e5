"""Write fedprompt's Grafana dashboards (JSON) into ``deploy/grafana/dashboards/``.

The JSON files are what Grafana provisions; this script is how they are made and changed.
``tests/deploy`` checks that the committed files equal this script's output and that every
PromQL expression in them passes ``promtool check rules``.

Usage: ``python deploy/grafana/generate_dashboards.py [--check]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
FEDPROMPT_JOBS = 'job=~"fedprompt-.*"'


def target(expr: str, legend: str = "", ref: str = "A") -> dict[str, Any]:
    """One Prometheus query of a panel."""
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(
    title: str,
    kind: str,
    targets: list[tuple[str, str]],
    *,
    x: int,
    y: int,
    w: int = 12,
    h: int = 8,
    unit: str = "short",
    description: str = "",
) -> dict[str, Any]:
    """A panel of type ``kind`` (timeseries, stat, gauge) at grid position (x, y)."""
    refs = "ABCDEFGH"
    out: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [target(e, legend, refs[i]) for i, (e, legend) in enumerate(targets)],
    }
    if kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return out


def dashboard(uid: str, title: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    """A whole dashboard; panel ids are assigned in order."""
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return {
        "uid": uid,
        "title": title,
        "tags": ["fedprompt"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [
            {"type": "dashboards", "tags": ["fedprompt"], "asDropdown": True, "title": "fedprompt"}
        ],
        "panels": panels,
    }


def overview() -> dict[str, Any]:
    """Federation overview: rounds, phase, clients, durations, traffic, accuracy."""
    return dashboard(
        "fedprompt-overview",
        "fedprompt: federation overview",
        [
            panel("Current round", "stat", [("fedprompt_round_current", "")], x=0, y=0, w=4, h=4),
            panel(
                "Rounds completed", "stat", [("fedprompt_rounds_completed", "")], x=4, y=0, w=4, h=4
            ),
            panel(
                "Rounds configured",
                "stat",
                [("fedprompt_rounds_configured", "")],
                x=8,
                y=0,
                w=4,
                h=4,
            ),
            panel(
                "Connected clients",
                "stat",
                [("fedprompt_clients_connected", "")],
                x=12,
                y=0,
                w=4,
                h=4,
            ),
            panel(
                "Phase",
                "stat",
                [("fedprompt_phase == 1", "{{phase}}")],
                x=16,
                y=0,
                w=8,
                h=4,
                description="The round state machine's current phase.",
            ),
            panel(
                "Round duration",
                "timeseries",
                [
                    (
                        "histogram_quantile(0.5, sum by (le) (rate(fedprompt_round_duration_seconds_bucket[15m])))",
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.95, sum by (le) (rate(fedprompt_round_duration_seconds_bucket[15m])))",
                        "p95",
                    ),
                ],
                x=0,
                y=4,
                unit="s",
            ),
            panel(
                "Participants and dropped clients (last round)",
                "timeseries",
                [
                    ("fedprompt_round_participants", "participants"),
                    ("fedprompt_round_updates_accepted", "updates accepted"),
                    ("fedprompt_round_dropped_clients", "dropped"),
                ],
                x=12,
                y=4,
            ),
            panel(
                "Traffic with clients",
                "timeseries",
                [("sum by (direction) (rate(fedprompt_traffic_bytes_total[1m]))", "{{direction}}")],
                x=0,
                y=12,
                unit="Bps",
            ),
            panel(
                "Bytes per client per round",
                "timeseries",
                [("fedprompt_round_bytes_per_client", "{{direction}}")],
                x=12,
                y=12,
                unit="bytes",
            ),
            panel(
                "Accuracy of the aggregated model",
                "timeseries",
                [("fedprompt_accuracy", "{{stat}}"), ("fedprompt_fairness_jain", "Jain index")],
                x=0,
                y=20,
                unit="percentunit",
            ),
            panel(
                "Aggregation time",
                "timeseries",
                [
                    (
                        "histogram_quantile(0.95, sum by (le) (rate(fedprompt_aggregation_duration_seconds_bucket[15m])))",
                        "p95",
                    ),
                    (
                        "rate(fedprompt_aggregation_duration_seconds_sum[15m]) / rate(fedprompt_aggregation_duration_seconds_count[15m])",
                        "mean",
                    ),
                ],
                x=12,
                y=20,
                unit="s",
            ),
            panel(
                "Round attempts by outcome (15 min)",
                "timeseries",
                [("sum by (status) (increase(fedprompt_rounds_total[15m]))", "{{status}}")],
                x=0,
                y=28,
                w=24,
            ),
        ],
    )


def clusters_and_silos() -> dict[str, Any]:
    """Per-cluster accuracy and fairness, the clusterer, and every silo's training."""
    return dashboard(
        "fedprompt-clusters-silos",
        "fedprompt: clusters and silos",
        [
            panel(
                "Clusters (last round)", "stat", [("fedprompt_clusters", "")], x=0, y=0, w=6, h=4
            ),
            panel(
                "Clusterer: clusters found",
                "stat",
                [("fedprompt_clusterer_clusters", "")],
                x=6,
                y=0,
                w=6,
                h=4,
            ),
            panel(
                "Clusterer: noise points",
                "stat",
                [("fedprompt_clusterer_noise_points", "")],
                x=12,
                y=0,
                w=6,
                h=4,
            ),
            panel(
                "Clusterer run time (p95)",
                "stat",
                [
                    (
                        "histogram_quantile(0.95, sum by (le) (rate(fedprompt_clusterer_run_duration_seconds_bucket[1h])))",
                        "",
                    )
                ],
                x=18,
                y=0,
                w=6,
                h=4,
                unit="s",
            ),
            panel(
                "Accuracy per cluster",
                "timeseries",
                [("fedprompt_cluster_accuracy", "cluster {{cluster}}")],
                x=0,
                y=4,
                unit="percentunit",
            ),
            panel(
                "Fairness (Jain) per cluster",
                "timeseries",
                [("fedprompt_cluster_fairness_jain", "cluster {{cluster}}")],
                x=12,
                y=4,
            ),
            panel(
                "Members per cluster",
                "timeseries",
                [("fedprompt_cluster_members", "cluster {{cluster}}")],
                x=0,
                y=12,
            ),
            panel(
                "Silo accuracy (aggregated model, own test split)",
                "timeseries",
                [("fedprompt_client_eval_accuracy", "{{silo}}")],
                x=12,
                y=12,
                unit="percentunit",
            ),
            panel(
                "Silo training loss",
                "timeseries",
                [("fedprompt_client_train_loss", "{{silo}}")],
                x=0,
                y=20,
            ),
            panel(
                "Silo optimizer-step time (mean)",
                "timeseries",
                [
                    (
                        "rate(fedprompt_client_train_step_seconds_sum[15m]) / rate(fedprompt_client_train_step_seconds_count[15m])",
                        "{{silo}}",
                    )
                ],
                x=12,
                y=20,
                unit="s",
            ),
            panel(
                "Silo rounds trained",
                "timeseries",
                [("fedprompt_client_rounds_trained_total", "{{silo}}")],
                x=0,
                y=28,
                w=24,
            ),
            panel(
                "Cluster moves (regrouping or refinement by updates)",
                "timeseries",
                [
                    ("increase(fedprompt_cluster_moves_total[1h])", "silos moved (1h)"),
                    ("fedprompt_clusterer_refined_members", "placed by their updates"),
                ],
                x=0,
                y=36,
                w=24,
            ),
        ],
    )


def privacy() -> dict[str, Any]:
    """Privacy budget: DP-FedAvg ε against its budget and per level, DP-SGD ε per silo,
    secure-aggregation groups by outcome."""
    return dashboard(
        "fedprompt-privacy",
        "fedprompt: privacy budget",
        [
            panel(
                "ε spent (DP-FedAvg)",
                "stat",
                [("fedprompt_privacy_epsilon", "")],
                x=0,
                y=0,
                w=6,
                h=4,
            ),
            panel(
                "ε budget", "stat", [("fedprompt_privacy_epsilon_budget", "")], x=6, y=0, w=6, h=4
            ),
            panel("δ", "stat", [("fedprompt_privacy_delta", "")], x=12, y=0, w=6, h=4),
            panel(
                "Budget used",
                "gauge",
                [("fedprompt_privacy_epsilon / (fedprompt_privacy_epsilon_budget > 0)", "")],
                x=18,
                y=0,
                w=6,
                h=4,
                unit="percentunit",
            ),
            panel(
                "ε over time (client-level, DP-FedAvg)",
                "timeseries",
                [
                    ("fedprompt_privacy_epsilon", "ε"),
                    ("fedprompt_privacy_epsilon_budget", "budget"),
                ],
                x=0,
                y=4,
            ),
            panel(
                "ε per silo (record-level, DP-SGD)",
                "timeseries",
                [("fedprompt_client_dp_sgd_epsilon", "{{silo}}")],
                x=12,
                y=4,
            ),
            panel(
                "ε per DP level (client-level)",
                "timeseries",
                [("fedprompt_privacy_level_epsilon", "{{level}}")],
                x=0,
                y=12,
                description="Each DP level's accountant (global, cluster, head); the composed ε "
                "above is the per-client guarantee the budget halt enforces.",
            ),
            panel(
                "Secure aggregation: groups by outcome",
                "timeseries",
                [
                    ("increase(fedprompt_secagg_groups_total[5m])", "{{outcome}}"),
                    ("increase(fedprompt_secagg_recovered_members_total[5m])", "recovered members"),
                ],
                x=12,
                y=12,
                description="One group per cluster and round: released; skipped (too few "
                "members, masked uploads or shares: nothing computed); rejected (the unmasked sum "
                "was larger than honest members can make: a poisoned input, not applied).",
            ),
        ],
    )


def system_health() -> dict[str, Any]:
    """Targets up, CPU, memory, scrape time, failed rounds, clusterer errors, the round loop
    and the influence defences (clip bounds, clipped fractions, largest shares)."""
    return dashboard(
        "fedprompt-system-health",
        "fedprompt: system health",
        [
            panel(
                "Targets up",
                "timeseries",
                [(f"up{{{FEDPROMPT_JOBS}}}", "{{job}} {{instance}}")],
                x=0,
                y=0,
            ),
            panel(
                "CPU per service",
                "timeseries",
                [(f"rate(process_cpu_seconds_total{{{FEDPROMPT_JOBS}}}[1m])", "{{instance}}")],
                x=12,
                y=0,
                unit="percentunit",
            ),
            panel(
                "Resident memory per service",
                "timeseries",
                [(f"process_resident_memory_bytes{{{FEDPROMPT_JOBS}}}", "{{instance}}")],
                x=0,
                y=8,
                unit="bytes",
            ),
            panel(
                "Scrape duration",
                "timeseries",
                [(f"scrape_duration_seconds{{{FEDPROMPT_JOBS}}}", "{{instance}}")],
                x=12,
                y=8,
                unit="s",
            ),
            panel(
                "Failed round attempts (1 h)",
                "stat",
                [('sum(increase(fedprompt_rounds_total{status="failed"}[1h]))', "")],
                x=0,
                y=16,
                w=8,
                h=4,
            ),
            panel(
                "Clients dropped (1 h)",
                "stat",
                [("sum(increase(fedprompt_dropped_clients_total[1h]))", "")],
                x=8,
                y=16,
                w=8,
                h=4,
            ),
            panel(
                "Clusterer errors (1 h)",
                "stat",
                [('sum(increase(fedprompt_clusterer_runs_total{outcome="error"}[1h]))', "")],
                x=16,
                y=16,
                w=8,
                h=4,
            ),
            panel(
                "Round loop serving",
                "stat",
                [("min(fedprompt_round_loop_serving)", "")],
                x=0,
                y=20,
                w=8,
                h=4,
                description="0: a round failed with an unexpected error; the coordinator "
                "reports NOT_SERVING and exits (status 3) to be restarted.",
            ),
            panel(
                "Round errors by phase (1 h)",
                "timeseries",
                [("sum by (phase) (increase(fedprompt_round_errors_total[1h]))", "{{phase}}")],
                x=8,
                y=20,
                w=16,
                h=4,
            ),
            panel(
                "Per-client clip bound per part",
                "timeseries",
                [("fedprompt_clip_bound", "{{part}}")],
                x=0,
                y=24,
                w=8,
                description="The L2 bound every member's update of each shared part was "
                "clipped to in the last completed round (adaptive by default).",
            ),
            panel(
                "Clipped fraction per part",
                "timeseries",
                [("fedprompt_clip_clipped_fraction", "{{part}}")],
                x=8,
                y=24,
                w=8,
                unit="percentunit",
            ),
            panel(
                "Largest member share per level",
                "timeseries",
                [("fedprompt_aggregation_max_weight_share", "{{level}}")],
                x=16,
                y=24,
                w=8,
                unit="percentunit",
                description="The largest share any one member had in a mean of the last "
                "completed round; capped at max(1/n, min(0.5, 2/n)) by default.",
            ),
        ],
    )


DASHBOARDS = {
    "fedprompt-overview.json": overview,
    "fedprompt-clusters-silos.json": clusters_and_silos,
    "fedprompt-privacy.json": privacy,
    "fedprompt-system-health.json": system_health,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with ``--check`` fail when the committed files differ."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale dashboards (run {Path(__file__).name}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
