"""The benchmark report: learning-rate choice on validation, verdicts, ratios, files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedprompt_cli.bench_plan import tiny_plan
from fedprompt_cli.bench_report import (
    choose_learning_rates,
    communication_ratios,
    headline,
    verdicts,
    write_report,
)

MakeRecord = Callable[..., dict[str, Any]]


def test_learning_rate_is_chosen_on_validation_not_test(make_record: MakeRecord) -> None:
    # lr 0.1 has the better test accuracy, lr 0.01 the better validation accuracy
    tune = [
        make_record(strategy="fpl", lr=0.1, accs=[[0.9, 0.9]], vals=[0.2, 0.2]),
        make_record(strategy="fpl", lr=0.01, accs=[[0.1, 0.1]], vals=[0.6, 0.6]),
        make_record(strategy="local", lr=0.1, accs=[[0.5, 0.5]], vals=[0.4, 0.4]),
        make_record(strategy="local", lr=0.01, accs=[[0.5, 0.5]], vals=[0.4, 0.4]),
    ]
    chosen = choose_learning_rates(tune)
    assert chosen[("text", "fpl")] == 0.01
    assert chosen[("text", "local")] == 0.01  # a tie goes to the smaller rate


def _three_seeds(
    make_record: MakeRecord, strategy: str, accs: list[float], **kw: Any
) -> list[dict[str, Any]]:
    return [make_record(strategy=strategy, seed=s, accs=[[a, a]], **kw) for s, a in enumerate(accs)]


def test_verdicts_say_plainly_when_fpl_does_not_win(make_record: MakeRecord) -> None:
    records = (
        _three_seeds(make_record, "fpl", [0.60, 0.62, 0.61])
        + _three_seeds(make_record, "local", [0.70, 0.71, 0.72])  # clearly better than fpl
        + _three_seeds(make_record, "fedavg", [0.40, 0.41, 0.42])  # clearly worse
        + _three_seeds(make_record, "clustered", [0.55, 0.60, 0.65])  # within the spread
    )
    chosen = {("text", s): 0.03 for s in ("fpl", "local", "fedavg", "clustered")}
    lines = verdicts(headline(records, chosen))
    text = "\n".join(lines)
    assert "**text: fpl does not beat local** on mean accuracy" in text
    assert "fpl beats fedavg on mean accuracy by 20.0 points" in text
    assert "fpl is ahead of clustered on mean accuracy" in text and "not a clear win" in text
    assert len(lines) == 6  # 3 baselines x (mean, worst)


def test_communication_ratio_to_full_fedavg(make_record: MakeRecord) -> None:
    records = _three_seeds(make_record, "fpl", [0.6, 0.6, 0.6], up=100, down=200) + _three_seeds(
        make_record, "full-fedavg", [0.7, 0.7, 0.7], up=10_000, down=20_000
    )
    chosen = {("text", "fpl"): 0.03, ("text", "full-fedavg"): 0.03}
    ratios = communication_ratios(headline(records, chosen))
    assert ratios[("text", "fpl")] == pytest.approx(0.01)
    assert ratios[("text", "full-fedavg")] == pytest.approx(1.0)


def test_headline_skips_private_runs_and_other_learning_rates(make_record: MakeRecord) -> None:
    records = [
        make_record(strategy="fpl", lr=0.03, accs=[[0.6, 0.6]]),
        make_record(strategy="fpl", lr=0.09, accs=[[0.9, 0.9]]),
        make_record(strategy="fpl", lr=0.03, accs=[[0.1, 0.1]], dp_epsilon=1.0, stage="privacy"),
    ]
    results = headline(records, {("text", "fpl"): 0.03})
    assert [(r.variant, len(r.runs)) for r in results] == [("fpl", 1)]


def test_write_report_writes_tables_plots_and_raw_files(
    tmp_path: Path, make_record: MakeRecord
) -> None:
    plan = tiny_plan()
    records = []
    for s in plan.strategies:
        records += _three_seeds(make_record, s, [0.5, 0.6, 0.7], stage="tune")
    records += [
        make_record(
            strategy="fpl", seed=k, accs=[[0.4, 0.5]], dp_epsilon=4.0, epsilon=4.0, stage="privacy"
        )
        for k in range(2)
    ]
    for r in records:
        r["spec"]["learning_rate"] = 0.03
    report = write_report(
        tmp_path, plan, records, {"elapsed_seconds": 60, "command": "fedprompt bench --tiny"}
    )
    text = report.read_text()
    for heading in (
        "## Headline",
        "## What the numbers say",
        "## Per-cluster accuracy",
        "## Privacy",
        "## Learning-rate selection (validation)",
        "## Plots",
    ):
        assert heading in text
    assert "fedprompt bench --tiny" in text
    assert "fpl dp-fedavg ε=4" in text
    for name in (
        "accuracy_per_round.png",
        "accuracy_vs_bytes.png",
        "privacy_utility.png",
        "per_client_accuracy.png",
    ):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in text
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == len(records) + 1
    assert len(json.loads((tmp_path / "results.json").read_text())) == len(records)
    assert (tmp_path / "summary.csv").exists()
    head = json.loads((tmp_path / "headline.json").read_text())
    assert {r["variant"] for r in head["results"]} == set(plan.strategies)


def test_small_test_splits_are_stated(make_record: MakeRecord) -> None:
    from fedprompt_cli.bench_report import held_out_sizes

    records = [make_record(accs=[[0.5, 0.5, 0.5]]), make_record(task="vision", accs=[[0.5, 0.5]])]
    assert held_out_sizes(records) == {"text": (10, 12), "vision": (10, 11)}


def test_strategies_that_cannot_be_told_apart_are_named(make_record: MakeRecord) -> None:
    from fedprompt_cli.bench_report import identical_groups

    records = (
        _three_seeds(make_record, "fpl", [0.6, 0.7, 0.8])
        + _three_seeds(make_record, "local", [0.6, 0.7, 0.8])
        + _three_seeds(make_record, "fedavg", [0.6, 0.7, 0.5])
    )
    chosen = {("text", s): 0.03 for s in ("fpl", "local", "fedavg")}
    lines = identical_groups(headline(records, chosen))
    assert len(lines) == 1 and "fpl, local" in lines[0] and "fedavg" not in lines[0]
