"""Turn the coordinator's status into the demo's tables and a JSON summary."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from fedprompt.v1 import coordinator_pb2


def summarize(status: coordinator_pb2.GetStatusResponse) -> dict[str, Any]:
    """Per-client figures of a finished federation (completed rounds only)."""
    rounds = [r for r in status.rounds if r.status == "completed"]
    clients: dict[str, dict[str, Any]] = {}
    for info in status.clients:
        clients[info.client_id] = {
            "cluster": info.cluster_id,
            "metadata": json.loads(info.metadata_json or "{}"),
            "num_train_examples": info.num_train_examples,
            "setup_bytes_up": status.setup_bytes_up.get(info.client_id, 0),
            "setup_bytes_down": status.setup_bytes_down.get(info.client_id, 0),
            "rounds": {},
        }
    for r in rounds:
        for c in r.clients:
            entry = clients.setdefault(c.client_id, {"rounds": {}})
            entry["rounds"][r.round] = {
                "cluster": c.cluster_id,
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "train": dict(c.train_metrics),
                "eval": dict(c.eval_metrics),
            }
    for entry in clients.values():
        per_round = entry["rounds"]
        if not per_round:
            continue
        first, last = per_round[min(per_round)], per_round[max(per_round)]
        entry["accuracy_before"] = first["train"].get("pre_accuracy")
        entry["accuracy_after"] = last["eval"].get("accuracy")
        entry["macro_f1_after"] = last["eval"].get("macro_f1")
        entry["bytes_up_per_round"] = sum(v["bytes_up"] for v in per_round.values()) / len(
            per_round
        )
        entry["bytes_down_per_round"] = sum(v["bytes_down"] for v in per_round.values()) / len(
            per_round
        )
    return {
        "strategy": status.strategy,
        "epsilon": status.epsilon,
        "epsilon_by_level": dict(sorted(status.epsilon_by_level.items())),
        "delta": status.delta,
        "stop_reason": status.stop_reason,
        "completed_rounds": status.completed_rounds,
        "rounds": [
            {"round": r.round, "num_clusters": r.num_clusters, "summary": dict(r.summary)}
            for r in rounds
        ],
        "clients": clients,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f} KiB"


def _group(metadata: dict[str, Any]) -> str:
    """A short description of a silo from its public metadata."""
    if "specialty" in metadata:
        return str(metadata["specialty"])
    if "scanner_orientation_deg" in metadata:
        return f"rot {metadata['scanner_orientation_deg']}°, digits {metadata.get('dominant_digits', '?')}"
    return str(metadata.get("region", ""))


def client_table(summary: dict[str, Any]) -> Table:
    """Per-client accuracy before/after, cluster, bytes per round."""
    table = Table(title="fedprompt federation: per-client results")
    for col in ("client", "group", "cluster", "acc before", "acc after", "macro-F1 after"):
        table.add_column(col)
    table.add_column("up / round", justify="right")
    table.add_column("down / round", justify="right")
    for cid, c in sorted(summary["clients"].items()):
        table.add_row(
            cid,
            _group(c.get("metadata", {})),
            str(c.get("cluster", "")),
            _pct(c.get("accuracy_before")),
            _pct(c.get("accuracy_after")),
            _pct(c.get("macro_f1_after")),
            _kib(c.get("bytes_up_per_round")),
            _kib(c.get("bytes_down_per_round")),
        )
    return table


def bytes_table(summary: dict[str, Any]) -> Table:
    """Bytes up/down of every client in every round, as counted on the wire."""
    table = Table(title="bytes on the wire per client per round (up / down)")
    table.add_column("client")
    rounds = [r["round"] for r in summary["rounds"]]
    for r in rounds:
        table.add_column(f"round {r}", justify="right")
    for cid, c in sorted(summary["clients"].items()):
        cells = []
        for r in rounds:
            v = c["rounds"].get(r)
            cells.append(
                "-"
                if v is None
                else f"{v['bytes_up'] / 1024:.1f} / {v['bytes_down'] / 1024:.1f} KiB"
            )
        table.add_row(cid, *cells)
    return table


def rounds_table(summary: dict[str, Any]) -> Table:
    """Per-round mean / worst accuracy, Jain's index, duration."""
    table = Table(title="rounds")
    for col in ("round", "clusters", "mean acc", "worst acc", "std", "Jain", "seconds"):
        table.add_column(col, justify="right")
    for r in summary["rounds"]:
        s = r["summary"]
        table.add_row(
            str(r["round"]),
            str(r["num_clusters"]),
            _pct(s.get("accuracy_mean")),
            _pct(s.get("accuracy_worst")),
            f"{s.get('accuracy_std', 0):.3f}",
            f"{s.get('jain_index', 0):.3f}",
            f"{s.get('round_seconds', 0):.1f}",
        )
    return table
