"""Figures of one benchmark run, and their mean and spread over seeds.

A *record* is what ``fedprompt bench`` keeps per federation: ``{"spec": {...},
"wall_seconds": float, "summary": <summary.json of fedprompt up>}``. All accuracies are
the clients' own *test* splits after the round's aggregation (personalised: each client
evaluates with its own local prompt segment); ``val_accuracy`` is the same on the
validation splits and is what the learning rate is chosen on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedprompt.fairness import jain_index

__all__ = [
    "RunMetrics",
    "Spread",
    "group_of_client",
    "jain_index",
    "run_metrics",
    "spread",
]


def group_of_client(metadata: Mapping[str, Any]) -> str:
    """The silo's true group (the cluster it should land in): specialty or scanner rotation."""
    if "specialty" in metadata:
        return str(metadata["specialty"])
    if "scanner_orientation_deg" in metadata:
        return f"rot{float(metadata['scanner_orientation_deg']):g}"
    return "all"


@dataclass(frozen=True)
class RunMetrics:
    """The figures of one federation."""

    accuracy_mean: float
    accuracy_worst: float
    accuracy_std: float
    jain: float
    macro_f1: float
    val_accuracy: float
    #: mean test accuracy over clients after each completed round
    accuracy_by_round: tuple[float, ...]
    #: bytes (up + down, all clients, setup included) sent by the end of each round
    cumulative_bytes_by_round: tuple[float, ...]
    bytes_up_per_client_round: float
    bytes_down_per_client_round: float
    epsilon: float
    dp_sgd_epsilon: float
    round_seconds: float
    client_train_seconds: float
    wall_seconds: float
    num_clusters: int
    #: final test accuracy per client (by client id) and per true group
    per_client: dict[str, float]
    per_group: dict[str, float]
    #: client-level ε of each DP level alone (``epsilon``: all levels composed)
    epsilon_by_level: dict[str, float] = field(default_factory=dict)

    def bytes_to_reach(self, target: float) -> float | None:
        """Total bytes on the wire until the mean accuracy first reached ``target``."""
        for acc, sent in zip(self.accuracy_by_round, self.cumulative_bytes_by_round, strict=True):
            if acc >= target:
                return sent
        return None


def _rounds(client: Mapping[str, Any]) -> dict[int, Mapping[str, Any]]:
    return {int(k): v for k, v in client.get("rounds", {}).items()}


def run_metrics(record: Mapping[str, Any]) -> RunMetrics:
    """Compute a run's figures from its ``summary.json``.

    Raises
    ------
    ValueError
        If the run completed no round with evaluation results.
    """
    summary = record["summary"]
    clients: Mapping[str, Mapping[str, Any]] = summary["clients"]
    rounds = sorted({r for c in clients.values() for r in _rounds(c)})
    if not rounds:
        raise ValueError(f"run {record['spec'].get('name')} has no completed round")
    acc_by_round, cum_bytes = [], []
    sent = float(
        sum(c.get("setup_bytes_up", 0) + c.get("setup_bytes_down", 0) for c in clients.values())
    )
    ups, downs, train_s = [], [], []
    for r in rounds:
        accs = []
        for c in clients.values():
            entry = _rounds(c).get(r)
            if entry is None:
                continue
            sent += entry["bytes_up"] + entry["bytes_down"]
            ups.append(float(entry["bytes_up"]))
            downs.append(float(entry["bytes_down"]))
            if "seconds" in entry["train"] or "train_seconds" in entry["train"]:
                train_s.append(
                    float(entry["train"].get("train_seconds", entry["train"].get("seconds", 0.0)))
                )
            if "accuracy" in entry["eval"]:
                accs.append(float(entry["eval"]["accuracy"]))
        acc_by_round.append(statistics.fmean(accs) if accs else float("nan"))
        cum_bytes.append(sent)
    last = rounds[-1]
    per_client: dict[str, float] = {}
    f1s, vals = [], []
    by_group: dict[str, list[float]] = {}
    # a scenario's truth (``fedprompt bench`` reads it beside the silos): a misleading
    # silo's metadata names another group than its own
    truth: Mapping[str, str] = record.get("true_groups") or {}
    dp_sgd = 0.0
    for cid, c in clients.items():
        per_round = _rounds(c)
        for entry in per_round.values():
            dp_sgd = max(dp_sgd, float(entry["train"].get("train_dp_sgd_epsilon", 0.0)))
        entry = per_round.get(last)
        if entry is None or "accuracy" not in entry["eval"]:
            continue
        acc = float(entry["eval"]["accuracy"])
        per_client[cid] = acc
        f1s.append(float(entry["eval"].get("macro_f1", float("nan"))))
        vals.append(float(entry["eval"].get("val_accuracy", float("nan"))))
        group = truth.get(cid) or group_of_client(c.get("metadata", {}))
        by_group.setdefault(group, []).append(acc)
    if not per_client:
        raise ValueError(f"run {record['spec'].get('name')}: no client evaluated the last round")
    accs = list(per_client.values())
    round_secs = [float(r["summary"].get("round_seconds", float("nan"))) for r in summary["rounds"]]
    return RunMetrics(
        accuracy_mean=statistics.fmean(accs),
        accuracy_worst=min(accs),
        accuracy_std=statistics.pstdev(accs),
        jain=jain_index(accs),
        macro_f1=statistics.fmean(f1s),
        val_accuracy=statistics.fmean(vals),
        accuracy_by_round=tuple(acc_by_round),
        cumulative_bytes_by_round=tuple(cum_bytes),
        bytes_up_per_client_round=statistics.fmean(ups) if ups else 0.0,
        bytes_down_per_client_round=statistics.fmean(downs) if downs else 0.0,
        epsilon=float(summary.get("epsilon", 0.0)),
        dp_sgd_epsilon=dp_sgd,
        round_seconds=statistics.fmean(round_secs) if round_secs else float("nan"),
        client_train_seconds=statistics.fmean(train_s) if train_s else 0.0,
        wall_seconds=float(record.get("wall_seconds", summary.get("wall_seconds", 0.0))),
        num_clusters=max((int(r.get("num_clusters", 0)) for r in summary["rounds"]), default=0),
        per_client=per_client,
        per_group={g: statistics.fmean(v) for g, v in sorted(by_group.items())},
        epsilon_by_level={
            str(k): float(v) for k, v in dict(summary.get("epsilon_by_level", {})).items()
        },
    )


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation over seeds (std 0 for a single value)."""

    mean: float
    std: float
    n: int

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        """``mean ± std`` after multiplying by ``scale``."""
        if self.n == 0 or math.isnan(self.mean):
            return "-"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def spread(values: Iterable[float | None]) -> Spread:
    """Mean ± sample std of the values that are not None or NaN."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return Spread(float("nan"), float("nan"), 0)
    std = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return Spread(statistics.fmean(kept), std, len(kept))
