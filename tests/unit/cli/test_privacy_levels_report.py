"""ε per DP level where the CLI reports ε: summary.json and the bench report's privacy table."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedprompt.v1 import coordinator_pb2
from fedprompt_cli.bench_metrics import run_metrics
from fedprompt_cli.bench_plan import tiny_plan
from fedprompt_cli.bench_report import write_report
from fedprompt_cli.report import summarize

LEVELS = {"global": 2.5, "cluster": 2.5, "head": 2.5}


def test_the_run_summary_keeps_the_epsilon_of_each_level() -> None:
    status = coordinator_pb2.GetStatusResponse(epsilon=4.0, delta=1e-5, epsilon_by_level=LEVELS)
    summary = summarize(status)
    assert summary["epsilon"] == 4.0
    assert summary["epsilon_by_level"] == LEVELS
    # a coordinator from before per-level accounting: an empty map
    assert summarize(coordinator_pb2.GetStatusResponse(epsilon=1.0))["epsilon_by_level"] == {}


def test_the_privacy_table_shows_each_level_beside_the_composed_epsilon(
    tmp_path: Path, make_record: Callable[..., dict[str, Any]]
) -> None:
    plan = tiny_plan()
    records = [
        make_record(strategy=s, seed=k, accs=[[0.5, 0.6]], stage="tune")
        for s in plan.strategies
        for k in range(2)
    ]
    private = [
        make_record(
            strategy="fpl", seed=k, accs=[[0.4, 0.5]], dp_epsilon=4.0, epsilon=4.0, stage="privacy"
        )
        for k in range(2)
    ]
    for r in private:
        r["summary"]["epsilon_by_level"] = LEVELS
    records += private
    for r in records:
        r["spec"]["learning_rate"] = 0.03
    assert run_metrics(private[0]).epsilon_by_level == LEVELS
    assert run_metrics(records[0]).epsilon_by_level == {}
    text = write_report(tmp_path, plan, records, {"elapsed_seconds": 1, "command": "x"}).read_text()
    privacy = text[text.index("## Privacy") :]
    assert "ε per level" in privacy
    row = next(line for line in privacy.splitlines() if "dp-fedavg ε=4" in line)
    assert "4.00 ± 0.00" in row
    assert "global 2.50 ± 0.00, cluster 2.50 ± 0.00, head 2.50 ± 0.00" not in row  # sorted
    assert "cluster 2.50 ± 0.00, global 2.50 ± 0.00, head 2.50 ± 0.00" in row
