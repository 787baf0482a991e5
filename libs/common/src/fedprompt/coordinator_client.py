"""The Coordinator service as one client sees it: join, tasks, models, uploads, metrics.

:class:`CoordinatorClient` speaks the client side of ``fedprompt.v1.Coordinator`` for one
client id over one channel; the client agent and the benches' light clients both use it,
so the protocol is written once. Every call carries the client id in the call metadata
(``x-fedprompt-client-id``). A task's model travels inline in the task when it is small,
else it is downloaded with ``FetchModel`` in checksummed chunks; uploads stream their header
and chunk messages written straight from the payload
(:func:`fedprompt.transfer.upload_request_bytes`). The client does not retry: the caller
decides what a failure means (the agent reconnects on UNAVAILABLE, a bench records it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Final

import grpc
import numpy as np

from fedprompt.chunking import ChunkAssembler, check_inline_payload
from fedprompt.codec import decode_tensors
from fedprompt.server import CLIENT_ID_METADATA_KEY
from fedprompt.transfer import (
    chunk_from_proto,
    payload_header,
    payload_info_from_proto,
    upload_call,
    upload_request_bytes,
)
from fedprompt.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

if TYPE_CHECKING:  # the async stub class exists only in the generated .pyi
    from fedprompt.v1.coordinator_pb2_grpc import CoordinatorAsyncStub

__all__ = ["MAX_MODEL_BYTES", "CoordinatorClient", "UploadStatusLostError"]

#: Largest model a client accepts from the coordinator (inline or downloaded).
MAX_MODEL_BYTES: Final = 4 * 1024**3
#: What ``grpc.aio`` reports instead of the server's status when the server ends a
#: client-streaming call while the client is still writing (grpc/grpc#36066).
_LOST_STATUS_DETAILS: Final = "Internal error from Core"


class UploadStatusLostError(Exception):
    """The coordinator ended an upload before reading all of it, and its status was lost.

    ``grpc.aio`` sometimes reports such a refusal (a round that closed, an upload over a
    limit) as ``INTERNAL: Internal error from Core`` instead of the coordinator's own code
    (grpc/grpc#36066). The upload was not accepted; why is in the coordinator's log.
    """


class CoordinatorClient:
    """One client's calls to the coordinator over an open channel.

    Parameters
    ----------
    channel
        An aio channel to the coordinator (see :func:`fedprompt.server.create_channel`);
        the caller owns it and closes it.
    client_id
        The client's id, sent in every request and in the call metadata.
    call_timeout_s
        Deadline of the short calls (Join, ReportMetrics).
    transfer_timeout_s
        Deadline of a model download or an upload.
    max_model_bytes
        Largest model accepted from the coordinator.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        client_id: str,
        *,
        call_timeout_s: float = 30.0,
        transfer_timeout_s: float = 600.0,
        max_model_bytes: int = MAX_MODEL_BYTES,
    ) -> None:
        self.client_id = client_id
        self._stub: CoordinatorAsyncStub = coordinator_pb2_grpc.CoordinatorStub(channel)
        self._upload = upload_call(channel)
        self._metadata = ((CLIENT_ID_METADATA_KEY, client_id),)
        self._call_timeout_s = call_timeout_s
        self._transfer_timeout_s = transfer_timeout_s
        self._max_model_bytes = max_model_bytes

    async def join(
        self,
        *,
        metadata_json: str,
        capabilities: common_pb2.ClientCapabilities,
        num_train_examples: int,
    ) -> coordinator_pb2.JoinResponse:
        """Register with the coordinator, waiting for the channel to be ready.

        Returns
        -------
        coordinator_pb2.JoinResponse
            The current round, the total and whether the initial model is wanted.
        """
        response: coordinator_pb2.JoinResponse = await self._stub.Join(
            coordinator_pb2.JoinRequest(
                client_id=self.client_id,
                metadata_json=metadata_json,
                capabilities=capabilities,
                num_train_examples=num_train_examples,
            ),
            metadata=self._metadata,
            wait_for_ready=True,
            timeout=self._call_timeout_s,
        )
        return response

    def tasks(self) -> AsyncIterator[coordinator_pb2.Task]:
        """The task stream: one task per round phase, until a FINISHED task (or an error)."""
        call = self._stub.StreamTasks(
            coordinator_pb2.StreamTasksRequest(client_id=self.client_id), metadata=self._metadata
        )
        return aiter(call)

    async def task_payload(
        self, task: coordinator_pb2.Task, stage: coordinator_pb2.ModelStage.ValueType
    ) -> bytes:
        """The safetensors bytes of a task's model: carried inline (small models), else fetched.

        Parameters
        ----------
        task
            A TRAIN or EVALUATE task.
        stage
            Which model to download when it is not inline (round start or aggregated).
        """
        if task.HasField("model"):
            return check_inline_payload(
                task.model.data, task.model.sha256, max_total_bytes=self._max_model_bytes
            )
        return await self.fetch_payload(task.round, stage)

    async def task_model(
        self, task: coordinator_pb2.Task, stage: coordinator_pb2.ModelStage.ValueType
    ) -> dict[str, np.ndarray]:
        """The tensors of a task's model, as arrays that own their memory (see ``task_payload``)."""
        payload = await self.task_payload(task, stage)
        return {k: np.array(v, copy=True) for k, v in decode_tensors(payload).items()}

    async def fetch_payload(
        self, round_id: int, stage: coordinator_pb2.ModelStage.ValueType
    ) -> bytes:
        """Download a model with ``FetchModel`` and return its verified safetensors bytes.

        Raises
        ------
        RuntimeError
            If the download carried no header.
        fedprompt.errors.FedPromptError
            If a chunk or the whole payload fails its checks (see ``ChunkAssembler``).
        """
        call = self._stub.FetchModel(
            coordinator_pb2.FetchModelRequest(
                client_id=self.client_id, round=round_id, stage=stage
            ),
            metadata=self._metadata,
            timeout=self._transfer_timeout_s,
        )
        assembler: ChunkAssembler | None = None
        async for message in call:
            if message.WhichOneof("message") == "header":
                assembler = ChunkAssembler(
                    payload_info_from_proto(message.header), max_total_bytes=self._max_model_bytes
                )
            elif assembler is not None:
                assembler.add(chunk_from_proto(message.chunk))
        if assembler is None:
            raise RuntimeError(
                f"{self.client_id}: model download for round {round_id} carried no header"
            )
        return assembler.finish()

    def update_header(
        self,
        *,
        round_id: int,
        kind: coordinator_pb2.UpdateKind.ValueType,
        payload: bytes,
        num_examples: int,
        train_metrics: Mapping[str, float] | None = None,
    ) -> coordinator_pb2.UpdateHeader:
        """The header of an upload: who, which round, what kind, the payload's size and SHA-256.

        Parameters
        ----------
        round_id
            The round the update belongs to (0 for the initial model).
        kind
            ``UPDATE_KIND_DELTA`` or ``UPDATE_KIND_INITIAL``.
        payload
            The safetensors bytes (see :func:`fedprompt.codec.encode_tensors`).
        num_examples
            The client's training examples (the aggregation weight).
        train_metrics
            Training metrics that travel in the header.
        """
        return coordinator_pb2.UpdateHeader(
            client_id=self.client_id,
            round=round_id,
            kind=kind,
            num_examples=num_examples,
            payload=payload_header(payload),
            train_metrics=train_metrics or {},
        )

    async def send_update(
        self, header: coordinator_pb2.UpdateHeader, payload: bytes
    ) -> coordinator_pb2.UploadUpdateResponse:
        """Stream an upload: ``header``, then the payload's chunk messages, written lazily.

        Raises
        ------
        UploadStatusLostError
            When the coordinator refused the upload mid-stream and ``grpc.aio`` lost its
            status (see the class); any other failure is the call's ``AioRpcError``.
        """
        try:
            response: coordinator_pb2.UploadUpdateResponse = await self._upload(
                upload_request_bytes(header, payload),
                metadata=self._metadata,
                timeout=self._transfer_timeout_s,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.INTERNAL and exc.details() == _LOST_STATUS_DETAILS:
                raise UploadStatusLostError(
                    f"{self.client_id}: the coordinator ended upload of round {header.round} "
                    "before reading it all; its status was lost in transit (grpc/grpc#36066)"
                ) from exc
            raise
        return response

    async def upload(
        self,
        *,
        round_id: int,
        kind: coordinator_pb2.UpdateKind.ValueType,
        payload: bytes,
        num_examples: int,
        train_metrics: Mapping[str, float] | None = None,
    ) -> coordinator_pb2.UploadUpdateResponse:
        """Upload a delta or the initial model (see ``update_header`` for the arguments).

        The header (the payload's SHA-256) is computed off the event loop.
        """
        header = await asyncio.to_thread(
            self.update_header,
            round_id=round_id,
            kind=kind,
            payload=payload,
            num_examples=num_examples,
            train_metrics=train_metrics,
        )
        return await self.send_update(header, payload)

    async def report_metrics(
        self,
        *,
        round_id: int,
        phase: coordinator_pb2.MetricsPhase.ValueType,
        metrics: Mapping[str, float],
    ) -> None:
        """Report a round's metrics (the evaluation of the aggregated model, say)."""
        await self._stub.ReportMetrics(
            coordinator_pb2.ReportMetricsRequest(
                client_id=self.client_id, round=round_id, phase=phase, metrics=metrics
            ),
            metadata=self._metadata,
            timeout=self._call_timeout_s,
        )

    async def secagg_step(self, request: coordinator_pb2.SecAggStepRequest) -> None:
        """Send a secure-aggregation answer (keys, shares or unmasking shares) of this client.

        ``request.client_id`` is set to this client's id.
        """
        request.client_id = self.client_id
        await self._stub.SecAggStep(request, metadata=self._metadata, timeout=self._call_timeout_s)
