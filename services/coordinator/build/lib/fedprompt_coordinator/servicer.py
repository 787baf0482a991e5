"""gRPC servicer of the coordinator: translates messages and calls :class:`Federation`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from fedprompt.errors import InvalidArgumentError, TruncatedPayloadError
from fedprompt.transfer import chunk_from_proto, payload_info_from_proto, payload_messages
from fedprompt.v1 import coordinator_pb2, coordinator_pb2_grpc
from fedprompt_coordinator import serde
from fedprompt_coordinator.federation import Federation


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """The Coordinator service over a :class:`Federation`."""

    def __init__(self, federation: Federation) -> None:
        self._federation = federation

    async def Join(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.JoinRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.JoinRequest, coordinator_pb2.JoinResponse
        ],
    ) -> coordinator_pb2.JoinResponse:
        """Register a client."""
        result = await self._federation.join(serde.join_request_from_proto(request))
        return serde.join_result_to_proto(result)

    async def StreamTasks(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.StreamTasksRequest,
        context: grpc.aio.ServicerContext[coordinator_pb2.StreamTasksRequest, coordinator_pb2.Task],
    ) -> AsyncIterator[coordinator_pb2.Task]:
        """Stream tasks to a client until the federation is done."""
        async for task in self._federation.task_stream(request.client_id):
            yield serde.task_to_proto(task)

    async def FetchModel(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.FetchModelRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.FetchModelRequest, coordinator_pb2.FetchModelResponse
        ],
    ) -> AsyncIterator[coordinator_pb2.FetchModelResponse]:
        """Stream the requested model as a header plus chunks."""
        payload = self._federation.fetch_model(
            request.client_id, request.round, serde.model_stage_from_proto(request.stage)
        )
        header, chunks = payload_messages(payload)
        yield coordinator_pb2.FetchModelResponse(header=header)
        for chunk in chunks:
            yield coordinator_pb2.FetchModelResponse(chunk=chunk)

    async def UploadUpdate(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[coordinator_pb2.UploadUpdateRequest],
        context: grpc.aio.ServicerContext[
            coordinator_pb2.UploadUpdateRequest, coordinator_pb2.UploadUpdateResponse
        ],
    ) -> coordinator_pb2.UploadUpdateResponse:
        """Receive a header and chunks; validate and store the update."""
        upload = None
        async for message in request_iterator:
            which = message.WhichOneof("message")
            if upload is None:
                if which != "header":
                    raise InvalidArgumentError("an upload must start with its header")
                h = message.header
                upload = self._federation.begin_upload(
                    client_id=h.client_id,
                    round_id=h.round,
                    kind=serde.update_kind_from_proto(h.kind),
                    num_examples=h.num_examples,
                    info=payload_info_from_proto(h.payload),
                )
            elif which == "chunk":
                self._federation.add_chunk(upload, chunk_from_proto(message.chunk))
            else:
                raise InvalidArgumentError("an upload carries exactly one header, then chunks")
        if upload is None:
            raise TruncatedPayloadError("upload stream ended before its header")
        duplicate = await self._federation.finish_upload(upload)
        return coordinator_pb2.UploadUpdateResponse(
            accepted=True, duplicate=duplicate, received_bytes=upload.assembler.received_bytes
        )

    async def ReportMetrics(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.ReportMetricsRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.ReportMetricsRequest, coordinator_pb2.ReportMetricsResponse
        ],
    ) -> coordinator_pb2.ReportMetricsResponse:
        """Store a client's metrics."""
        await self._federation.report_metrics(
            request.client_id,
            request.round,
            serde.metrics_phase_from_proto(request.phase),
            dict(request.metrics),
        )
        return coordinator_pb2.ReportMetricsResponse()

    async def GetStatus(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.GetStatusRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.GetStatusRequest, coordinator_pb2.GetStatusResponse
        ],
    ) -> coordinator_pb2.GetStatusResponse:
        """Return the federation's status."""
        return serde.status_to_proto(self._federation.status())
