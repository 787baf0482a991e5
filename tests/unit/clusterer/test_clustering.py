"""Tests of MetadataClusterer: grouping, noise policies, edge cases and stable ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from fedprompt.errors import InvalidArgumentError
from fedprompt_clusterer.clustering import (
    ClusteringSettings,
    ClusterResult,
    Member,
    MetadataClusterer,
    NoisePolicy,
    assign_stable_ids,
)
from fedprompt_clusterer.features import MetadataValue

CLINICS: list[tuple[str, dict[str, MetadataValue]]] = [
    (
        "psy-north",
        {"specialty": "psychiatry", "region": "north", "num_records": 1200, "language": "en"},
    ),
    (
        "psy-south",
        {"specialty": "psychiatry", "region": "south", "num_records": 1500, "language": "en"},
    ),
    (
        "wh-north",
        {"specialty": "womens_health", "region": "north", "num_records": 20000, "language": "en"},
    ),
    (
        "wh-south",
        {"specialty": "womens_health", "region": "south", "num_records": 26000, "language": "en"},
    ),
    ("pain-north", {"specialty": "pain", "region": "north", "num_records": 5000, "language": "en"}),
    ("pain-south", {"specialty": "pain", "region": "south", "num_records": 4000, "language": "en"}),
]


def members_of(rows: Sequence[tuple[str, Mapping[str, MetadataValue]]]) -> list[Member]:
    return [Member(client_id=cid, metadata=md) for cid, md in rows]


def run(
    rows: Sequence[tuple[str, Mapping[str, MetadataValue]]],
    previous: Mapping[str, int] | None = None,
    **settings: object,
) -> ClusterResult:
    return MetadataClusterer().cluster(
        members_of(rows),
        previous=previous or {},
        settings=ClusteringSettings(**settings),  # type: ignore[arg-type]
    )


def groups(result: ClusterResult) -> set[frozenset[str]]:
    by_id: dict[int, set[str]] = {}
    for cid, cluster_id in result.assignment.items():
        by_id.setdefault(cluster_id, set()).add(cid)
    return {frozenset(g) for g in by_id.values()}


def blobs() -> list[tuple[str, dict[str, MetadataValue]]]:
    rng = np.random.default_rng(7)
    rows: list[tuple[str, dict[str, MetadataValue]]] = []
    for name, (x, y) in {"a": (-50.0, 0.0), "b": (0.0, 50.0), "c": (50.0, -50.0)}.items():
        for i in range(3):
            dx, dy = rng.normal(0.0, 1.0, size=2)
            rows.append((f"{name}{i}", {"x": x + float(dx), "y": y + float(dy)}))
    return rows


def test_three_separated_blobs_give_three_clusters() -> None:
    result = run(blobs())
    assert result.num_clusters == 3
    assert groups(result) == {
        frozenset({"a0", "a1", "a2"}),
        frozenset({"b0", "b1", "b2"}),
        frozenset({"c0", "c1", "c2"}),
    }
    assert result.noise_reassigned == ()
    assert result.feature_names == ("x", "y")
    assert result.seconds > 0


def test_realistic_clinics_group_by_specialty() -> None:
    result = run(CLINICS)
    assert groups(result) == {
        frozenset({"psy-north", "psy-south"}),
        frozenset({"wh-north", "wh-south"}),
        frozenset({"pain-north", "pain-south"}),
    }
    assert "specialty=psychiatry" in result.feature_names
    assert "log1p(num_records)" in result.feature_names


def test_first_run_ids_are_zero_based_and_follow_smallest_client_id() -> None:
    result = run(CLINICS)
    assert sorted(set(result.assignment.values())) == [0, 1, 2]
    # Smallest client ids per group: "pain-north" < "psy-north" < "wh-north".
    assert result.assignment["pain-north"] == 0
    assert result.assignment["psy-north"] == 1
    assert result.assignment["wh-north"] == 2


def test_member_order_does_not_change_the_assignment() -> None:
    assert run(CLINICS).assignment == run(list(reversed(CLINICS))).assignment


# "z" lies farther from both groups than the groups lie apart: HDBSCAN calls it noise.
# (Negative values keep the column linear: no log1p.)
OUTLIER_ROWS: list[tuple[str, dict[str, MetadataValue]]] = [
    ("a0", {"x": -10.0}),
    ("a1", {"x": -9.9}),
    ("a2", {"x": -9.8}),
    ("b0", {"x": 10.0}),
    ("b1", {"x": 10.1}),
    ("b2", {"x": 10.2}),
    ("z", {"x": 60.0}),
]


def test_noise_joins_the_nearest_centroid_by_default() -> None:
    result = run(OUTLIER_ROWS)
    assert result.noise_reassigned == ("z",)
    assert groups(result) == {frozenset({"a0", "a1", "a2"}), frozenset({"b0", "b1", "b2", "z"})}


def test_unspecified_noise_policy_equals_nearest() -> None:
    assert (
        run(OUTLIER_ROWS, noise_policy=NoisePolicy.NEAREST).assignment
        == run(OUTLIER_ROWS).assignment
    )


def test_singleton_policy_gives_noise_a_cluster_of_its_own() -> None:
    result = run(OUTLIER_ROWS, noise_policy=NoisePolicy.SINGLETON)
    assert result.noise_reassigned == ("z",)
    assert result.num_clusters == 3
    assert groups(result) == {
        frozenset({"a0", "a1", "a2"}),
        frozenset({"b0", "b1", "b2"}),
        frozenset({"z"}),
    }


SPREAD_ROWS: list[tuple[str, dict[str, MetadataValue]]] = [
    ("a", {"x": 0.0}),
    ("b", {"x": 1.0}),
    ("c", {"x": 10.0}),
]


def test_no_cluster_found_falls_back_to_one_cluster() -> None:
    result = run(SPREAD_ROWS)
    assert result.num_clusters == 1
    assert result.noise_reassigned == ("a", "b", "c")


def test_no_cluster_found_with_singleton_policy_gives_singletons() -> None:
    result = run(SPREAD_ROWS, noise_policy=NoisePolicy.SINGLETON)
    assert result.num_clusters == 3
    assert sorted(result.assignment.values()) == [0, 1, 2]


def test_fewer_members_than_min_cluster_size_fall_back() -> None:
    result = run(CLINICS[:3], min_cluster_size=5)
    assert result.num_clusters == 1
    assert len(result.noise_reassigned) == 3
    assert (
        run(CLINICS[:3], min_cluster_size=5, noise_policy=NoisePolicy.SINGLETON).num_clusters == 3
    )


def test_min_samples_above_member_count_does_not_crash() -> None:
    result = run(CLINICS, min_samples=50)
    assert set(result.assignment) == {cid for cid, _ in CLINICS}


def test_one_member_is_one_cluster() -> None:
    result = run([("solo", {"specialty": "pain"})])
    assert dict(result.assignment) == {"solo": 0}
    assert result.num_clusters == 1
    assert result.noise_reassigned == ()


def test_one_member_keeps_its_previous_id() -> None:
    assert dict(run([("solo", {})], previous={"solo": 4}).assignment) == {"solo": 4}


def test_all_identical_rows_are_one_cluster() -> None:
    rows: list[tuple[str, dict[str, MetadataValue]]] = [
        (f"c{i}", {"specialty": "pain", "beds": 10}) for i in range(5)
    ]
    result = run(rows)
    assert result.num_clusters == 1
    assert result.noise_reassigned == ()


def test_empty_metadata_everywhere_is_one_cluster() -> None:
    assert run([("a", {}), ("b", {}), ("c", {})]).num_clusters == 1


def test_duplicate_rows_within_groups_do_not_crash() -> None:
    rows: list[tuple[str, dict[str, MetadataValue]]] = [
        ("p1", {"specialty": "psychiatry", "beds": 10}),
        ("p2", {"specialty": "psychiatry", "beds": 10}),
        ("p3", {"specialty": "psychiatry", "beds": 10}),
        ("w1", {"specialty": "womens_health", "beds": 12}),
        ("w2", {"specialty": "womens_health", "beds": 12}),
        ("x1", {"specialty": "pain", "beds": 5000}),
    ]
    result = run(rows)
    assert result.noise_reassigned == ("x1",)
    assert groups(result) == {frozenset({"p1", "p2", "p3"}), frozenset({"w1", "w2", "x1"})}
    singleton = run(rows, noise_policy=NoisePolicy.SINGLETON)
    assert groups(singleton) == {
        frozenset({"p1", "p2", "p3"}),
        frozenset({"w1", "w2"}),
        frozenset({"x1"}),
    }


def test_no_members_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match="at least one member"):
        run([])


def test_duplicate_client_ids_are_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match="'a' appears more than once"):
        run([("a", {}), ("b", {}), ("a", {})])


def test_empty_client_id_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match="client_id"):
        run([("", {})])


def test_negative_previous_id_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        run(CLINICS, previous={"psy-north": -1})


@pytest.mark.parametrize(("min_cluster_size", "min_samples"), [(1, 1), (2, 0)])
def test_out_of_range_settings_are_invalid(min_cluster_size: int, min_samples: int) -> None:
    with pytest.raises(InvalidArgumentError):
        ClusteringSettings(min_cluster_size=min_cluster_size, min_samples=min_samples)


def test_reclustering_the_same_input_returns_identical_ids() -> None:
    first = run(CLINICS)
    second = run(CLINICS, previous=first.assignment)
    assert second.assignment == first.assignment
    third = run(list(reversed(CLINICS)), previous=second.assignment)
    assert third.assignment == first.assignment


def test_permuted_previous_ids_are_kept() -> None:
    previous = {
        "psy-north": 7,
        "psy-south": 7,
        "pain-north": 3,
        "pain-south": 3,
        "wh-north": 12,
        "wh-south": 12,
    }
    result = run(CLINICS, previous=previous)
    assert dict(result.assignment) == previous


def test_partially_known_previous_ids_are_kept_and_others_are_fresh() -> None:
    previous = {"psy-north": 7, "psy-south": 7, "pain-north": 3, "pain-south": 3}
    result = run(CLINICS, previous=previous)
    assert result.assignment["psy-north"] == result.assignment["psy-south"] == 7
    assert result.assignment["pain-north"] == result.assignment["pain-south"] == 3
    assert result.assignment["wh-north"] == result.assignment["wh-south"] == 8


def test_new_member_joining_a_group_keeps_existing_ids() -> None:
    previous = {
        "psy-north": 7,
        "psy-south": 7,
        "pain-north": 3,
        "pain-south": 3,
        "wh-north": 0,
        "wh-south": 0,
    }
    joined: list[tuple[str, dict[str, MetadataValue]]] = [
        *CLINICS,
        (
            "psy-east",
            {"specialty": "psychiatry", "region": "east", "num_records": 1300, "language": "en"},
        ),
    ]
    result = run(joined, previous=previous)
    assert result.assignment["psy-east"] == 7
    assert {cid: result.assignment[cid] for cid in previous} == previous


def test_brand_new_cluster_gets_a_fresh_id_not_in_previous() -> None:
    previous = {"psy-north": 7, "psy-south": 7, "pain-north": 3, "pain-south": 3}
    known = [row for row in CLINICS if row[0] in previous]
    newcomers = [row for row in CLINICS if row[0].startswith("wh-")]
    result = run([*known, *newcomers], previous=previous)
    new_id = result.assignment["wh-north"]
    assert new_id == result.assignment["wh-south"]
    assert new_id not in previous.values()
    assert new_id == 8


def test_ids_of_departed_members_are_never_reused() -> None:
    previous = {"gone-1": 9, "psy-north": 2, "psy-south": 2}
    result = run(CLINICS, previous=previous)
    assert result.assignment["psy-north"] == 2
    others = {result.assignment[cid] for cid, _ in CLINICS if not cid.startswith("psy-")}
    assert others == {10, 11}


def test_split_keeps_the_old_id_for_the_larger_overlap() -> None:
    labels = np.array([0, 0, 0, 1, 1], dtype=np.int64)
    ids = assign_stable_ids(
        ["a", "b", "c", "d", "e"], labels, {"a": 4, "b": 4, "c": 4, "d": 4, "e": 4}
    )
    assert ids == [4, 4, 4, 5, 5]


def test_merge_keeps_the_id_with_the_larger_overlap() -> None:
    labels = np.array([0, 0, 0], dtype=np.int64)
    ids = assign_stable_ids(["a", "b", "c"], labels, {"a": 1, "b": 6, "c": 6})
    assert ids == [6, 6, 6]


def test_result_assignment_is_read_only() -> None:
    result = run(CLINICS)
    with pytest.raises(TypeError):
        result.assignment["psy-north"] = 99  # type: ignore[index]
