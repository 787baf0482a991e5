"""Tests of ClustererServicer over a real aio gRPC server on 127.0.0.1, port 0."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedprompt.message_parts import merge_messages, split_message
from fedprompt.server import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_CHUNK_BYTES,
    create_channel,
    start_server,
)
from fedprompt.v1 import clusterer_pb2, clusterer_pb2_grpc
from fedprompt_clusterer.clustering import (
    ClusteringSettings,
    ClusterResult,
    Member,
    MetadataClusterer,
)
from fedprompt_clusterer.refinement import UpdateAlignment
from fedprompt_clusterer.servicer import SERVICE_NAME, ClustererServicer


class RecordingClusterer(MetadataClusterer):
    """A MetadataClusterer that remembers which thread ran it."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def cluster(
        self,
        members: Sequence[Member],
        *,
        previous: Mapping[str, int],
        settings: ClusteringSettings,
        alignment: Sequence[UpdateAlignment] = (),
        refine_after_rounds: int = 0,
    ) -> ClusterResult:
        self.threads.append(threading.get_ident())
        return super().cluster(
            members,
            previous=previous,
            settings=settings,
            alignment=alignment,
            refine_after_rounds=refine_after_rounds,
        )


@dataclass
class Connection:
    stub: clusterer_pb2_grpc.ClustererAsyncStub
    health: health_pb2_grpc.HealthStub
    clusterer: RecordingClusterer


@pytest_asyncio.fixture
async def connection() -> AsyncIterator[Connection]:
    clusterer = RecordingClusterer()
    servicer = ClustererServicer(clusterer)

    def register(server: grpc.aio.Server) -> None:
        clusterer_pb2_grpc.add_ClustererServicer_to_server(servicer, server)

    handle = await start_server(
        register=register, service_names=[SERVICE_NAME], address="127.0.0.1:0"
    )
    channel = create_channel(f"127.0.0.1:{handle.port}")
    try:
        yield Connection(
            stub=clusterer_pb2_grpc.ClustererStub(channel),  # type: ignore[arg-type]
            health=health_pb2_grpc.HealthStub(channel),
            clusterer=clusterer,
        )
    finally:
        await channel.close()
        await handle.stop(0)


def member(client_id: str, **metadata: object) -> clusterer_pb2.MemberMetadata:
    return clusterer_pb2.MemberMetadata(client_id=client_id, metadata_json=json.dumps(metadata))


CLINICS = [
    member("psy-north", specialty="psychiatry", region="north", num_records=1200),
    member("psy-south", specialty="psychiatry", region="south", num_records=1500),
    member("wh-north", specialty="womens_health", region="north", num_records=20000),
    member("wh-south", specialty="womens_health", region="south", num_records=26000),
    member("pain-north", specialty="pain", region="north", num_records=5000),
    member("pain-south", specialty="pain", region="south", num_records=4000),
]


@pytest.mark.asyncio
async def test_cluster_happy_path(connection: Connection) -> None:
    previous = {"psy-north": 7, "psy-south": 7, "pain-north": 3, "pain-south": 3}
    response = await connection.stub.Cluster(
        clusterer_pb2.ClusterRequest(members=CLINICS, previous_assignment=previous)
    )
    assert dict(response.assignment) == {**previous, "wh-north": 8, "wh-south": 8}
    assert response.num_clusters == 3
    assert list(response.noise_reassigned) == []
    assert "specialty=pain" in response.feature_names
    assert response.seconds > 0
    assert connection.clusterer.threads and connection.clusterer.threads[0] != threading.get_ident()


@pytest.mark.asyncio
async def test_singleton_noise_policy_over_the_wire(connection: Connection) -> None:
    members = [member(f"a{i}", x=-10.0 - i / 10) for i in range(3)]
    members += [member(f"b{i}", x=10.0 + i / 10) for i in range(3)]
    members.append(member("z", x=60.0))
    response = await connection.stub.Cluster(
        clusterer_pb2.ClusterRequest(
            members=members, noise_policy=clusterer_pb2.NOISE_POLICY_SINGLETON
        )
    )
    assert list(response.noise_reassigned) == ["z"]
    assert response.num_clusters == 3


@pytest.mark.asyncio
async def test_invalid_json_is_invalid_argument_naming_the_client(connection: Connection) -> None:
    request = clusterer_pb2.ClusterRequest(
        members=[
            member("ok", x=1),
            clusterer_pb2.MemberMetadata(client_id="broken-7", metadata_json="{nope"),
        ]
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await connection.stub.Cluster(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "broken-7" in (info.value.details() or "")


@pytest.mark.asyncio
async def test_nested_metadata_is_invalid_argument(connection: Connection) -> None:
    request = clusterer_pb2.ClusterRequest(members=[member("c1", sites={"a": 1})])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await connection.stub.Cluster(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'c1' must be a flat JSON object" in (info.value.details() or "")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "request_",
    [
        clusterer_pb2.ClusterRequest(),
        clusterer_pb2.ClusterRequest(members=[member("a"), member("a")]),
        clusterer_pb2.ClusterRequest(members=[member("a")], min_cluster_size=1),
        clusterer_pb2.ClusterRequest(
            members=[member("a")], noise_policy=clusterer_pb2.NoisePolicy.ValueType(9)
        ),
        clusterer_pb2.ClusterRequest(members=[member("a")], previous_assignment={"a": -2}),
    ],
    ids=["empty", "duplicate-ids", "min-cluster-size-1", "unknown-policy", "negative-previous"],
)
async def test_bad_requests_are_invalid_argument(
    connection: Connection, request_: clusterer_pb2.ClusterRequest
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await connection.stub.Cluster(request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_health_reports_serving(connection: Connection) -> None:
    response = await connection.health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert SERVICE_NAME == "fedprompt.v1.Clusterer"


# --------------------------------------------------------------------- any federation size

SPECIALTIES = ("psychiatry", "oncology", "cardiology", "womens_health", "pediatrics", "pain")
REGIONS = ("north", "south", "east", "west", "central")


def _profile_text(kind: str, words: int) -> str:
    return " ".join(f"{kind}-{w}" for w in range(words))


def ordinary_members(n: int, seed: int = 0) -> list[clusterer_pb2.MemberMetadata]:
    """``n`` hospitals with the metadata silos publish, about 1 KB each: specialty, region,
    size, language, and the public descriptions of their specialty and accreditation."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        specialty, region = rng.choice(SPECIALTIES), rng.choice(REGIONS)
        out.append(
            member(
                f"hospital-{i:06d}",
                specialty=specialty,
                region=region,
                num_records=rng.randint(200, 90_000),
                beds=rng.randint(20, 1_500),
                language=rng.choice(("en", "de", "fr")),
                teaching_hospital=rng.random() < 0.3,
                # four public texts, each within the 256 characters client input allows
                **{f"specialty_text_{k}": _profile_text(specialty, 15) for k in range(4)},
                accreditation=_profile_text(region, 20),
            )
        )
    return out


async def _stream(
    stub: clusterer_pb2_grpc.ClustererAsyncStub, request: clusterer_pb2.ClusterRequest
) -> tuple[clusterer_pb2.ClusterResponse, int]:
    """ClusterStream as the coordinator calls it: the answer merged, and its number of parts."""
    parts = split_message(request, max_bytes=MAX_CHUNK_BYTES)
    answers = [a async for a in stub.ClusterStream(iter(parts))]
    return merge_messages(answers, clusterer_pb2.ClusterResponse()), len(answers)


@pytest.mark.asyncio
async def test_2000_members_exceed_the_unary_limit_and_stream_through(
    connection: Connection,
) -> None:
    request = clusterer_pb2.ClusterRequest(members=ordinary_members(2_000))
    assert request.ByteSize() > DEFAULT_MAX_MESSAGE_BYTES  # ~2,000 silos: over 2 MiB
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await connection.stub.Cluster(request)  # what the coordinator used to send
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    response, _ = await _stream(connection.stub, request)
    assert sorted(response.assignment) == sorted(m.client_id for m in request.members)
    assert response.num_clusters == len(set(response.assignment.values())) > 1
    assert response.seconds > 0 and "specialty=oncology" in response.feature_names


@pytest.mark.asyncio
async def test_the_stream_gives_the_unary_answer_whatever_the_parts(connection: Connection) -> None:
    previous = {"psy-north": 7, "psy-south": 7, "pain-north": 3, "pain-south": 3}
    request = clusterer_pb2.ClusterRequest(members=CLINICS, previous_assignment=previous)
    unary = await connection.stub.Cluster(request)
    parts = split_message(request, max_bytes=1)  # one member or previous entry per part
    assert len(parts) == len(CLINICS) + len(previous)
    answers = [a async for a in connection.stub.ClusterStream(iter(parts))]
    streamed = merge_messages(answers, clusterer_pb2.ClusterResponse())
    assert dict(streamed.assignment) == dict(unary.assignment)
    assert streamed.num_clusters == unary.num_clusters == 3


def _alignment(client_id: str, cluster_id: int, rounds: int) -> clusterer_pb2.UpdateAlignment:
    return clusterer_pb2.UpdateAlignment(client_id=client_id, cluster_id=cluster_id, rounds=rounds)


@pytest.mark.asyncio
async def test_refinement_moves_a_member_over_the_stream_in_one_part_per_entry(
    connection: Connection,
) -> None:
    """The evidence travels in parts like the members; a member is placed by its updates."""
    previous = {"psy-north": 7, "psy-south": 7, "pain-north": 3, "pain-south": 3}
    request = clusterer_pb2.ClusterRequest(
        members=CLINICS,
        previous_assignment=previous,
        alignment=[_alignment("psy-south", 3, 2), _alignment("wh-north", 3, 1)],
        refine_after_rounds=2,
    )
    parts = split_message(request, max_bytes=1)
    answers = [a async for a in connection.stub.ClusterStream(iter(parts))]
    streamed = merge_messages(answers, clusterer_pb2.ClusterResponse())
    assert streamed.assignment["psy-south"] == 3  # moved: 2 rounds of evidence
    assert streamed.assignment["wh-north"] == 8  # 1 round: stays with its metadata group
    assert list(streamed.refined) == ["psy-south"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("alignment", "refine", "fragment"),
    [
        ([_alignment("intruder", 3, 5)], 1, "not among the members"),
        ([_alignment("psy-north", 3, 5), _alignment("psy-north", 7, 1)], 1, "twice"),
        ([_alignment("psy-north", -4, 5)], 1, "cluster id must be >= 0"),
        ([], 10_001, "refine_after_rounds"),
    ],
)
async def test_hostile_refinement_evidence_is_invalid_argument(
    connection: Connection,
    alignment: list[clusterer_pb2.UpdateAlignment],
    refine: int,
    fragment: str,
) -> None:
    request = clusterer_pb2.ClusterRequest(
        members=CLINICS, alignment=alignment, refine_after_rounds=refine
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await connection.stub.Cluster(request)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")


@pytest.mark.asyncio
async def test_the_stream_refuses_more_members_than_configured() -> None:
    servicer = ClustererServicer(max_members=3)

    def register(server: grpc.aio.Server) -> None:
        clusterer_pb2_grpc.add_ClustererServicer_to_server(servicer, server)

    handle = await start_server(
        register=register, service_names=[SERVICE_NAME], address="127.0.0.1:0"
    )
    try:
        async with create_channel(f"127.0.0.1:{handle.port}") as channel:
            stub = clusterer_pb2_grpc.ClustererStub(channel)
            request = clusterer_pb2.ClusterRequest(members=CLINICS)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _stream(stub, request)  # type: ignore[arg-type]
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 3 members" in (info.value.details() or "")
    finally:
        await handle.stop(0)
    assert (
        servicer.metrics.registry.get_sample_value(
            "fedprompt_clusterer_runs_total", {"outcome": "error"}
        )
        == 1
    )
