"""How the coordinator gets a cluster assignment: the clusterer service, or one cluster."""

from __future__ import annotations

import abc
import asyncio
import logging
import random

import grpc

from fedprompt.errors import UpstreamUnavailableError
from fedprompt.server import create_channel
from fedprompt.v1 import clusterer_pb2, clusterer_pb2_grpc
from fedprompt_coordinator.config import ClusteringConfig, NoisePolicy

logger = logging.getLogger(__name__)

_NOISE = {
    NoisePolicy.NEAREST: clusterer_pb2.NOISE_POLICY_NEAREST,
    NoisePolicy.SINGLETON: clusterer_pb2.NOISE_POLICY_SINGLETON,
}


class ClusteringBackend(abc.ABC):
    """Assigns clients to clusters from their public metadata."""

    @abc.abstractmethod
    async def assign(self, members: dict[str, str], previous: dict[str, int]) -> dict[str, int]:
        """client id -> cluster id for ``members`` (client id -> metadata JSON)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class SingleClusterBackend(ClusteringBackend):
    """Everyone in cluster 0 (used when no clusterer is configured)."""

    async def assign(self, members: dict[str, str], previous: dict[str, int]) -> dict[str, int]:
        """Put every member into cluster 0."""
        return dict.fromkeys(members, 0)


class GrpcClusteringBackend(ClusteringBackend):
    """Calls the clusterer service, retrying UNAVAILABLE with exponential backoff and jitter."""

    def __init__(self, config: ClusteringConfig) -> None:
        if not config.address:
            raise ValueError("GrpcClusteringBackend needs clustering.address")
        self._config = config
        self._channel = create_channel(config.address)
        self._stub = clusterer_pb2_grpc.ClustererStub(self._channel)

    async def assign(self, members: dict[str, str], previous: dict[str, int]) -> dict[str, int]:
        """Ask the clusterer; raise UpstreamUnavailableError after the last retry."""
        request = clusterer_pb2.ClusterRequest(
            members=[
                clusterer_pb2.MemberMetadata(client_id=c, metadata_json=m)
                for c, m in sorted(members.items())
            ],
            previous_assignment=previous,
            min_cluster_size=self._config.min_cluster_size,
            min_samples=self._config.min_samples,
            noise_policy=_NOISE[self._config.noise_policy],
        )
        delay = 0.2
        for attempt in range(self._config.retries + 1):
            try:
                response = await self._stub.Cluster(request, timeout=self._config.timeout_s)
                logger.info(
                    "clusterer grouped %d clients into %d clusters in %.3f s",
                    len(members),
                    response.num_clusters,
                    response.seconds,
                )
                return dict(response.assignment)
            except grpc.aio.AioRpcError as exc:
                retryable = exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
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

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close()


def make_clustering_backend(config: ClusteringConfig) -> ClusteringBackend:
    """The gRPC backend when an address is configured, else one cluster for everyone."""
    return GrpcClusteringBackend(config) if config.address else SingleClusterBackend()
