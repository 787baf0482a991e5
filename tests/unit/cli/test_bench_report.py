"""The benchmark report: markdown sections, plots and raw files written from the records."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fedprompt_cli.bench_plan import compression_plan, tiny_plan
from fedprompt_cli.bench_report import write_report

MakeRecord = Callable[..., dict[str, Any]]
ThreeSeeds = Callable[..., list[dict[str, Any]]]


def test_write_report_writes_tables_plots_and_raw_files(
    tmp_path: Path, make_record: MakeRecord, three_seeds: ThreeSeeds
) -> None:
    plan = tiny_plan()
    records = []
    for s in plan.strategies:
        records += three_seeds(s, [0.5, 0.6, 0.7], stage="tune")
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
        "## Paired comparisons",
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
    # the same accuracies on every pair: fpl ties with local, on both metrics, and says so
    assert [(c["baseline"], c["metric"], c["verdict"]) for c in head["paired"]] == [
        ("local", "accuracy_mean", "ties"),
        ("local", "accuracy_worst", "ties"),
    ]
    assert head["paired"][0]["client_pairs"] == 6 and head["paired"][0]["ci95"] == [0.0, 0.0]
    assert "text: fpl ties with local on mean accuracy" in text
    assert "| text | local | mean accuracy | +0.0 | +0.0 to +0.0 | 1 | 6 | 0.0 | ties |" in text


def test_write_report_has_an_upload_compression_section(
    tmp_path: Path, three_seeds: ThreeSeeds, compression_records: list[dict[str, Any]]
) -> None:
    plan = tiny_plan()
    records = compression_records + three_seeds("local", [0.5, 0.5, 0.5])
    write_report(tmp_path, plan, records, {"elapsed_seconds": 1})
    text = (tmp_path / "report.md").read_text()
    section = text[text.index("## Upload compression") : text.index("## Learning-rate selection")]
    assert "| none (fpl) | 0, 1, 2 | 62.0 ± 2.0 | 62.0 ± 2.0 | 1.0 KiB | 1.000 |" in section
    assert "| none (fpl) | 0, 1 | 61.0 ± 1.4 |" in section
    assert "| int8 | 0, 1, 2 | 61.0 ± 2.0 | 61.0 ± 2.0 | 0.3 KiB | 0.300 |" in section
    assert "| fp16 | 0, 1 | 71.0 ± 1.4 | 71.0 ± 1.4 | 0.5 KiB | 0.500 |" in section
    assert "- text: int8 uploads cut fpl's upload bytes by 3.3x" in section
    headline_part = text[text.index("## Headline") : text.index("## Per-cluster")]
    assert "upload" not in headline_part and "| text | fpl | 0.03 | 62.0 ± 2.0 |" in headline_part
    head = json.loads((tmp_path / "headline.json").read_text())
    assert {r["variant"] for r in head["results"]} == {"fpl", "local"}
    assert [c["method"] for c in head["upload_compression"]] == ["fp16", "int8"]
    assert head["upload_compression"][1]["bytes_up_ratio_to_uncompressed"] == pytest.approx(0.3)
    summary = (tmp_path / "summary.csv").read_text()
    assert "text,clinics,fpl upload int8,0.03,3," in summary
    assert "text,clinics,fpl upload fp16,0.03,2," in summary
    assert "fpl upload int8" in (tmp_path / "runs.csv").read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert sum(r["spec"]["upload_compression"] == "int8" for r in saved) == 3


def test_a_report_without_compression_runs_says_so(tmp_path: Path, three_seeds: ThreeSeeds) -> None:
    write_report(tmp_path, tiny_plan(), three_seeds("fpl", [0.5, 0.6, 0.7]), {})
    assert "No upload-compression runs in these records." in (tmp_path / "report.md").read_text()


def test_a_one_strategy_report_without_private_runs_says_so_and_skips_their_plot(
    tmp_path: Path, compression_records: list[dict[str, Any]]
) -> None:
    write_report(tmp_path, compression_plan(), compression_records, {})
    text = (tmp_path / "report.md").read_text()
    assert "Reproduce: `fedprompt bench --compression`" in text
    said = text[text.index("## What the numbers say") : text.index("## Per-cluster")]
    assert "One strategy per task in this plan" in said
    privacy = text[text.index("## Privacy") : text.index("## Upload compression")]
    assert "No private runs in this plan." in privacy and "|" not in privacy
    assert not (tmp_path / "privacy_utility.png").exists()
    assert "privacy_utility" not in text and (tmp_path / "accuracy_per_round.png").exists()


def test_the_report_says_which_rates_validation_chose_and_an_untuned_plan_says_so(
    tmp_path: Path, three_seeds: ThreeSeeds
) -> None:
    records = three_seeds("fpl", [0.5, 0.6, 0.7])
    tuned = replace(tiny_plan(), base_rates={("text", "local"): 0.01, ("vision", "fpl"): 0.1})
    (tmp_path / "tuned").mkdir()
    (tmp_path / "plain").mkdir()
    write_report(tmp_path / "tuned", tuned, records, {})
    setup = (tmp_path / "tuned" / "report.md").read_text().split("## Headline")[0]
    assert "chosen on the *validation* splits by `make bench-lr`" in setup
    assert "text local 0.01;" in setup and "vision" not in setup.split("make bench-lr")[1]
    write_report(tmp_path / "plain", tiny_plan(), records, {})
    plain = (tmp_path / "plain" / "report.md").read_text().split("## Headline")[0]
    assert "**Learning rates were not tuned in this plan**" in plain
