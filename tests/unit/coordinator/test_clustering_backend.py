"""Tests of the coordinator's clusterer client against a real aio clusterer on 127.0.0.1:0.

The clusterer here is the real service (``fedprompt_clusterer``'s servicer over the shared
server factory): the request and the answer of a large federation must travel in parts.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
import pytest_asyncio

from fedprompt.errors import UpstreamUnavailableError
from fedprompt.server import DEFAULT_MAX_MESSAGE_BYTES, ServerHandle, start_server
from fedprompt.v1 import clusterer_pb2, clusterer_pb2_grpc
from fedprompt_clusterer.servicer import SERVICE_NAME, ClustererServicer
from fedprompt_coordinator.cluster_refinement import Evidence
from fedprompt_coordinator.clustering_backend import GrpcClusteringBackend
from fedprompt_coordinator.config import ClusteringConfig

SPECIALTIES = ("psychiatry", "oncology", "cardiology", "womens_health", "pediatrics", "pain")
REGIONS = ("north", "south", "east", "west", "central")


async def _serve(register: Callable[[grpc.aio.Server], None]) -> ServerHandle:
    return await start_server(
        register=register, service_names=[SERVICE_NAME], address="127.0.0.1:0"
    )


@pytest_asyncio.fixture
async def clusterer() -> AsyncIterator[ServerHandle]:
    """The real clusterer service."""
    servicer = ClustererServicer()
    handle = await _serve(lambda s: clusterer_pb2_grpc.add_ClustererServicer_to_server(servicer, s))
    yield handle
    await handle.stop(0)


def _backend(port: int, **settings: object) -> GrpcClusteringBackend:
    config = ClusteringConfig(address=f"127.0.0.1:{port}", timeout_s=120.0, **settings)  # type: ignore[arg-type]
    return GrpcClusteringBackend(config)


def _metadata(specialty: str, region: str, num_records: int) -> str:
    return json.dumps({"specialty": specialty, "region": region, "num_records": num_records})


@pytest.mark.asyncio
async def test_2000_members_with_ordinary_metadata(clusterer: ServerHandle) -> None:
    rng = random.Random(1)
    members = {
        f"hospital-{i:05d}": json.dumps(
            {
                "specialty": rng.choice(SPECIALTIES),
                "region": rng.choice(REGIONS),
                "num_records": rng.randint(200, 90_000),
                # the public texts a silo publishes: ~1 KB of metadata in all, each text
                # within the 256 characters client input allows
                **{f"text_{k}": "x" * 250 for k in range(4)},
            }
        )
        for i in range(2_000)
    }
    assert sum(len(m) for m in members.values()) > DEFAULT_MAX_MESSAGE_BYTES
    backend = _backend(clusterer.port)
    try:
        assignment = await backend.assign(members, {})
    finally:
        await backend.close()
    assert sorted(assignment) == sorted(members)
    assert len(set(assignment.values())) > 1


@pytest.mark.asyncio
async def test_100000_members_request_and_answer_travel_in_parts(clusterer: ServerHandle) -> None:
    """100k members of four kinds; the first half were clustered before (ids stay stable)."""
    kinds = [("oncology", "north", 5_000), ("oncology", "south", 5_000)]
    kinds += [("pediatrics", "east", 800), ("psychiatry", "west", 1_200)]
    members = {f"hospital-{i:06d}": _metadata(*kinds[i % 4]) for i in range(100_000)}
    previous = {f"hospital-{i:06d}": 10 + i % 4 for i in range(50_000)}
    answer_bytes = clusterer_pb2.ClusterResponse(assignment={c: 0 for c in members}).ByteSize()
    assert answer_bytes > DEFAULT_MAX_MESSAGE_BYTES  # the answer alone is over one message
    backend = _backend(clusterer.port)
    try:
        assignment = await backend.assign(members, previous)
    finally:
        await backend.close()
    assert len(assignment) == 100_000
    # four groups, each keeping the id its previously clustered members had
    assert {
        c: assignment[c] for c in ("hospital-000000", "hospital-000001", "hospital-000002")
    } == {
        "hospital-000000": 10,
        "hospital-000001": 11,
        "hospital-000002": 12,
    }
    assert sorted(set(assignment.values())) == [10, 11, 12, 13]
    assert all(assignment[c] == 10 + int(c[9:]) % 4 for c in members)


@pytest.mark.asyncio
async def test_a_clusterer_of_an_earlier_version_is_asked_with_the_unary_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A clusterer that serves only ``Cluster`` (no ``ClusterStream``: UNIMPLEMENTED)."""
    real = ClustererServicer()
    old = grpc.method_handlers_generic_handler(
        "fedprompt.v1.Clusterer",
        {
            "Cluster": grpc.unary_unary_rpc_method_handler(
                real.Cluster,
                request_deserializer=clusterer_pb2.ClusterRequest.FromString,
                response_serializer=clusterer_pb2.ClusterResponse.SerializeToString,
            )
        },
    )
    handle = await _serve(lambda s: s.add_generic_rpc_handlers((old,)))
    backend = _backend(handle.port)
    members = {c: _metadata("oncology", r, 100) for c, r in (("a", "n"), ("b", "n"), ("c", "s"))}
    caplog.set_level(logging.WARNING)
    try:
        first = await backend.assign(members, {})
        second = await backend.assign(members, first)
    finally:
        await backend.close()
        await handle.stop(0)
    assert first == second and sorted(first) == ["a", "b", "c"]
    assert caplog.text.count("has no ClusterStream") == 1  # asked once, then remembered


@pytest.mark.asyncio
async def test_resource_exhausted_is_retried_and_then_reported_for_the_next_round() -> None:
    calls = 0

    async def exhausted(
        requests: AsyncIterator[clusterer_pb2.ClusterRequest],
        context: grpc.aio.ServicerContext[
            clusterer_pb2.ClusterRequest, clusterer_pb2.ClusterResponse
        ],
    ) -> AsyncIterator[clusterer_pb2.ClusterResponse]:
        nonlocal calls
        calls += 1
        async for _ in requests:
            pass
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
        yield clusterer_pb2.ClusterResponse()  # never reached

    busy = grpc.method_handlers_generic_handler(
        "fedprompt.v1.Clusterer",
        {
            "ClusterStream": grpc.stream_stream_rpc_method_handler(
                exhausted,
                request_deserializer=clusterer_pb2.ClusterRequest.FromString,
                response_serializer=clusterer_pb2.ClusterResponse.SerializeToString,
            )
        },
    )
    handle = await _serve(lambda s: s.add_generic_rpc_handlers((busy,)))
    backend = _backend(handle.port, retries=2)
    try:
        with pytest.raises(UpstreamUnavailableError, match="RESOURCE_EXHAUSTED: overloaded"):
            await backend.assign({"a": "{}"}, {})
    finally:
        await backend.close()
        await handle.stop(0)
    assert calls == 3  # the first call and two retries within the round


def _refining_backend(port: int) -> GrpcClusteringBackend:
    return _backend(port, refine_after_rounds=2)


CLINIC_METADATA = {
    "psy-1": _metadata("psychiatry", "north", 1_000),
    "psy-2": _metadata("psychiatry", "south", 1_100),
    "onc-1": _metadata("oncology", "north", 9_000),
    "onc-2": _metadata("oncology", "south", 9_500),
    "misled": _metadata("oncology", "east", 9_200),  # its data is psychiatry's
}


@pytest.mark.asyncio
async def test_update_alignment_travels_to_the_real_clusterer_and_moves_a_member(
    clusterer: ServerHandle,
) -> None:
    backend = _refining_backend(clusterer.port)
    try:
        cold = await backend.assign(CLINIC_METADATA, {}, {})
        psy, onc = cold["psy-1"], cold["onc-1"]
        assert cold["misled"] == onc != psy
        once = await backend.assign(CLINIC_METADATA, cold, {"misled": Evidence(psy, 1)})
        assert once == cold  # one round of evidence is below r = 2
        moved = await backend.assign(CLINIC_METADATA, cold, {"misled": Evidence(psy, 2)})
        assert moved == {**cold, "misled": psy}
        # hysteresis: one round left of the evidence keeps it where it moved
        kept = await backend.assign(CLINIC_METADATA, moved, {"misled": Evidence(psy, 1)})
        assert kept["misled"] == psy
        # evidence about a client that is no longer a member is not sent (no refusal)
        gone = await backend.assign(
            CLINIC_METADATA, moved, {"misled": Evidence(psy, 2), "left": Evidence(onc, 2)}
        )
        assert gone["misled"] == psy
    finally:
        await backend.close()


@pytest.mark.asyncio
async def test_a_clusterer_that_ignores_refinement_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An earlier clusterer drops the alignment fields it does not know: metadata alone."""
    real = ClustererServicer()

    async def older(
        requests: AsyncIterator[clusterer_pb2.ClusterRequest],
        context: grpc.aio.ServicerContext[
            clusterer_pb2.ClusterRequest, clusterer_pb2.ClusterResponse
        ],
    ) -> AsyncIterator[clusterer_pb2.ClusterResponse]:
        async def stripped() -> AsyncIterator[clusterer_pb2.ClusterRequest]:
            async for part in requests:
                part.ClearField("alignment")
                part.ClearField("refine_after_rounds")
                yield part

        async for answer in real.ClusterStream(stripped(), context):
            yield answer

    handler = grpc.method_handlers_generic_handler(
        "fedprompt.v1.Clusterer",
        {
            "ClusterStream": grpc.stream_stream_rpc_method_handler(
                older,
                request_deserializer=clusterer_pb2.ClusterRequest.FromString,
                response_serializer=clusterer_pb2.ClusterResponse.SerializeToString,
            )
        },
    )
    handle = await _serve(lambda s: s.add_generic_rpc_handlers((handler,)))
    backend = _refining_backend(handle.port)
    caplog.set_level(logging.ERROR)
    try:
        cold = await backend.assign(CLINIC_METADATA, {}, {})
        evidence = {"misled": Evidence(cold["psy-1"], 2)}
        first = await backend.assign(CLINIC_METADATA, cold, evidence)
        second = await backend.assign(CLINIC_METADATA, cold, evidence)
    finally:
        await backend.close()
        await handle.stop(0)
    assert first == second == cold  # nobody moved
    assert caplog.text.count("did not apply it") == 1
