"""Cluster refinement in the clusterer: the stateless rule that moves members by their
update alignment, its hysteresis, new clusters for scattered groups, and hostile evidence."""

from __future__ import annotations

import pytest

from fedprompt.errors import InvalidArgumentError
from fedprompt_clusterer.clustering import ClusteringSettings, Member, MetadataClusterer
from fedprompt_clusterer.refinement import (
    MAX_REFINE_AFTER_ROUNDS,
    UpdateAlignment,
    check_alignment,
    refine,
)

#: Metadata clustering's answer: a, b, x in cluster 0; c, d, y in cluster 1.
META = {"a": 0, "b": 0, "x": 0, "c": 1, "d": 1, "y": 1}


def _ev(cid: str, cluster: int, rounds: int) -> UpdateAlignment:
    return UpdateAlignment(client_id=cid, cluster_id=cluster, rounds=rounds)


def test_a_member_moves_only_when_its_evidence_reaches_r() -> None:
    below, _ = refine(META, META, [_ev("x", 1, 1)], after_rounds=2)
    assert below == META
    moved, refined = refine(META, META, [_ev("x", 1, 2)], after_rounds=2)
    assert moved == {**META, "x": 1}
    assert refined == ("x",)


def test_a_moved_member_stays_while_any_evidence_holds_and_leaves_at_zero() -> None:
    previous = {**META, "x": 1}  # moved last time
    stays, refined = refine(META, previous, [_ev("x", 1, 1)], after_rounds=3)
    assert stays["x"] == 1 and refined == ("x",)
    leaves, refined = refine(META, previous, [_ev("x", 1, 0)], after_rounds=3)
    assert leaves["x"] == 0 and refined == ()
    # evidence for its metadata cluster sends it home whatever its count
    home, refined = refine(META, previous, [_ev("x", 0, 3)], after_rounds=3)
    assert home["x"] == 0 and refined == ()


def test_one_round_of_evidence_does_not_keep_a_member_it_never_moved() -> None:
    """Hysteresis applies to members the previous assignment placed there, only."""
    out, _ = refine(META, META, [_ev("x", 1, 1)], after_rounds=3)
    assert out["x"] == 0


def test_refinement_off_ignores_all_evidence() -> None:
    out, refined = refine(META, META, [_ev("x", 1, 99)], after_rounds=0)
    assert out == META and refined == ()


def test_a_new_cluster_opens_for_two_members_and_never_for_one() -> None:
    lone, refined = refine(META, META, [_ev("x", 7, 1)], after_rounds=1)
    assert lone == META and refined == ()
    pair, refined = refine(META, META, [_ev("x", 7, 1), _ev("y", 7, 1)], after_rounds=1)
    assert pair == {**META, "x": 7, "y": 7}
    assert refined == ("x", "y")
    # one of the pair below r: the other alone cannot open it
    half, refined = refine(META, META, [_ev("x", 7, 2), _ev("y", 7, 1)], after_rounds=2)
    assert half == META and refined == ()


def test_an_opened_cluster_keeps_its_members_through_hysteresis() -> None:
    previous = {**META, "x": 7, "y": 7}
    out, refined = refine(META, previous, [_ev("x", 7, 1), _ev("y", 7, 1)], after_rounds=3)
    assert out["x"] == out["y"] == 7 and refined == ("x", "y")


def test_the_order_of_evidence_does_not_matter() -> None:
    entries = [_ev("y", 7, 2), _ev("x", 7, 2), _ev("c", 0, 2)]
    first = refine(META, META, entries, after_rounds=2)
    second = refine(META, META, list(reversed(entries)), after_rounds=2)
    assert first == second
    assert first[1] == ("c", "x", "y")


@pytest.mark.parametrize(
    ("entries", "after", "fragment"),
    [
        ([_ev("ghost", 0, 1)], 1, "not among the members"),
        ([_ev("x", 0, 1), _ev("x", 1, 1)], 1, "twice"),
        ([_ev("x", -1, 1)], 1, "cluster id must be >= 0"),
        ([_ev("x", 1, -1)], 1, "rounds must be >= 0"),
        ([], -1, "refine_after_rounds"),
        ([], MAX_REFINE_AFTER_ROUNDS + 1, "refine_after_rounds"),
    ],
)
def test_hostile_evidence_is_refused_with_the_reason(
    entries: list[UpdateAlignment], after: int, fragment: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=fragment):
        check_alignment(entries, list(META), after_rounds=after)


def _members() -> list[Member]:
    """Two metadata groups far apart: a, b, x (small) and c, d, y (large)."""
    return [
        Member("a", {"beds": 10}),
        Member("b", {"beds": 11}),
        Member("x", {"beds": 12}),
        Member("c", {"beds": 500}),
        Member("d", {"beds": 510}),
        Member("y", {"beds": 520}),
    ]


def test_the_clusterer_applies_the_evidence_after_the_metadata_cold_start() -> None:
    clusterer = MetadataClusterer()
    settings = ClusteringSettings()
    cold = clusterer.cluster(_members(), previous={}, settings=settings)
    assert cold.assignment["x"] == cold.assignment["a"] != cold.assignment["c"]
    target = cold.assignment["c"]
    result = clusterer.cluster(
        _members(),
        previous=dict(cold.assignment),
        settings=settings,
        alignment=[_ev("x", target, 2)],
        refine_after_rounds=2,
    )
    assert result.assignment["x"] == target
    assert result.refined == ("x",)
    assert result.refinement_applied and not cold.refinement_applied
    assert result.num_clusters == 2
    # the ids stay stable when the refined assignment comes back as the previous one
    again = clusterer.cluster(
        _members(),
        previous=dict(result.assignment),
        settings=settings,
        alignment=[_ev("x", target, 1)],
        refine_after_rounds=2,
    )
    assert dict(again.assignment) == dict(result.assignment)


def test_num_clusters_counts_an_opened_cluster_and_an_emptied_one() -> None:
    clusterer = MetadataClusterer()
    members = [
        Member("a", {"beds": 10}),
        Member("b", {"beds": 11}),
        Member("c", {"beds": 500}),
        Member("d", {"beds": 510}),
    ]
    cold = clusterer.cluster(members, previous={}, settings=ClusteringSettings())
    assert cold.num_clusters == 2
    fresh = max(cold.assignment.values()) + 1
    opened = clusterer.cluster(
        members,
        previous=dict(cold.assignment),
        settings=ClusteringSettings(),
        alignment=[_ev("a", fresh, 1), _ev("c", fresh, 1)],
        refine_after_rounds=1,
    )
    assert opened.num_clusters == 3
    emptied = clusterer.cluster(
        members,
        previous=dict(cold.assignment),
        settings=ClusteringSettings(),
        alignment=[_ev("a", cold.assignment["c"], 1), _ev("b", cold.assignment["c"], 1)],
        refine_after_rounds=1,
    )
    assert emptied.num_clusters == 1
