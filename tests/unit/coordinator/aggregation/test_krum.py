"""Tests of multi-Krum: distances, scores, and that it keeps the honest cluster."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt_coordinator.aggregation.fedavg import WeightedFedAvg
from fedprompt_coordinator.aggregation.krum import (
    MultiKrum,
    krum_scores,
    multi_krum_select,
    squared_distances,
)
from fedprompt_coordinator.aggregation.levels import Level
from fedprompt_coordinator.domain import ClientUpdate, FederationModel


def test_squared_distances_take_all_tensors_of_a_member_as_one_vector() -> None:
    members = [
        [np.array([0.0, 0.0]), np.array([0.0])],
        [np.array([3.0, 0.0]), np.array([4.0])],
        [np.array([0.0, 1.0]), np.array([0.0])],
    ]
    d = squared_distances(members)
    np.testing.assert_allclose(d, [[0, 25, 1], [25, 0, 26], [1, 26, 0]])


def test_krum_scores_sum_the_nearest_n_minus_f_minus_2_distances() -> None:
    d = np.array(
        [
            [0, 1, 4, 100],
            [1, 0, 1, 81],
            [4, 1, 0, 64],
            [100, 81, 64, 0],
        ],
        dtype=np.float64,
    )
    # n = 4, f = 0: two nearest others; f = 1: one (at least one neighbour is always scored)
    np.testing.assert_array_equal(krum_scores(d, 0), [5, 2, 5, 145])
    np.testing.assert_array_equal(krum_scores(d, 1), [1, 1, 1, 64])
    np.testing.assert_array_equal(krum_scores(d, 5), [1, 1, 1, 64])


def test_selection_keeps_n_minus_f_and_breaks_ties_by_id() -> None:
    d = np.zeros((3, 3))
    assert multi_krum_select(d, f=1, m=None, ids=["c", "a", "b"]) == [1, 2]
    assert multi_krum_select(d, f=0, m=1, ids=["c", "a", "b"]) == [1]
    assert multi_krum_select(d, f=5, m=None, ids=["c", "a", "b"]) == [1]  # at least one
    assert multi_krum_select(np.zeros((1, 1)), f=1, m=None, ids=["x"]) == [0]


@pytest.mark.parametrize(("f", "m"), [(1, None), (0, 1), (3, None)])
def test_two_members_are_both_kept_whatever_f_and_m(f: int, m: int | None) -> None:
    # their scores are always equal: a choice would drop the same member (by id) every round
    d = np.array([[0.0, 9.0], [9.0, 0.0]])
    assert multi_krum_select(d, f=f, m=m, ids=["b", "a"]) == [0, 1]


def _member(cid: str, delta: list[float], n: int = 1) -> ClientUpdate:
    return ClientUpdate(cid, 0, n, {"prompt.global": np.array(delta, np.float32)})


def test_krum_picks_the_honest_cluster_and_averages_it() -> None:
    rng = np.random.default_rng(0)
    honest = [_member(f"h{i}", list(1.0 + 0.05 * rng.normal(size=4))) for i in range(5)]
    attackers = [_member("x1", [-10, 10, -10, 10], 10**9), _member("x2", [-9, 9, -9, 9])]
    model = FederationModel({"prompt.global": np.zeros(4, np.float32)}, {}, {})
    rule = MultiKrum(WeightedFedAvg(), level=Level.GLOBAL, f=2)
    out = rule.aggregate(model, [*honest, *attackers])
    assert rule.last_info["global_krum_kept"] == 5  # n - f
    # exactly the honest mean, weighted by their (equal) counts
    expected = np.mean([u.tensors["prompt.global"] for u in honest], axis=0)
    np.testing.assert_allclose(out.global_tensors["prompt.global"], expected, rtol=1e-5)
    krum = MultiKrum(WeightedFedAvg(), level=Level.GLOBAL, f=2, m=1)
    out = krum.aggregate(model, [*honest, *attackers])
    chosen = out.global_tensors["prompt.global"]
    assert any(np.allclose(chosen, u.tensors["prompt.global"]) for u in honest)


def test_krum_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="f >= 0"):
        MultiKrum(WeightedFedAvg(), level=Level.GLOBAL, f=-1)
    with pytest.raises(ValueError, match="m >= 1"):
        MultiKrum(WeightedFedAvg(), level=Level.GLOBAL, f=1, m=0)
