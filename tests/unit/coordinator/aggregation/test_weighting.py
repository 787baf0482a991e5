"""Tests of capped aggregation weights: water-filling, the policy's bound, uniform weighting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedprompt_coordinator.aggregation.weighting import UNCAPPED, ShareCap, cap_shares


def test_shares_under_the_cap_are_plain_proportions() -> None:
    np.testing.assert_allclose(cap_shares([1, 3, 4], 0.5), [1 / 8, 3 / 8, 4 / 8])


def test_one_member_over_the_cap_gets_exactly_the_cap_and_the_others_keep_their_ratio() -> None:
    # 10^9 declared examples against 10, 20, 30: the big one is held at 0.5, the rest share
    # 0.5 in the ratio 1 : 2 : 3
    shares = cap_shares([10, 20, 30, 1e9], 0.5)
    np.testing.assert_allclose(shares, [0.5 / 6, 1.0 / 6, 1.5 / 6, 0.5])


def test_two_members_over_the_cap_are_both_held_at_it() -> None:
    # hand computation: s = 0.4, sorted [100, 100, 1]; k = 2 capped, T = 0.4·1/(1 - 0.8) = 2
    np.testing.assert_allclose(cap_shares([100, 1, 100], 0.4), [0.4, 0.2, 0.4])


def test_a_cap_at_or_below_the_fair_share_means_equal_weights() -> None:
    np.testing.assert_allclose(cap_shares([1, 2, 3, 4], 0.25), [0.25] * 4)
    np.testing.assert_allclose(cap_shares([1, 1e12], 0.3), [0.5, 0.5])


def test_members_of_zero_weight_leave_only_equal_weights_to_hold_the_cap() -> None:
    np.testing.assert_allclose(cap_shares([5.0, 0.0, 0.0], 0.5), [1 / 3] * 3)


@pytest.mark.parametrize("bad", [[], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]])
def test_shares_need_positive_finite_weights(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        cap_shares(bad, 0.5)


def test_a_subnormal_rest_keeps_the_cap_exact() -> None:
    # the threshold 0.75 * 5e-324 / 0.25 is not representable: shares are ratios instead
    np.testing.assert_allclose(cap_shares([1.0, 5e-324], 0.75), [0.75, 0.25])
    np.testing.assert_allclose(cap_shares([5e-324, 1.0, 5e-324], 0.5), [0.25, 0.5, 0.25])


@settings(max_examples=300, deadline=None)
@given(
    weights=st.lists(
        st.floats(min_value=0.0, max_value=1e12, allow_nan=False), min_size=1, max_size=12
    ).filter(lambda w: sum(w) > 0),
    cap=st.floats(min_value=0.01, max_value=1.0),
)
@example(weights=[1.0, 5e-324], cap=0.75)  # a subnormal rest: found by this test
@example(weights=[1e12, 1e-300, 5e-324], cap=0.5)
def test_capped_shares_sum_to_one_respect_the_cap_and_keep_the_order(
    weights: list[float], cap: float
) -> None:
    shares = cap_shares(weights, cap)
    n = len(weights)
    assert shares.sum() == pytest.approx(1.0)
    assert shares.max() <= max(cap, 1.0 / n) + 1e-9
    w = np.asarray(weights)
    for i in range(n):  # a heavier member never gets a smaller share
        for j in range(n):
            if w[i] > w[j]:
                assert shares[i] >= shares[j] - 1e-12


def test_the_policy_bound_is_the_tighter_cap_but_never_below_the_fair_share() -> None:
    policy = ShareCap(max_share=0.5, max_multiple=2.0)
    assert policy.bound(1) == 1.0
    assert policy.bound(2) == 0.5  # 2/2 = 1 capped by 0.5 (= the fair share: equal weights)
    assert policy.bound(3) == 0.5
    assert policy.bound(4) == 0.5
    assert policy.bound(10) == pytest.approx(0.2)
    assert ShareCap(max_share=0.1).bound(4) == 0.25  # below 1/n: everyone weighs the same
    assert UNCAPPED.bound(4) == 1.0


def test_uniform_weighting_ignores_the_declared_counts() -> None:
    np.testing.assert_allclose(ShareCap(uniform=True).weights([1, 10**9, 7]), [1 / 3] * 3)
    np.testing.assert_allclose(UNCAPPED.weights([1, 3]), [0.25, 0.75])
