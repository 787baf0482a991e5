"""gRPC servicer of the coordinator: translates messages and calls :class:`Federation`.

Uploads go to the federation's upload intake (:attr:`Federation.uploads`), one call per
header, chunk and end of stream.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterable

import grpc

from fedprompt.errors import InvalidArgumentError, TruncatedPayloadError
from fedprompt.transfer import chunk_from_proto, payload_info_from_proto, payload_messages
from fedprompt.v1 import coordinator_pb2, coordinator_pb2_grpc
from fedprompt_coordinator import serde
from fedprompt_coordinator.federation import Federation
from fedprompt_coordinator.identity import check_caller, status_view
from fedprompt_coordinator.upload_intake import Upload

#: Payloads up to this size keep their FetchModel messages cached (prompts, heads).
FETCH_CACHE_MAX_BYTES = 64 * 1024 * 1024
#: Cached payloads (one per round stage and cluster); the cache is emptied when full.
FETCH_CACHE_ENTRIES = 64


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """The Coordinator service over a :class:`Federation`."""

    def __init__(self, federation: Federation) -> None:
        self._federation = federation
        self._uploads = federation.uploads
        #: id(payload) -> (payload, its FetchModel messages); the payload is kept so the id
        #: cannot be reused by another object while the entry lives.
        self._fetch_cache: dict[int, tuple[bytes, list[coordinator_pb2.FetchModelResponse]]] = {}

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

    async def FetchModel(  # noqa: N802 - gRPC method name
        self,
        request: coordinator_pb2.FetchModelRequest,
        context: grpc.aio.ServicerContext[
            coordinator_pb2.FetchModelRequest, coordinator_pb2.FetchModelResponse
        ],
    ) -> AsyncIterator[coordinator_pb2.FetchModelResponse]:
        """Stream the requested model as a header plus chunks."""
        check_caller(context, request.client_id)
        payload = self._federation.fetch_model(
            request.client_id, request.round, serde.model_stage_from_proto(request.stage)
        )
        for message in self._fetch_messages(payload):
            yield message

    def _fetch_messages(self, payload: bytes) -> Iterable[coordinator_pb2.FetchModelResponse]:
        """The header and chunk messages of ``payload``, built once per payload.

        Every participant of a cluster downloads the same payload object, so its SHA-256,
        CRC-32s and protobuf messages are computed once, not per download. Large payloads
        are not cached (their chunks would double the memory); they stream lazily.
        """
        cached = self._fetch_cache.get(id(payload))
        if cached is not None and cached[0] is payload:
            return cached[1]
        header, chunks = payload_messages(payload)
        first = coordinator_pb2.FetchModelResponse(header=header)
        lazy = (coordinator_pb2.FetchModelResponse(chunk=c) for c in chunks)
        if len(payload) > FETCH_CACHE_MAX_BYTES:
            return itertools.chain([first], lazy)
        messages = [first, *lazy]
        if len(self._fetch_cache) >= FETCH_CACHE_ENTRIES:
            self._fetch_cache.clear()
        self._fetch_cache[id(payload)] = (payload, messages)
        return messages

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
