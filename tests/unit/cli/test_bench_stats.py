"""Paired statistics on hand-made records: intervals, Wilcoxon p, verdicts and power."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from scipy import stats

from fedprompt_cli.bench_analysis import VariantResult, headline
from fedprompt_cli.bench_stats import (
    POWER_FACTOR,
    PairedComparison,
    compare,
    paired_comparisons,
    paired_runs,
    wilcoxon_p,
)

MakeRecord = Callable[..., dict[str, Any]]


def _results(
    make_record: MakeRecord, per_strategy: dict[str, list[list[float]]]
) -> dict[str, VariantResult]:
    """One headline result per strategy from ``accs[seed][client]`` (final round only)."""
    records = [
        make_record(strategy=strategy, seed=seed, accs=[accs])
        for strategy, by_seed in per_strategy.items()
        for seed, accs in enumerate(by_seed)
    ]
    chosen = {("text", s): 0.03 for s in per_strategy}
    return {r.strategy: r for r in headline(records, chosen)}


def _shifted(
    make_record: MakeRecord,
    shift: float,
    *,
    clients: int = 20,
    seeds: int = 3,
    noise: float = 0.03,
    rng_seed: int = 0,
) -> dict[str, VariantResult]:
    """Baseline accuracies per client; fpl = baseline + shift + N(0, noise) per client."""
    rng = np.random.default_rng(rng_seed)
    base = rng.uniform(0.4, 0.8, size=(seeds, clients))
    ours = base + shift + rng.normal(0.0, noise, size=base.shape)
    return _results(make_record, {"fpl": ours.tolist(), "fedavg": base.tolist()})


def _mean(make_record: MakeRecord, shift: float, **kw: Any) -> PairedComparison:
    r = _shifted(make_record, shift, **kw)
    found = compare(r["fpl"], r["fedavg"], "accuracy_mean", resamples=2000)
    assert found is not None
    return found


def test_the_interval_contains_a_known_shift_and_excludes_zero_when_it_is_large(
    make_record: MakeRecord,
) -> None:
    c = _mean(make_record, 0.05)
    assert c.ci_low < 0.05 < c.ci_high
    assert c.ci_low > 0 and c.verdict == "beats"
    assert c.clients == c.pairs == 60 and c.seeds == (0, 1, 2)


def test_the_interval_covers_the_true_shift_about_95_percent_of_the_time(
    make_record: MakeRecord,
) -> None:
    hits = 0
    trials = 60
    for k in range(trials):
        c = _mean(make_record, 0.02, rng_seed=100 + k, clients=15)
        hits += c.ci_low <= 0.02 <= c.ci_high
    assert hits / trials >= 0.85


def test_each_verdict_follows_the_interval(make_record: MakeRecord) -> None:
    beats = _mean(make_record, 0.05)
    loses = _mean(make_record, -0.05)
    ties = _mean(make_record, 0.0, noise=0.005)
    unsure = _mean(make_record, 0.0, noise=0.08, clients=4, seeds=1)
    assert (beats.verdict, loses.verdict, ties.verdict, unsure.verdict) == (
        "beats", "loses", "ties", "cannot tell",
    )  # fmt: skip
    assert ties.ci_low < 0 < ties.ci_high and ties.ci_low >= -0.01 and ties.ci_high <= 0.01
    assert unsure.ci_low < 0 < unsure.ci_high and unsure.ci_high - unsure.ci_low > 0.02
    assert beats.sentence().startswith("**text: fpl beats fedavg** on mean accuracy: +")
    assert loses.sentence().startswith("**text: fpl loses to fedavg** on mean accuracy: -")
    assert ties.sentence().startswith("text: fpl ties with fedavg on mean accuracy (the interval")
    assert unsure.sentence().startswith(
        "**text: cannot tell whether fpl beats fedavg** on mean accuracy with this data"
    )
    for c in (beats, loses, ties, unsure):
        s = c.sentence()
        assert "95 % CI" in s and ("Wilcoxon p = " in s or "Wilcoxon p < 0.001" in s)
        assert f"could detect is about {100 * c.detectable:.1f} points" in s


def test_a_significant_but_tiny_lead_is_a_win_below_the_margin(make_record: MakeRecord) -> None:
    c = _mean(make_record, 0.004, noise=0.002)
    assert c.verdict == "beats" and c.ci_high < 0.01
    assert "by less than the 1-point margin" in c.sentence()


def test_wilcoxon_p_matches_scipy() -> None:
    d = [0.05, -0.02, 0.10, 0.03, 0.07, 0.01, -0.04, 0.06]
    assert wilcoxon_p(d) == pytest.approx(stats.wilcoxon(d).pvalue)
    assert wilcoxon_p([0.0, 0.0]) == 1.0 and wilcoxon_p([]) is None
    assert wilcoxon_p([0.0, 0.1, 0.2]) == pytest.approx(stats.wilcoxon([0.1, 0.2]).pvalue)


def test_the_comparison_s_p_is_scipy_s_on_the_pooled_pairs(make_record: MakeRecord) -> None:
    ours = [[0.60, 0.70, 0.55], [0.62, 0.71, 0.50]]
    theirs = [[0.58, 0.61, 0.57], [0.60, 0.65, 0.45]]
    r = _results(make_record, {"fpl": ours, "fedavg": theirs})
    c = compare(r["fpl"], r["fedavg"], "accuracy_mean", resamples=500)
    assert c is not None
    pooled = (np.array(ours) - np.array(theirs)).ravel()
    assert c.p_value == pytest.approx(stats.wilcoxon(pooled).pvalue)
    assert c.difference == pytest.approx(pooled.mean())


def test_worst_client_pairs_each_seed_s_worst_clients(make_record: MakeRecord) -> None:
    # fpl lifts the worst client by 10 points in each seed and costs the best one 5
    ours = [[0.50, 0.80, 0.75], [0.45, 0.85, 0.70]]
    theirs = [[0.40, 0.85, 0.75], [0.35, 0.90, 0.70]]
    r = _results(make_record, {"fpl": ours, "fedavg": theirs})
    worst = compare(r["fpl"], r["fedavg"], "accuracy_worst", resamples=2000)
    assert worst is not None
    assert worst.difference == pytest.approx(0.10) and worst.pairs == 2 and worst.clients == 6
    assert worst.p_value == pytest.approx(stats.wilcoxon([0.1, 0.1]).pvalue)
    assert "2 seed pairs of 6 clients" in worst.sentence()


def test_power_shrinks_with_more_clients(make_record: MakeRecord) -> None:
    few = _mean(make_record, 0.02, clients=5)
    many = _mean(make_record, 0.02, clients=80)
    assert many.detectable < few.detectable / 2
    assert few.detectable == pytest.approx(POWER_FACTOR * few.se)
    assert pytest.approx(2.80, abs=0.01) == POWER_FACTOR


def test_pairs_are_common_seeds_and_clients_and_the_bootstrap_is_seeded(
    make_record: MakeRecord,
) -> None:
    r = _results(
        make_record,
        {"fpl": [[0.5, 0.6], [0.5, 0.6], [0.7, 0.7]], "fedavg": [[0.4, 0.5], [0.4, 0.5]]},
    )
    pairs = paired_runs(r["fpl"], r["fedavg"])
    assert sorted(pairs) == [0, 1]  # seed 2 has no fedavg run
    once = paired_comparisons(list(r.values()), resamples=500)
    again = paired_comparisons(list(r.values()), resamples=500)
    assert [(c.baseline, c.metric) for c in once] == [
        ("fedavg", "accuracy_mean"),
        ("fedavg", "accuracy_worst"),
    ]
    assert once == again


def test_one_client_cannot_tell(make_record: MakeRecord) -> None:
    r = _results(make_record, {"fpl": [[0.9]], "fedavg": [[0.1]]})
    c = compare(r["fpl"], r["fedavg"], "accuracy_mean", resamples=100)
    assert c is not None and c.verdict == "cannot tell"


def test_paired_interval_is_compares_interval_and_refuses_no_pairs(
    make_record: MakeRecord,
) -> None:
    from fedprompt_cli.bench_stats import paired_interval

    r = _shifted(make_record, 0.05)
    c = compare(r["fpl"], r["fedavg"], "accuracy_mean")
    assert c is not None
    assert paired_interval(paired_runs(r["fpl"], r["fedavg"])) == (c.ci_low, c.ci_high)
    assert c.ci_low > 0  # a true +5 points over 60 pairs
    with pytest.raises(ValueError, match="no paired seed"):
        paired_interval({})
