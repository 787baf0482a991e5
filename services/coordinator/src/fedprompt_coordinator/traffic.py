"""Bytes on the wire per client and round, counted by a server interceptor.

Every request and response message of the coordinator is counted as its serialized size
plus gRPC's 5-byte length prefix (HTTP/2 frame headers, HPACK headers and TLS records are
not counted). The caller is identified by its certificate's CN under mutual TLS, else by the
``x-fedprompt-client-id`` metadata key.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from fedprompt.server import (
    AnyContext,
    Handler,
    StreamingBehavior,
    UnaryBehavior,
    wrap_handler,
)
from fedprompt.v1 import common_pb2, coordinator_pb2
from fedprompt_coordinator.identity import caller_id

GRPC_MESSAGE_PREFIX_BYTES = 5


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _chunk_field_size(chunk: common_pb2.Chunk) -> int:
    """Encoded size of a ``Chunk`` as field 2 of its parent, computed without encoding it.

    ``ByteSize()`` serialises the message internally: about 1 ms per 1 MiB chunk, paid
    for every chunk of every upload and download.
    """
    n = len(chunk.data)
    inner = (1 + _varint_len(chunk.seq) if chunk.seq else 0) + (1 + _varint_len(n) + n if n else 0)
    inner += 1 + _varint_len(chunk.crc32) if chunk.crc32 else 0
    return 1 + _varint_len(inner) + inner


_CHUNK_CARRIERS = (coordinator_pb2.UploadUpdateRequest, coordinator_pb2.FetchModelResponse)


def wire_size(message: Any) -> int:
    """Bytes one protobuf message (or a pre-serialized one) takes inside a gRPC stream."""
    if isinstance(message, bytes):
        return len(message) + GRPC_MESSAGE_PREFIX_BYTES
    if isinstance(message, _CHUNK_CARRIERS) and message.WhichOneof("message") == "chunk":
        return _chunk_field_size(message.chunk) + GRPC_MESSAGE_PREFIX_BYTES
    return int(message.ByteSize()) + GRPC_MESSAGE_PREFIX_BYTES


class TrafficMeter:
    """Accumulates (bytes up, bytes down) per (round, client).

    ``current_round`` is read at every message, so bytes land in the round in progress;
    round 0 holds set-up traffic (joins, the initial model). ``on_add(up, down)``, if given,
    is called with every count as well.
    """

    def __init__(
        self,
        current_round: Callable[[], int],
        *,
        on_add: Callable[[int, int], None] | None = None,
    ) -> None:
        self._current_round = current_round
        self._on_add = on_add
        self._bytes: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])

    def add(self, client_id: str, *, up: int = 0, down: int = 0) -> None:
        """Count ``up`` bytes received from and ``down`` bytes sent to ``client_id``."""
        cell = self._bytes[(self._current_round(), client_id)]
        cell[0] += up
        cell[1] += down
        if self._on_add is not None:
            self._on_add(up, down)  # e.g. Prometheus counters (no client label)

    def get(self, round_id: int, client_id: str) -> tuple[int, int]:
        """(bytes up, bytes down) of a client in a round."""
        up, down = self._bytes.get((round_id, client_id), (0, 0))
        return up, down

    def round_totals(self, round_id: int) -> dict[str, tuple[int, int]]:
        """client id -> (up, down) for one round."""
        return {c: (v[0], v[1]) for (r, c), v in self._bytes.items() if r == round_id}

    def forget_before(self, round_id: int) -> None:
        """Drop counters of rounds before ``round_id`` once they are stored durably."""
        for key in [k for k in self._bytes if 0 < k[0] < round_id]:
            del self._bytes[key]


def _client_id(context: AnyContext) -> str:
    return caller_id(context)


class TrafficInterceptor(grpc.aio.ServerInterceptor):
    """Counts every message of calls that carry a client id into a :class:`TrafficMeter`."""

    def __init__(self, meter: TrafficMeter) -> None:
        self._meter = meter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Wrap the handler so that requests and responses are counted."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        meter = self._meter

        def count_request(request: Any, context: AnyContext) -> None:
            if not hasattr(request, "__aiter__"):
                cid = _client_id(context)
                if cid:
                    meter.add(cid, up=wire_size(request))

        def unary(behavior: UnaryBehavior) -> UnaryBehavior:
            async def call(request: Any, context: AnyContext) -> Any:
                count_request(request, context)
                response = await behavior(request, context)
                cid = _client_id(context)
                if cid and response is not None:
                    meter.add(cid, down=wire_size(response))
                return response

            return call

        def streaming(behavior: StreamingBehavior) -> StreamingBehavior:
            async def call(request: Any, context: AnyContext) -> AsyncIterator[Any]:
                count_request(request, context)
                cid = _client_id(context)
                async for response in behavior(request, context):
                    if cid:
                        meter.add(cid, down=wire_size(response))
                    yield response

            return call

        async def requests(source: AsyncIterator[Any], context: AnyContext) -> AsyncIterator[Any]:
            cid = _client_id(context)
            async for request in source:
                if cid:
                    meter.add(cid, up=wire_size(request))
                yield request

        return wrap_handler(handler, unary=unary, streaming=streaming, request_iter=requests)
