"""Tests of the clusterer's Prometheus metrics, recorded by the servicer for every run."""

from __future__ import annotations

import json

import pytest

from fedprompt.errors import FedPromptError
from fedprompt.v1 import clusterer_pb2
from fedprompt_clusterer.servicer import ClustererServicer


def member(client_id: str, **metadata: object) -> clusterer_pb2.MemberMetadata:
    return clusterer_pb2.MemberMetadata(client_id=client_id, metadata_json=json.dumps(metadata))


@pytest.mark.asyncio
async def test_runs_record_clusters_noise_and_duration() -> None:
    servicer = ClustererServicer()
    members = [member(f"a{i}", x=-10.0 - i / 10) for i in range(3)]
    members += [member(f"b{i}", x=10.0 + i / 10) for i in range(3)]
    members.append(member("z", x=60.0))
    request = clusterer_pb2.ClusterRequest(
        members=members, noise_policy=clusterer_pb2.NOISE_POLICY_SINGLETON
    )
    response = await servicer.Cluster(request, None)  # type: ignore[arg-type]
    v = servicer.metrics.registry.get_sample_value
    assert v("fedprompt_clusterer_runs_total", {"outcome": "ok"}) == 1
    assert v("fedprompt_clusterer_clusters") == response.num_clusters == 3
    assert v("fedprompt_clusterer_members") == 7
    assert v("fedprompt_clusterer_noise_points") == 1
    assert v("fedprompt_clusterer_run_duration_seconds_count") == 1
    assert v("fedprompt_clusterer_run_duration_seconds_sum") == pytest.approx(response.seconds)


@pytest.mark.asyncio
async def test_a_bad_request_counts_as_an_error_and_still_raises() -> None:
    servicer = ClustererServicer()
    request = clusterer_pb2.ClusterRequest(
        members=[clusterer_pb2.MemberMetadata(client_id="broken", metadata_json="{nope")]
    )
    with pytest.raises(FedPromptError):
        await servicer.Cluster(request, None)  # type: ignore[arg-type]
    v = servicer.metrics.registry.get_sample_value
    assert v("fedprompt_clusterer_runs_total", {"outcome": "error"}) == 1
    assert v("fedprompt_clusterer_runs_total", {"outcome": "ok"}) == 0
    assert v("fedprompt_clusterer_run_duration_seconds_count") == 0
