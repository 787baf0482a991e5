"""Pure conversions between the clusterer's protobuf messages and its domain types.

Each ``x_from_proto`` has an ``x_to_proto`` partner; decoding validates what the domain
cannot express (unknown enum values; members' ids and metadata, with the validator the
coordinator applies at Join, :mod:`fedprompt.client_input`) and raises
:class:`~fedprompt.errors.InvalidArgumentError`.
"""

from __future__ import annotations

import json
from types import MappingProxyType

from fedprompt.client_input import check_client_id, parse_metadata
from fedprompt.errors import InvalidArgumentError
from fedprompt.v1 import clusterer_pb2
from fedprompt_clusterer.clustering import (
    DEFAULT_MIN_CLUSTER_SIZE,
    DEFAULT_MIN_SAMPLES,
    ClusteringRequest,
    ClusteringSettings,
    ClusterResult,
    Member,
    NoisePolicy,
)
from fedprompt_clusterer.features import metadata_field
from fedprompt_clusterer.refinement import UpdateAlignment

_POLICY_FROM_PROTO: dict[int, NoisePolicy] = {
    clusterer_pb2.NOISE_POLICY_UNSPECIFIED: NoisePolicy.NEAREST,
    clusterer_pb2.NOISE_POLICY_NEAREST: NoisePolicy.NEAREST,
    clusterer_pb2.NOISE_POLICY_SINGLETON: NoisePolicy.SINGLETON,
}
_POLICY_TO_PROTO: dict[NoisePolicy, clusterer_pb2.NoisePolicy.ValueType] = {
    NoisePolicy.NEAREST: clusterer_pb2.NOISE_POLICY_NEAREST,
    NoisePolicy.SINGLETON: clusterer_pb2.NOISE_POLICY_SINGLETON,
}


def noise_policy_from_proto(value: clusterer_pb2.NoisePolicy.ValueType) -> NoisePolicy:
    """Decode a noise policy; ``UNSPECIFIED`` means :attr:`NoisePolicy.NEAREST`.

    Raises
    ------
    InvalidArgumentError
        If the value is not a known policy.
    """
    try:
        return _POLICY_FROM_PROTO[int(value)]
    except KeyError:
        raise InvalidArgumentError(f"unknown noise_policy {int(value)}") from None


def noise_policy_to_proto(policy: NoisePolicy) -> clusterer_pb2.NoisePolicy.ValueType:
    """Encode a noise policy."""
    return _POLICY_TO_PROTO[policy]


def member_from_proto(message: clusterer_pb2.MemberMetadata) -> Member:
    """Decode a member: its client id and metadata, checked as the coordinator checks them.

    Raises
    ------
    InvalidArgumentError
        If the client id is not one, or the metadata is not a flat JSON object of finite
        scalars within the limits of :mod:`fedprompt.client_input`.
    """
    client_id = check_client_id(message.client_id, field="a member's client_id")
    return Member(
        client_id=client_id,
        metadata=parse_metadata(message.metadata_json, field=metadata_field(client_id)),
    )


def member_to_proto(member: Member) -> clusterer_pb2.MemberMetadata:
    """Encode a member, its metadata as compact JSON with sorted keys."""
    return clusterer_pb2.MemberMetadata(
        client_id=member.client_id,
        metadata_json=json.dumps(
            dict(member.metadata), sort_keys=True, allow_nan=False, separators=(",", ":")
        ),
    )


def settings_from_proto(message: clusterer_pb2.ClusterRequest) -> ClusteringSettings:
    """Read the clustering settings of a request; 0 selects a default.

    Raises
    ------
    InvalidArgumentError
        If a value is out of range or the noise policy is unknown.
    """
    return ClusteringSettings(
        min_cluster_size=message.min_cluster_size or DEFAULT_MIN_CLUSTER_SIZE,
        min_samples=message.min_samples or DEFAULT_MIN_SAMPLES,
        noise_policy=noise_policy_from_proto(message.noise_policy),
    )


def cluster_request_from_proto(message: clusterer_pb2.ClusterRequest) -> ClusteringRequest:
    """Decode a ``ClusterRequest``.

    Raises
    ------
    InvalidArgumentError
        If a member's metadata or a setting is invalid.
    """
    return ClusteringRequest(
        members=tuple(member_from_proto(m) for m in message.members),
        previous=MappingProxyType(dict(message.previous_assignment)),
        settings=settings_from_proto(message),
        alignment=tuple(
            UpdateAlignment(client_id=a.client_id, cluster_id=a.cluster_id, rounds=a.rounds)
            for a in message.alignment
        ),
        refine_after_rounds=message.refine_after_rounds,
    )


def cluster_request_to_proto(request: ClusteringRequest) -> clusterer_pb2.ClusterRequest:
    """Encode a clustering request (settings always explicit, never 0)."""
    return clusterer_pb2.ClusterRequest(
        members=[member_to_proto(m) for m in request.members],
        previous_assignment=dict(request.previous),
        min_cluster_size=request.settings.min_cluster_size,
        min_samples=request.settings.min_samples,
        noise_policy=noise_policy_to_proto(request.settings.noise_policy),
        alignment=[
            clusterer_pb2.UpdateAlignment(
                client_id=a.client_id, cluster_id=a.cluster_id, rounds=a.rounds
            )
            for a in request.alignment
        ],
        refine_after_rounds=request.refine_after_rounds,
    )


def cluster_result_to_proto(result: ClusterResult) -> clusterer_pb2.ClusterResponse:
    """Encode a clustering result as a ``ClusterResponse``."""
    return clusterer_pb2.ClusterResponse(
        assignment=dict(result.assignment),
        num_clusters=result.num_clusters,
        noise_reassigned=list(result.noise_reassigned),
        feature_names=list(result.feature_names),
        seconds=result.seconds,
        refined=list(result.refined),
        refinement_applied=result.refinement_applied,
    )


def cluster_result_from_proto(message: clusterer_pb2.ClusterResponse) -> ClusterResult:
    """Decode a ``ClusterResponse``."""
    return ClusterResult(
        assignment=MappingProxyType(dict(message.assignment)),
        num_clusters=message.num_clusters,
        noise_reassigned=tuple(message.noise_reassigned),
        feature_names=tuple(message.feature_names),
        seconds=message.seconds,
        refined=tuple(message.refined),
        refinement_applied=message.refinement_applied,
    )
