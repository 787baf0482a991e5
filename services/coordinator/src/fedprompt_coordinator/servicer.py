"""gRPC servicer of the coordinator: translates messages and calls :class:`Federation`.

Uploads go to the federation's upload intake (:attr:`Federation.uploads`), one call per
header, chunk and end of stream. Downloads send messages serialized once per round, stage
and cluster: register the servicer with :func:`add_coordinator_servicer_to_server`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import grpc

from fedprompt.errors import InvalidArgumentError, TruncatedPayloadError
from fedprompt.transfer import chunk_from_proto, payload_info_from_proto
from fedprompt.v1 import coordinator_pb2, coordinator_pb2_grpc
from fedprompt_coordinator import serde
from fedprompt_coordinator.federation import Federation
from fedprompt_coordinator.identity import check_caller, status_view
from fedprompt_coordinator.upload_intake import Upload

#: Full name of the Coordinator service.
SERVICE_NAME = "fedprompt.v1.Coordinator"


def add_coordinator_servicer_to_server(servicer: CoordinatorServicer, server: Any) -> None:
    """Register ``servicer`` on ``server`` like the generated
    ``add_CoordinatorServicer_to_server``, but with ``FetchModel`` answering the
    pre-serialized messages of :class:`~fedprompt_coordinator.encoded_model.EncodedModel`
    (no response serializer: the bytes go out as they are; clients see ordinary messages).
    """
    handlers: dict[str, Any] = {}

    class _Collect:
        def add_generic_rpc_handlers(self, generic: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, methods: dict[str, Any]) -> None:
            handlers.update(methods)

    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, cast(Any, _Collect()))
    fetch = handlers["FetchModel"]
    handlers["FetchModel"] = grpc.unary_stream_rpc_method_handler(
        fetch.unary_stream,
        request_deserializer=fetch.request_deserializer,
        response_serializer=None,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """The Coordinator service over a :class:`Federation`."""

    def __init__(self, federation: Federation) -> None:
        self._federation = federation
        self._uploads = federation.uploads

    async def Join(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.JoinRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.JoinRequest, coordinator_pb2.JoinResponse
        ],
    ) -> coordinator_pb2.JoinResponse:
        """Register a client."""
        check_caller(context, request.client_id)
        result = await self._federation.join(serde.join_request_from_proto(request))
        return serde.join_result_to_proto(result)

    async def StreamTasks(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.StreamTasksRequest,
        context: grpc.aio.ServicerContext[coordinator_pb2.StreamTasksRequest, coordinator_pb2.Task],
    ) -> AsyncIterator[coordinator_pb2.Task]:
        """Stream tasks to a client until the federation is done."""
        check_caller(context, request.client_id)
        async for task in self._federation.task_stream(request.client_id):
            yield serde.task_to_proto(task)

    async def FetchModel(  # type: ignore[override]  # noqa: N802 - answers serialized messages
        self,
        request: coordinator_pb2.FetchModelRequest,
        context: grpc.aio.ServicerContext[coordinator_pb2.FetchModelRequest, bytes],
    ) -> AsyncIterator[bytes]:
        """Stream the requested model as a header plus chunks, serialized once per round,
        stage and cluster (register with :func:`add_coordinator_servicer_to_server`)."""
        check_caller(context, request.client_id)
        encoded = self._federation.fetch_model(
            request.client_id, request.round, serde.model_stage_from_proto(request.stage)
        )
        for message in encoded.messages():
            yield message

    async def UploadUpdate(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[coordinator_pb2.UploadUpdateRequest],
        context: grpc.aio.ServicerContext[
            coordinator_pb2.UploadUpdateRequest, coordinator_pb2.UploadUpdateResponse
        ],
    ) -> coordinator_pb2.UploadUpdateResponse:
        """Receive a header and chunks; validate and store the update."""
        upload: Upload | None = None
        try:
            async for message in request_iterator:
                which = message.WhichOneof("message")
                if upload is None:
                    if which != "header":
                        raise InvalidArgumentError("an upload must start with its header")
                    h = message.header
                    check_caller(context, h.client_id)
                    upload = self._uploads.begin(
                        client_id=h.client_id,
                        round_id=h.round,
                        kind=serde.update_kind_from_proto(h.kind),
                        num_examples=h.num_examples,
                        info=payload_info_from_proto(h.payload),
                        train_metrics=h.train_metrics,
                    )
                elif which == "chunk":
                    await upload.add(chunk_from_proto(message.chunk))
                else:
                    raise InvalidArgumentError("an upload carries exactly one header, then chunks")
        except BaseException:
            if upload is not None:
                await self._uploads.discard(upload)
            raise
        if upload is None:
            raise TruncatedPayloadError("upload stream ended before its header")
        duplicate = await self._uploads.finish(upload)
        return coordinator_pb2.UploadUpdateResponse(
            accepted=True, duplicate=duplicate, received_bytes=upload.received_bytes
        )

    async def ReportMetrics(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.ReportMetricsRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.ReportMetricsRequest, coordinator_pb2.ReportMetricsResponse
        ],
    ) -> coordinator_pb2.ReportMetricsResponse:
        """Store a client's metrics."""
        check_caller(context, request.client_id)
        await self._federation.report_metrics(
            request.client_id,
            request.round,
            serde.metrics_phase_from_proto(request.phase),
            dict(request.metrics),
        )
        return coordinator_pb2.ReportMetricsResponse()

    async def SecAggStep(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.SecAggStepRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.SecAggStepRequest, coordinator_pb2.SecAggStepResponse
        ],
    ) -> coordinator_pb2.SecAggStepResponse:
        """Record a member's keys, shares or unmasking shares for its secure round."""
        check_caller(context, request.client_id)
        await self._federation.secagg_step(serde.secagg_step_from_proto(request))
        return coordinator_pb2.SecAggStepResponse(accepted=True)

    async def GetStatus(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.GetStatusRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.GetStatusRequest, coordinator_pb2.GetStatusResponse
        ],
    ) -> coordinator_pb2.GetStatusResponse:
        """Return one page of the federation's status, as the caller's certificate allows."""
        view, caller = status_view(context)
        query = serde.status_query_from_proto(request, view=view, caller=caller)
        return serde.status_to_proto(
            self._federation.status(query), latest_rounds=query.first_round_record is None
        )
