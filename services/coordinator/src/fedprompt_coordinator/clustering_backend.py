"""How the coordinator gets a cluster assignment: the clusterer service, or one cluster.

The request holds every member's metadata, so its size grows with the federation: it goes
to the clusterer as a stream of parts under 1 MiB (``ClusterStream``), and the assignment
comes back in parts, so no federation size meets the 2 MiB message limit. A clusterer of an
earlier version (``UNIMPLEMENTED``) is asked with the unary ``Cluster`` instead.

A failed call is retried with backoff within the round when the failure may pass
(:data:`RETRYABLE`); whatever the failure, the coordinator keeps the last assignment for the
round and asks again the next round (never a final answer).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
from collections.abc import Mapping

import grpc

from fedprompt.errors import UpstreamUnavailableError
from fedprompt.message_parts import merge_messages, split_message
from fedprompt.server import MAX_CHUNK_BYTES, create_channel
from fedprompt.v1 import clusterer_pb2, clusterer_pb2_grpc
from fedprompt_coordinator.cluster_refinement import Evidence
from fedprompt_coordinator.config import ClusteringConfig, NoisePolicy

logger = logging.getLogger(__name__)

#: Status codes retried (with backoff) within one round: the clusterer is restarting,
#: overloaded or slow. Any other failure waits for the next round.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
#: Budget of one request part sent to the clusterer (the message limit is 2 MiB).
PART_BYTES = MAX_CHUNK_BYTES

_NOISE = {
    NoisePolicy.NEAREST: clusterer_pb2.NOISE_POLICY_NEAREST,
    NoisePolicy.SINGLETON: clusterer_pb2.NOISE_POLICY_SINGLETON,
}


class ClusteringBackend(abc.ABC):
    """Assigns clients to clusters from their public metadata."""

    @abc.abstractmethod
    async def assign(
        self,
        members: dict[str, str],
        previous: dict[str, int],
        evidence: Mapping[str, Evidence] | None = None,
    ) -> dict[str, int]:
        """client id -> cluster id for ``members`` (client id -> metadata JSON).

        ``evidence`` is the members' update alignment for cluster refinement
        (:mod:`~fedprompt_coordinator.cluster_refinement`), None when refinement is off.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class SingleClusterBackend(ClusteringBackend):
    """Everyone in cluster 0 (used when no clusterer is configured)."""

    async def assign(
        self,
        members: dict[str, str],
        previous: dict[str, int],
        evidence: Mapping[str, Evidence] | None = None,
    ) -> dict[str, int]:
        """Put every member into cluster 0."""
        return dict.fromkeys(members, 0)


class GrpcClusteringBackend(ClusteringBackend):
    """Calls the clusterer service (streamed), retrying with exponential backoff and jitter."""

    def __init__(
        self, config: ClusteringConfig, *, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        if not config.address:
            raise ValueError("GrpcClusteringBackend needs clustering.address")
        self._config = config
        self._channel = create_channel(
            config.address, credentials=credentials, server_name=config.server_name or None
        )
        self._stub = clusterer_pb2_grpc.ClustererStub(self._channel)
        #: False once the clusterer answered UNIMPLEMENTED to ClusterStream (older version).
        self._streaming = True
        #: True once a clusterer that ignores refinement (an earlier version) was reported.
        self._warned_no_refinement = False

    async def assign(
        self,
        members: dict[str, str],
        previous: dict[str, int],
        evidence: Mapping[str, Evidence] | None = None,
    ) -> dict[str, int]:
        """Ask the clusterer; raise UpstreamUnavailableError after the last retry."""
        refine = self._config.refine_after_rounds if evidence is not None else 0
        request = clusterer_pb2.ClusterRequest(
            members=[
                clusterer_pb2.MemberMetadata(client_id=c, metadata_json=m)
                for c, m in sorted(members.items())
            ],
            previous_assignment=previous,
            min_cluster_size=self._config.min_cluster_size,
            min_samples=self._config.min_samples,
            noise_policy=_NOISE[self._config.noise_policy],
            alignment=[
                clusterer_pb2.UpdateAlignment(client_id=c, cluster_id=e.cluster_id, rounds=e.rounds)
                for c, e in sorted((evidence or {}).items())
                if c in members
            ],
            refine_after_rounds=refine,
        )
        delay = 0.2
        for attempt in range(self._config.retries + 1):
            try:
                response = await self._call(request)
                logger.info(
                    "clusterer grouped %d clients into %d clusters in %.3f s (%d placed by "
                    "their updates)",
                    len(members),
                    response.num_clusters,
                    response.seconds,
                    len(response.refined),
                )
                if refine and not response.refinement_applied:
                    self._report_no_refinement()
                return dict(response.assignment)
            except grpc.aio.AioRpcError as exc:
                retryable = exc.code() in RETRYABLE
                if not retryable or attempt == self._config.retries:
                    raise UpstreamUnavailableError(
                        f"clusterer failed: {exc.code().name}: {exc.details()}"
                    ) from exc
                sleep = delay * (1 + random.random())
                logger.warning(
                    "clusterer %s, retry %d in %.2f s", exc.code().name, attempt + 1, sleep
                )
                await asyncio.sleep(sleep)
                delay *= 2
        raise AssertionError("unreachable")

    def _report_no_refinement(self) -> None:
        """Say (once, loudly) that the clusterer ignored the refinement it was asked for."""
        if not self._warned_no_refinement:
            logger.error(
                "clustering.refine_after_rounds is set but the clusterer did not apply it (a "
                "clusterer of an earlier version ignores update alignment): clients are "
                "grouped by their metadata alone; upgrade the clusterer"
            )
            self._warned_no_refinement = True

    async def _call(self, request: clusterer_pb2.ClusterRequest) -> clusterer_pb2.ClusterResponse:
        """One clustering call: streamed in parts, or unary to a clusterer without streaming."""
        if self._streaming:
            call = self._stub.ClusterStream(
                iter(split_message(request, max_bytes=PART_BYTES)),
                timeout=self._config.timeout_s,
            )
            try:
                return merge_messages(
                    [part async for part in call], clusterer_pb2.ClusterResponse()
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
                    raise
                logger.warning(
                    "the clusterer has no ClusterStream (an earlier version): using the unary "
                    "Cluster call, limited to requests under 2 MiB"
                )
                self._streaming = False
        return await self._stub.Cluster(request, timeout=self._config.timeout_s)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()


def make_clustering_backend(
    config: ClusteringConfig, *, credentials: grpc.ChannelCredentials | None = None
) -> ClusteringBackend:
    """The gRPC backend when an address is configured, else one cluster for everyone.

    ``credentials`` make the channel to the clusterer mutual TLS (None: plaintext).
    """
    if not config.address:
        return SingleClusterBackend()
    return GrpcClusteringBackend(config, credentials=credentials)
