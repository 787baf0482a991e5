"""Figures of one benchmark run: accuracy statistics, bytes, ε, per-group accuracy."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from fedprompt_cli.bench_metrics import group_of_client, jain_index, run_metrics, spread

MakeRecord = Callable[..., dict[str, Any]]


def test_jain_index_bounds() -> None:
    assert jain_index([0.5, 0.5, 0.5]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    assert jain_index([]) == 1.0
    assert jain_index([0.0, 0.0]) == 1.0
    assert 0.25 < jain_index([0.9, 0.5, 0.1, 0.3]) < 1.0


def test_run_metrics_from_summary(make_record: MakeRecord) -> None:
    record = make_record(
        accs=[[0.2, 0.4, 0.6, 0.8], [0.5, 0.5, 1.0, 0.6]],
        vals=[0.1, 0.2, 0.3, 0.4],
        groups=["x", "x", "y", "y"],
        epsilon=3.5,
    )
    m = run_metrics(record)
    assert m.accuracy_mean == pytest.approx(0.65)
    assert m.accuracy_worst == pytest.approx(0.5)
    assert m.accuracy_std == pytest.approx(math.sqrt((2 * 0.15**2 + 0.35**2 + 0.05**2) / 4))
    assert m.jain == pytest.approx(jain_index([0.5, 0.5, 1.0, 0.6]))
    assert m.macro_f1 == pytest.approx(0.325)
    assert m.val_accuracy == pytest.approx(0.25)
    assert m.accuracy_by_round == pytest.approx((0.5, 0.65))
    # setup bytes (4 x 10) then 4 clients x 3000 bytes per round
    assert m.cumulative_bytes_by_round == pytest.approx((40 + 12000, 40 + 24000))
    assert m.bytes_up_per_client_round == 1000 and m.bytes_down_per_client_round == 2000
    assert m.epsilon == 3.5
    assert m.client_train_seconds == pytest.approx(1.5)
    assert m.round_seconds == pytest.approx(4.0)
    assert m.per_group == pytest.approx({"x": 0.5, "y": 0.8})
    assert m.bytes_to_reach(0.6) == pytest.approx(24040)
    assert m.bytes_to_reach(0.5) == pytest.approx(12040)
    assert m.bytes_to_reach(0.9) is None


def test_dp_sgd_epsilon_is_the_largest_reported(make_record: MakeRecord) -> None:
    m = run_metrics(make_record(accs=[[0.5, 0.5], [0.6, 0.6]], dp_sgd_epsilon=8.0))
    assert m.dp_sgd_epsilon == pytest.approx(8.0)


def test_a_run_without_rounds_is_rejected(make_record: MakeRecord) -> None:
    record = make_record(accs=[[0.5, 0.5]])
    for client in record["summary"]["clients"].values():
        client["rounds"] = {}
    with pytest.raises(ValueError, match="no completed round"):
        run_metrics(record)


def test_group_of_client() -> None:
    assert group_of_client({"specialty": "psychiatry"}) == "psychiatry"
    assert group_of_client({"scanner_orientation_deg": 90.0}) == "rot90"
    assert group_of_client({}) == "all"


def test_spread_ignores_missing_values() -> None:
    s = spread([0.5, None, 0.7, float("nan")])
    assert s.n == 2 and s.mean == pytest.approx(0.6) and s.std == pytest.approx(math.sqrt(0.02))
    assert spread([0.4]).std == 0.0
    assert spread([]).n == 0 and spread([]).fmt() == "-"
    assert spread([0.5, 0.7]).fmt(100) == "60.0 ± 14.1"
