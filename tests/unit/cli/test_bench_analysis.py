"""The benchmark's analysis: learning-rate choice on validation, verdicts, ratios, comparisons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fedprompt_cli.bench_analysis import (
    choose_learning_rates,
    communication_ratios,
    compression_comparisons,
    headline,
    held_out_sizes,
    identical_groups,
)

MakeRecord = Callable[..., dict[str, Any]]
ThreeSeeds = Callable[..., list[dict[str, Any]]]


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


def test_communication_ratio_to_full_fedavg(three_seeds: ThreeSeeds) -> None:
    records = three_seeds("fpl", [0.6, 0.6, 0.6], up=100, down=200) + three_seeds(
        "full-fedavg", [0.7, 0.7, 0.7], up=10_000, down=20_000
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


def test_small_test_splits_are_stated(make_record: MakeRecord) -> None:
    records = [make_record(accs=[[0.5, 0.5, 0.5]]), make_record(task="vision", accs=[[0.5, 0.5]])]
    assert held_out_sizes(records) == {"text": (10, 12), "vision": (10, 11)}


def test_strategies_that_cannot_be_told_apart_are_named(three_seeds: ThreeSeeds) -> None:
    records = (
        three_seeds("fpl", [0.6, 0.7, 0.8])
        + three_seeds("local", [0.6, 0.7, 0.8])
        + three_seeds("fedavg", [0.6, 0.7, 0.5])
    )
    chosen = {("text", s): 0.03 for s in ("fpl", "local", "fedavg")}
    lines = identical_groups(headline(records, chosen))
    assert len(lines) == 1 and "fpl, local" in lines[0] and "fedavg" not in lines[0]


def test_compression_is_compared_with_plain_fpl_of_the_same_seeds(
    compression_records: list[dict[str, Any]],
) -> None:
    comparisons = {c.method: c for c in compression_comparisons(compression_records)}
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
