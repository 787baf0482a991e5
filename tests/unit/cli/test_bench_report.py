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


def _compression_records(make_record: MakeRecord) -> list[dict[str, Any]]:
    """fpl on 3 seeds (1000 B up), int8 on the same seeds (300 B), fp16 on seeds 0 and 1."""
    return (
        _three_seeds(make_record, "fpl", [0.60, 0.62, 0.64], up=1000)
        + [make_record(strategy="fpl", lr=0.09, accs=[[0.9, 0.9]], vals=[0.1, 0.1], up=5000)]
        + [
            make_record(strategy="fpl", seed=s, accs=[[a, a]], up=300, stage="compression",
                        upload_compression="int8")
            for s, a in enumerate([0.59, 0.61, 0.63])
        ]
        + [
            make_record(strategy="fpl", seed=s, accs=[[a, a]], up=500, stage="compression",
                        upload_compression="fp16")
            for s, a in enumerate([0.70, 0.72])
        ]
    )  # fmt: skip


def test_compression_is_compared_with_plain_fpl_of_the_same_seeds(make_record: MakeRecord) -> None:
    from fedprompt_cli.bench_report import compression_comparisons

    comparisons = {c.method: c for c in compression_comparisons(_compression_records(make_record))}
    assert sorted(comparisons) == ["fp16", "int8"]
    int8, fp16 = comparisons["int8"], comparisons["fp16"]
    assert int8.baseline is not None and int8.baseline.seeds == (0, 1, 2)
    assert int8.bytes_ratio() == pytest.approx(0.3)
    assert int8.sentence() == (
        "text: int8 uploads cut fpl's upload bytes by 3.3x; mean accuracy changes by -1.0 "
        "points (worst client: -1.0), within the seed spread (2.0 points, seeds 0, 1, 2)."
    )
    assert fp16.baseline is not None and fp16.baseline.seeds == (0, 1)  # seed 2 left out
    assert fp16.bytes_ratio() == pytest.approx(0.5)
    assert fp16.sentence() == (
        "text: fp16 uploads cut fpl's upload bytes by 2.0x; mean accuracy changes by +10.0 "
        "points (worst client: +10.0), more than the seed spread (1.4 points, seeds 0, 1)."
    )


def test_compression_without_a_plain_run_or_with_one_seed_says_so(
    make_record: MakeRecord,
) -> None:
    from fedprompt_cli.bench_report import compression_comparisons

    alone = make_record(seed=4, accs=[[0.5, 0.5]], stage="compression", upload_compression="int8")
    [c] = compression_comparisons([alone])
    assert c.baseline is None and c.bytes_ratio() is None
    assert (
        c.sentence()
        == "text: int8 uploads have no uncompressed fpl run of seeds 4 to compare with."
    )
    plain = make_record(seed=4, accs=[[0.5, 0.5]], up=1000)
    [c] = compression_comparisons([alone, plain])
    assert c.sentence().endswith(
        "changes by +0.0 points (worst client: +0.0), one seed (4), so there is no seed spread "
        "to judge it by."
    )
    bigger = make_record(seed=4, accs=[[0.5, 0.5]], up=2000, upload_compression="fp16")
    assert "do not cut fpl's upload bytes (2.00x of uncompressed)" in (
        compression_comparisons([bigger, plain])[0].sentence()
    )


def test_compressed_runs_stay_out_of_the_headline_and_the_rate_choice(
    make_record: MakeRecord,
) -> None:
    records = [
        make_record(strategy="fpl", lr=0.03, accs=[[0.6, 0.6]], vals=[0.1, 0.1]),
        make_record(strategy="fpl", lr=0.09, accs=[[0.5, 0.5]], vals=[0.2, 0.2]),
        make_record(strategy="fpl", lr=0.03, accs=[[0.9, 0.9]], vals=[0.9, 0.9],
                    upload_compression="int8"),
    ]  # fmt: skip
    assert choose_learning_rates(records) == {("text", "fpl"): 0.09}
    results = headline(records, {("text", "fpl"): 0.03})
    assert [(r.variant, len(r.runs), r.stat("accuracy_mean").mean) for r in results] == [
        ("fpl", 1, pytest.approx(0.6))
    ]


def test_write_report_has_an_upload_compression_section(
    tmp_path: Path, make_record: MakeRecord
) -> None:
    plan = tiny_plan()
    records = _compression_records(make_record) + _three_seeds(
        make_record, "local", [0.5, 0.5, 0.5]
    )
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
    assert "text,fpl upload int8,0.03,3," in summary and "text,fpl upload fp16,0.03,2," in summary
    assert "fpl upload int8" in (tmp_path / "runs.csv").read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert sum(r["spec"]["upload_compression"] == "int8" for r in saved) == 3


def test_a_report_without_compression_runs_says_so(tmp_path: Path, make_record: MakeRecord) -> None:
    write_report(tmp_path, tiny_plan(), _three_seeds(make_record, "fpl", [0.5, 0.6, 0.7]), {})
    assert "No upload-compression runs in these records." in (tmp_path / "report.md").read_text()


def test_a_one_strategy_report_without_private_runs_says_so_and_skips_their_plot(
    tmp_path: Path, make_record: MakeRecord
) -> None:
    from fedprompt_cli.bench_plan import compression_plan

    write_report(tmp_path, compression_plan(), _compression_records(make_record), {})
    text = (tmp_path / "report.md").read_text()
    assert "Reproduce: `fedprompt bench --compression`" in text
    said = text[text.index("## What the numbers say") : text.index("## Per-cluster")]
    assert "One strategy per task in this plan" in said
    privacy = text[text.index("## Privacy") : text.index("## Upload compression")]
    assert "No private runs in this plan." in privacy and "|" not in privacy
    assert not (tmp_path / "privacy_utility.png").exists()
    assert "privacy_utility" not in text and (tmp_path / "accuracy_per_round.png").exists()
