"""Tests of the coordinate-wise median and trimmed mean against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt_coordinator.aggregation import weighted_sum
from fedprompt_coordinator.aggregation.coordinatewise import (
    CoordinateMedian,
    TrimmedMean,
    coordinate_median,
    trim_count,
    trimmed_mean,
)
from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.aggregation.levels import Level
from fedprompt_coordinator.aggregation.weighting import ShareCap
from fedprompt_coordinator.domain import ClientUpdate, FederationModel


def _arrays(*rows: list[float]) -> list[np.ndarray]:
    return [np.array(r, dtype=np.float32) for r in rows]


def test_median_of_an_odd_count_is_the_middle_value_per_coordinate() -> None:
    out = coordinate_median(_arrays([1, 9, -3], [5, 2, 0], [100, 4, -1]))
    np.testing.assert_array_equal(out, [5, 4, -1])
    assert out.dtype == np.float64


def test_median_of_an_even_count_is_the_mean_of_the_two_middle_values() -> None:
    np.testing.assert_array_equal(coordinate_median(_arrays([1], [2], [10], [1e6])), [6])


def test_trimmed_mean_with_no_trimming_is_the_mean() -> None:
    arrays = _arrays([1, 2], [3, -5], [8, 0.5])
    np.testing.assert_allclose(trimmed_mean(arrays, 0), np.mean(arrays, axis=0))


def test_trimmed_mean_drops_the_extremes_of_each_coordinate() -> None:
    # per coordinate, sorted: [-50, 1, 2, 3, 99] -> mean(1, 2, 3) = 2; [0, 0, 4, 8, 8] -> 4
    arrays = _arrays([99, 0], [1, 8], [2, 4], [3, 0], [-50, 8])
    np.testing.assert_allclose(trimmed_mean(arrays, 1), [2, 4])


def test_trim_count_rounds_up_and_always_keeps_a_value() -> None:
    assert trim_count(5, 0.0) == 0
    assert trim_count(4, 0.2) == 1  # ⌈0.8⌉: one attacker among four is trimmed
    assert trim_count(10, 0.3) == 3  # not 4 from 0.30000000000000004·10
    assert trim_count(3, 0.49) == 1
    assert trim_count(2, 0.49) == 0  # (2-1)//2: one value must remain at each coordinate
    with pytest.raises(ValueError, match="trim_fraction"):
        trim_count(4, 0.5)
    with pytest.raises(ValueError, match="cannot trim"):
        trimmed_mean(_arrays([1], [2]), 1)


def test_statistics_are_the_same_across_block_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    arrays = [rng.normal(size=(7, 5)).astype(np.float32) for _ in range(5)]
    whole_median, whole_trimmed = coordinate_median(arrays), trimmed_mean(arrays, 1)
    monkeypatch.setattr(weighted_sum, "BLOCK_ELEMENTS", 8)
    from fedprompt_coordinator.aggregation import coordinatewise

    monkeypatch.setattr(coordinatewise, "BLOCK_ELEMENTS", 8)  # 8 // 5 = 1 coordinate per block
    np.testing.assert_array_equal(coordinate_median(arrays), whole_median)
    np.testing.assert_array_equal(trimmed_mean(arrays, 1), whole_trimmed)


def _model() -> FederationModel:
    return FederationModel(
        global_tensors={"prompt.global": np.array([1.0, 1.0], np.float32)},
        cluster_tensors={0: {"head.weight": np.array([0.0], np.float32)}},
        cluster_template={"head.weight": np.array([0.0], np.float32)},
    )


def _updates() -> list[ClientUpdate]:
    values = {"a": ([1, 0], 1), "b": ([2, 0], 2), "c": ([3, 0], 3), "evil": ([1000, -1000], 1e6)}
    return [
        ClientUpdate(
            cid,
            0,
            10**9 if cid == "evil" else 1,
            {
                "prompt.global": np.array(g, np.float32),
                "head.weight": np.array([h], np.float32),
            },
        )
        for cid, (g, h) in values.items()
    ]


def test_a_level_rule_replaces_only_its_level() -> None:
    inner = WeightedFedAvg(weighting=ShareCap(uniform=True))
    out = CoordinateMedian(inner, level=Level.GLOBAL).aggregate(_model(), _updates())
    np.testing.assert_allclose(out.global_tensors["prompt.global"], [1 + 2.5, 1 + 0])
    # the cluster level is still the (uniform) mean, so the outlier's 1e6 moves it
    np.testing.assert_allclose(out.cluster_tensors[0]["head.weight"], [(1 + 2 + 3 + 1e6) / 4])
    out = TrimmedMean(inner, level=Level.CLUSTER, trim_fraction=0.2).aggregate(_model(), _updates())
    np.testing.assert_allclose(out.cluster_tensors[0]["head.weight"], [2.5])  # mean of 2, 3
    assert out.global_tensors["prompt.global"][0] > 200  # the mean level is untouched
