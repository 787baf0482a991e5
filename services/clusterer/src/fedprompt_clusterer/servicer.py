"""gRPC servicer of ``fedprompt.v1.Clusterer``: translation only, the work is in the domain."""

from __future__ import annotations

import asyncio
import logging

import grpc

from fedprompt.v1 import clusterer_pb2, clusterer_pb2_grpc
from fedprompt_clusterer import serde
from fedprompt_clusterer.clustering import MetadataClusterer
from fedprompt_clusterer.metrics import ClustererMetrics

logger = logging.getLogger(__name__)

#: Fully qualified name of the service, as reported by the health service.
SERVICE_NAME: str = clusterer_pb2.DESCRIPTOR.services_by_name["Clusterer"].full_name


class ClustererServicer(clusterer_pb2_grpc.ClustererServicer):
    """Serve ``Cluster`` by delegating to a :class:`MetadataClusterer`.

    Domain errors propagate to the server's error-mapping interceptor, which answers with
    the matching status code (``INVALID_ARGUMENT`` for bad requests).

    Parameters
    ----------
    clusterer
        The domain object doing the work; a fresh one by default.
    metrics
        Prometheus metrics every run is recorded into; a private registry by default.
    """

    def __init__(
        self, clusterer: MetadataClusterer | None = None, metrics: ClustererMetrics | None = None
    ) -> None:
        self._clusterer = clusterer if clusterer is not None else MetadataClusterer()
        self.metrics = metrics if metrics is not None else ClustererMetrics()

    async def Cluster(  # noqa: N802 - name fixed by the proto
        self,
        request: clusterer_pb2.ClusterRequest,
        context: grpc.aio.ServicerContext[
            clusterer_pb2.ClusterRequest, clusterer_pb2.ClusterResponse
        ],
    ) -> clusterer_pb2.ClusterResponse:
        """Decode the request, cluster off the event loop, encode the result."""
        try:
            job = serde.cluster_request_from_proto(request)
            logger.debug("Cluster request with %d members", len(job.members))
            result = await asyncio.to_thread(
                self._clusterer.cluster, job.members, previous=job.previous, settings=job.settings
            )
        except Exception:
            self.metrics.observe_error()
            raise
        self.metrics.observe_run(result)
        return serde.cluster_result_to_proto(result)
