"""gRPC servicer of ``fedprompt.v1.Clusterer``: translation only, the work is in the domain.

``Cluster`` takes one request message (at most 2 MiB: about 2,000 members with ordinary
metadata); ``ClusterStream`` takes the same request in parts and answers in parts
(:mod:`fedprompt.message_parts`), for a federation of any size.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from fedprompt.errors import TooLargeError
from fedprompt.message_parts import merge_messages, split_message
from fedprompt.server import MAX_CHUNK_BYTES
from fedprompt.v1 import clusterer_pb2, clusterer_pb2_grpc
from fedprompt_clusterer import serde
from fedprompt_clusterer.clustering import MetadataClusterer
from fedprompt_clusterer.config import DEFAULT_MAX_MEMBERS
from fedprompt_clusterer.metrics import ClustererMetrics

logger = logging.getLogger(__name__)

#: Fully qualified name of the service, as reported by the health service.
SERVICE_NAME: str = clusterer_pb2.DESCRIPTOR.services_by_name["Clusterer"].full_name


#: Budget of one streamed answer part (the message limit is 2 MiB).
PART_BYTES = MAX_CHUNK_BYTES


class ClustererServicer(clusterer_pb2_grpc.ClustererServicer):
    """Serve ``Cluster`` and ``ClusterStream`` by delegating to a :class:`MetadataClusterer`.

    Domain errors propagate to the server's error-mapping interceptor, which answers with
    the matching status code (``INVALID_ARGUMENT`` for bad requests).

    Parameters
    ----------
    clusterer
        The domain object doing the work; a fresh one by default.
    metrics
        Prometheus metrics every run is recorded into; a private registry by default.
    max_members
        Largest number of members one streamed request may carry (``RESOURCE_EXHAUSTED``
        beyond it, before clustering).
    """

    def __init__(
        self,
        clusterer: MetadataClusterer | None = None,
        metrics: ClustererMetrics | None = None,
        *,
        max_members: int = DEFAULT_MAX_MEMBERS,
    ) -> None:
        self._clusterer = clusterer if clusterer is not None else MetadataClusterer()
        self.metrics = metrics if metrics is not None else ClustererMetrics()
        self._max_members = max_members

    async def Cluster(  # noqa: N802 - name fixed by the proto
        self,
        request: clusterer_pb2.ClusterRequest,
        context: grpc.aio.ServicerContext[
            clusterer_pb2.ClusterRequest, clusterer_pb2.ClusterResponse
        ],
    ) -> clusterer_pb2.ClusterResponse:
        """Decode the request, cluster off the event loop, encode the result."""
        return await self._cluster(request)

    async def ClusterStream(  # noqa: N802 - name fixed by the proto
        self,
        request_iterator: AsyncIterator[clusterer_pb2.ClusterRequest],
        context: grpc.aio.ServicerContext[
            clusterer_pb2.ClusterRequest, clusterer_pb2.ClusterResponse
        ],
    ) -> AsyncIterator[clusterer_pb2.ClusterResponse]:
        """Merge the request parts, cluster as ``Cluster`` does, answer in parts under 1 MiB."""
        request = clusterer_pb2.ClusterRequest()
        parts = 0
        async for part in request_iterator:
            merge_messages([part], request)
            parts += 1
            if len(request.members) > self._max_members:
                self.metrics.observe_error()
                raise TooLargeError(
                    f"a clustering request may hold at most {self._max_members} members"
                )
        logger.debug("ClusterStream request of %d parts", parts)
        response = await self._cluster(request)
        for piece in split_message(response, max_bytes=PART_BYTES):
            yield piece

    async def _cluster(
        self, request: clusterer_pb2.ClusterRequest
    ) -> clusterer_pb2.ClusterResponse:
        try:
            job = serde.cluster_request_from_proto(request)
            logger.debug("Cluster request with %d members", len(job.members))
            result = await asyncio.to_thread(
                self._clusterer.cluster,
                job.members,
                previous=job.previous,
                settings=job.settings,
                alignment=job.alignment,
                refine_after_rounds=job.refine_after_rounds,
            )
        except Exception:
            self.metrics.observe_error()
            raise
        self.metrics.observe_run(result)
        return serde.cluster_result_to_proto(result)
