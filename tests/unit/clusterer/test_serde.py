"""Round-trip and validation tests of the clusterer's proto <-> domain conversions."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest

from fedprompt.errors import InvalidArgumentError
from fedprompt.v1 import clusterer_pb2
from fedprompt_clusterer import serde
from fedprompt_clusterer.clustering import (
    ClusteringRequest,
    ClusteringSettings,
    ClusterResult,
    Member,
    NoisePolicy,
)
from fedprompt_clusterer.refinement import UpdateAlignment


@pytest.mark.parametrize("policy", list(NoisePolicy))
def test_noise_policy_round_trip(policy: NoisePolicy) -> None:
    assert serde.noise_policy_from_proto(serde.noise_policy_to_proto(policy)) is policy


def test_unspecified_noise_policy_is_nearest() -> None:
    assert (
        serde.noise_policy_from_proto(clusterer_pb2.NOISE_POLICY_UNSPECIFIED) is NoisePolicy.NEAREST
    )


def test_unknown_noise_policy_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match="noise_policy"):
        serde.noise_policy_from_proto(clusterer_pb2.NoisePolicy.ValueType(42))


def test_member_round_trip() -> None:
    member = Member("c1", {"specialty": "pain", "beds": 12, "ratio": 0.25, "teaching": True})
    message = serde.member_to_proto(member)
    assert json.loads(message.metadata_json) == dict(member.metadata)
    assert serde.member_from_proto(message) == member


def test_member_from_proto_rejects_bad_json_naming_the_client() -> None:
    with pytest.raises(InvalidArgumentError, match="'c9'"):
        serde.member_from_proto(clusterer_pb2.MemberMetadata(client_id="c9", metadata_json="{oops"))


def test_request_round_trip() -> None:
    request = ClusteringRequest(
        members=(Member("a", {"x": 1}), Member("b", {"x": 2})),
        previous=MappingProxyType({"a": 3, "gone": 5}),
        settings=ClusteringSettings(
            min_cluster_size=3, min_samples=2, noise_policy=NoisePolicy.SINGLETON
        ),
        alignment=(UpdateAlignment("a", 4, 2), UpdateAlignment("b", 0, 1)),
        refine_after_rounds=2,
    )
    assert serde.cluster_request_from_proto(serde.cluster_request_to_proto(request)) == request


def test_zero_settings_select_defaults() -> None:
    decoded = serde.cluster_request_from_proto(clusterer_pb2.ClusterRequest())
    assert decoded.settings == ClusteringSettings()
    assert decoded.members == ()
    assert dict(decoded.previous) == {}


def test_min_cluster_size_one_is_invalid() -> None:
    with pytest.raises(InvalidArgumentError, match="min_cluster_size"):
        serde.settings_from_proto(clusterer_pb2.ClusterRequest(min_cluster_size=1))


def test_result_round_trip() -> None:
    result = ClusterResult(
        assignment=MappingProxyType({"a": 0, "b": 7}),
        num_clusters=2,
        noise_reassigned=("b",),
        feature_names=("log1p(beds)", "specialty=pain"),
        seconds=0.125,
        refined=("b",),
        refinement_applied=True,
    )
    assert serde.cluster_result_from_proto(serde.cluster_result_to_proto(result)) == result
