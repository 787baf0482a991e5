"""Tests of splitting a protobuf message into parts under a byte budget and merging them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprompt.message_parts import merge_messages, split_message
from fedprompt.v1 import clusterer_pb2


def _request(n: int, *, metadata_bytes: int = 60) -> clusterer_pb2.ClusterRequest:
    return clusterer_pb2.ClusterRequest(
        members=[
            clusterer_pb2.MemberMetadata(
                client_id=f"silo-{i:05d}", metadata_json="x" * metadata_bytes
            )
            for i in range(n)
        ],
        previous_assignment={f"silo-{i:05d}": i % 5 for i in range(0, n, 2)},
        min_cluster_size=3,
        min_samples=2,
        noise_policy=clusterer_pb2.NOISE_POLICY_SINGLETON,
    )


def test_parts_stay_under_the_budget_and_merge_back_to_the_message() -> None:
    request = _request(5_000)
    parts = split_message(request, max_bytes=64 * 1024)
    assert len(parts) > 1
    assert all(p.ByteSize() <= 64 * 1024 for p in parts)
    # the settings travel in the first part only
    assert parts[0].min_cluster_size == 3 and all(p.min_cluster_size == 0 for p in parts[1:])
    assert merge_messages(parts, clusterer_pb2.ClusterRequest()) == request


def test_a_small_message_is_one_part_equal_to_itself() -> None:
    request = _request(3)
    assert split_message(request, max_bytes=1 << 20) == [request]
    assert split_message(clusterer_pb2.ClusterRequest(), max_bytes=10) == [
        clusterer_pb2.ClusterRequest()
    ]


def test_an_element_over_the_budget_travels_alone() -> None:
    request = clusterer_pb2.ClusterRequest(
        members=[
            clusterer_pb2.MemberMetadata(client_id="small-1", metadata_json="{}"),
            clusterer_pb2.MemberMetadata(client_id="big", metadata_json="y" * 5_000),
            clusterer_pb2.MemberMetadata(client_id="small-2", metadata_json="{}"),
        ]
    )
    parts = split_message(request, max_bytes=1_000)
    assert [[m.client_id for m in p.members] for p in parts] == [["small-1"], ["big"], ["small-2"]]
    assert merge_messages(parts, clusterer_pb2.ClusterRequest()) == request


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        split_message(_request(1), max_bytes=0)


@settings(max_examples=60, deadline=None)
@given(
    assignment=st.dictionaries(
        st.text(min_size=1, max_size=30), st.integers(-(2**31), 2**31 - 1), max_size=200
    ),
    noise=st.lists(st.text(max_size=30), max_size=50),
    num_clusters=st.integers(0, 2**32 - 1),
    budget=st.integers(1, 4_000),
)
def test_any_answer_survives_splitting(
    assignment: dict[str, int], noise: list[str], num_clusters: int, budget: int
) -> None:
    response = clusterer_pb2.ClusterResponse(
        assignment=assignment,
        num_clusters=num_clusters,
        noise_reassigned=noise,
        feature_names=["a", "b=c"],
        seconds=0.5,
    )
    parts = split_message(response, max_bytes=budget)
    assert merge_messages(parts, clusterer_pb2.ClusterResponse()) == response
    for part in parts:
        elements = len(part.assignment) + len(part.noise_reassigned) + len(part.feature_names)
        assert part.ByteSize() <= budget or elements <= 1
