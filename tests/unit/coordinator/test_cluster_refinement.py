"""The coordinator's evidence for cluster refinement: leave-one-out alignment scores, pairs
that split off, the hysteresis of the count, hostile updates, and its durable form."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt_coordinator.cluster_refinement import (
    AlignmentTracker,
    Evidence,
    alignment_scores,
)
from fedprompt_coordinator.domain import ClientUpdate

E1, E2, E3 = np.eye(3, dtype=np.float32)


def _update(
    cid: str, cluster: int, cluster_prompt: np.ndarray, **extra: np.ndarray
) -> ClientUpdate:
    tensors = {"prompt.cluster": np.asarray(cluster_prompt, dtype=np.float32), **extra}
    return ClientUpdate(client_id=cid, cluster_id=cluster, num_examples=10, tensors=tensors)


def _misled_round(x_direction: np.ndarray = E1) -> list[ClientUpdate]:
    """Cluster 0 (a, b) moves along E1, cluster 1 (c, d) along E2; x sits in cluster 1."""
    return [
        _update("a", 0, E1 + 0.1 * E3),
        _update("b", 0, E1 - 0.1 * E3),
        _update("c", 1, E2 + 0.1 * E3),
        _update("d", 1, E2 - 0.1 * E3),
        _update("x", 1, x_direction),
    ]


def test_scores_are_leave_one_out_and_only_over_cluster_level_tensors() -> None:
    updates = _misled_round()
    # the global prompt points everyone the same way: it must not count
    for u in updates:
        u.tensors["prompt.global"] = np.full(3, 100.0, dtype=np.float32)
    scores = alignment_scores(updates)
    assert scores["x"][0] == pytest.approx(np.cos(np.arctan(0.0)), abs=1e-2)  # a, b ≈ E1
    assert scores["x"][1] < 0.5  # c, d without x itself
    # a's own cluster is b alone: cos(E1 + .1 E3, E1 - .1 E3)
    expected = (1 - 0.01) / (1 + 0.01)
    assert scores["a"][0] == pytest.approx(expected, rel=1e-5)


def test_a_member_aligned_with_another_cluster_names_it_and_the_rest_their_own() -> None:
    tracker = AlignmentTracker(after_rounds=2)
    best = tracker.best_clusters(_misled_round(), new_id=2)
    assert best == {"a": 0, "b": 0, "c": 1, "d": 1, "x": 0}


def test_the_margin_keeps_a_member_home_when_the_other_cluster_is_only_a_little_better() -> None:
    x = E1 + 0.9 * E2  # a little closer to cluster 0 than to its own
    plain = AlignmentTracker(after_rounds=1).best_clusters(_misled_round(x), new_id=2)
    strict = AlignmentTracker(after_rounds=1, margin=0.5).best_clusters(_misled_round(x), new_id=2)
    assert plain["x"] == 0
    assert strict["x"] == 1


def test_a_member_alone_in_its_cluster_this_round_gives_no_evidence() -> None:
    updates = [_update("a", 0, E1), _update("b", 0, E1), _update("x", 1, E1)]
    assert "x" not in AlignmentTracker(after_rounds=1).best_clusters(updates, new_id=2)


def test_two_members_of_a_scattered_group_split_off_together_into_a_new_cluster() -> None:
    """x (cluster 0) and y (cluster 1) share a group the metadata split: they point along E3."""
    updates = [
        _update("a", 0, E1),
        _update("b", 0, E1 + 0.05 * E2),
        _update("x", 0, E3 + 0.2 * E1),
        _update("c", 1, E2),
        _update("d", 1, E2 + 0.05 * E1),
        _update("y", 1, E3 + 0.2 * E2),
    ]
    best = AlignmentTracker(after_rounds=1).best_clusters(updates, new_id=5)
    assert best == {"a": 0, "b": 0, "c": 1, "d": 1, "x": 5, "y": 5}


def test_a_peer_that_prefers_someone_else_does_not_make_a_pair() -> None:
    """x's best peer is y, but y sits well in its own cluster: no new cluster."""
    updates = [
        _update("a", 0, E1),
        _update("b", 0, E1),
        _update("x", 0, E2 + 0.1 * E3),
        _update("c", 1, E2),
        _update("y", 1, E2),
    ]
    best = AlignmentTracker(after_rounds=1).best_clusters(updates, new_id=5)
    assert best["y"] == 1
    assert best["x"] == 1  # x moves to y's cluster instead
    assert 5 not in best.values()


def test_a_huge_norm_member_weighs_no_more_than_any_other_in_the_reference() -> None:
    """Directions are unit vectors: 1e30 along E3 in cluster 0 is one vote, not a takeover."""
    updates = [
        _update("a", 0, E1),
        _update("b", 0, E1),
        _update("h", 0, 1e30 * E3),
        _update("c", 1, E2),
        _update("d", 1, E2),
        _update("x", 1, E1 + 0.4 * E3),
    ]
    best = AlignmentTracker(after_rounds=1).best_clusters(updates, new_id=5)
    assert best["x"] == 0
    assert best["c"] == best["d"] == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_or_zero_updates_are_left_out_without_error(bad: float) -> None:
    updates = [
        *_misled_round(),
        _update("z", 0, np.array([bad, 0.0, 0.0])),
        _update("w", 0, 0 * E1),
    ]
    best = AlignmentTracker(after_rounds=1).best_clusters(updates, new_id=2)
    assert "z" not in best and "w" not in best
    assert best["x"] == 0


def test_updates_without_cluster_level_tensors_give_no_evidence() -> None:
    updates = [
        ClientUpdate("a", 0, 1, {"prompt.global": E1}),
        ClientUpdate("b", 0, 1, {"prompt.global": E1}),
    ]
    assert AlignmentTracker(after_rounds=1).best_clusters(updates, new_id=1) == {}


def test_the_count_rises_to_r_falls_one_per_contrary_round_and_switches_at_zero() -> None:
    tracker = AlignmentTracker(after_rounds=2)
    seen: list[Evidence] = []
    # x aligns with cluster 0 three times, then with its own cluster 1 three times
    for x_direction in (E1, E1, E1, E2, E2, E2):
        evidence = tracker.observed(_misled_round(x_direction), new_id=2)
        tracker.commit(evidence)
        seen.append(evidence["x"])
    assert seen == [
        Evidence(0, 1),
        Evidence(0, 2),
        Evidence(0, 2),  # capped at r
        Evidence(0, 1),  # one contrary round: still held
        Evidence(1, 1),  # the count reached 0: its own cluster takes over
        Evidence(1, 2),
    ]


def test_observed_does_not_change_the_tracker_until_commit() -> None:
    tracker = AlignmentTracker(after_rounds=2)
    evidence = tracker.observed(_misled_round(), new_id=2)
    assert tracker.evidence == {}
    assert tracker.commit(evidence) is True
    assert tracker.commit(evidence) is False  # nothing new
    tracker.forget(frozenset({"a", "x"}))
    assert sorted(tracker.evidence) == ["a", "x"]


def test_members_that_did_not_take_part_keep_their_evidence() -> None:
    tracker = AlignmentTracker(after_rounds=3, evidence={"gone": Evidence(4, 2)})
    evidence = tracker.observed(_misled_round(), new_id=5)
    assert evidence["gone"] == Evidence(4, 2)


def test_evidence_survives_json() -> None:
    evidence = {"a": Evidence(0, 2), "x": Evidence(7, 1)}
    text = AlignmentTracker.evidence_to_json(evidence)
    assert AlignmentTracker.evidence_from_json(text) == evidence


@pytest.mark.parametrize(
    "text",
    ["[]", '{"a": [0]}', '{"a": [0, -1]}', '{"a": [-1, 1]}', '{"a": [true, 1]}', '{"a": "x"}'],
)
def test_unreadable_evidence_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="evidence"):
        AlignmentTracker.evidence_from_json(text)


@pytest.mark.parametrize(("after", "margin"), [(0, 0.0), (1, -0.1), (1, float("nan"))])
def test_the_tracker_refuses_settings_it_cannot_count_with(after: int, margin: float) -> None:
    with pytest.raises(ValueError):
        AlignmentTracker(after_rounds=after, margin=margin)


def test_two_members_alone_in_their_clusters_pair_into_the_lower_id_not_a_new_one() -> None:
    """The metadata left x alone in cluster 3 and y alone in cluster 1; both point along E3.

    Alone, neither can be compared with its own cluster, but as each other's best peer they
    pair, and join an existing cluster (keeping its trained tensors) instead of a new one."""
    updates = [
        _update("a", 0, E1),
        _update("b", 0, E1 + 0.05 * E2),
        _update("y", 1, E3 + 0.1 * E2),
        _update("x", 3, E3 + 0.1 * E1),
    ]
    best = AlignmentTracker(after_rounds=1, margin=0.25).best_clusters(updates, new_id=4)
    assert best == {"a": 0, "b": 0, "x": 1, "y": 1}


def test_a_member_alone_joins_the_cluster_of_its_peer_that_is_not() -> None:
    """y is alone in cluster 2; x sits badly in cluster 1 (c, d point elsewhere)."""
    updates = [
        _update("c", 1, E2),
        _update("d", 1, E2 + 0.05 * E1),
        _update("x", 1, E3 + 0.1 * E1),
        _update("y", 2, E3 + 0.1 * E2),
    ]
    best = AlignmentTracker(after_rounds=1, margin=0.25).best_clusters(updates, new_id=3)
    assert best["x"] == best["y"] == 2
    assert best["c"] == best["d"] == 1


def test_a_lone_member_whose_peer_sits_well_at_home_stays_without_evidence() -> None:
    """A lone truthful member (its partner missed the round) is not pulled anywhere."""
    updates = [
        _update("a", 0, E1),
        _update("b", 0, E1 + 0.1 * E3),
        _update("x", 1, E1 + 0.5 * E2),  # alone; closest to a and b, who stay home
    ]
    best = AlignmentTracker(after_rounds=1, margin=0.25).best_clusters(updates, new_id=2)
    assert "x" not in best
    assert best["a"] == best["b"] == 0


def test_a_member_with_a_close_peer_at_home_stays_when_another_member_drags_the_mean_down() -> None:
    """m (misled, or hostile) points away from cluster 0 and pulls a's leave-one-out score
    to 0.33, below cluster 1's 0.67; but a's closest member at home, b, is at 0.86."""
    updates = [
        _update("a", 0, E1 + 0.6 * E2),
        _update("b", 0, E1),
        _update("m", 0, -E1 + E3),
        _update("c", 1, E2 + 0.2 * E1),
        _update("d", 1, E2 + 0.2 * E1),
    ]
    scores = alignment_scores(updates)
    assert scores["a"][1] > scores["a"][0] + 0.25  # the mean alone would move a
    best = AlignmentTracker(after_rounds=1, margin=0.25).best_clusters(updates, new_id=2)
    assert best["a"] == 0
