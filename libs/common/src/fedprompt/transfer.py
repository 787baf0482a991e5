"""Proto edge of chunked transfer: payload headers and chunks <-> protobuf messages.

The pure logic lives in :mod:`fedprompt.chunking`; this module only converts, so that
every service sends and receives payloads the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from fedprompt.chunking import ChunkData, PayloadInfo, describe_payload, split_payload
from fedprompt.codec import CONTENT_TYPE
from fedprompt.errors import InvalidArgumentError
from fedprompt.server import MAX_CHUNK_BYTES
from fedprompt.v1 import common_pb2, coordinator_pb2


def payload_header_to_proto(info: PayloadInfo) -> common_pb2.PayloadHeader:
    """Build the protobuf header of a payload."""
    return common_pb2.PayloadHeader(
        total_bytes=info.total_bytes,
        num_chunks=info.num_chunks,
        sha256=info.sha256,
        content_type=CONTENT_TYPE,
    )


def payload_header(payload: bytes) -> common_pb2.PayloadHeader:
    """The protobuf header of ``payload`` (its size, chunk count and SHA-256)."""
    return payload_header_to_proto(describe_payload(payload))


def payload_info_from_proto(header: common_pb2.PayloadHeader) -> PayloadInfo:
    """Read a protobuf payload header, rejecting unknown content types."""
    if header.content_type and header.content_type != CONTENT_TYPE:
        raise InvalidArgumentError(
            f"unsupported content_type {header.content_type!r}, expected {CONTENT_TYPE!r}"
        )
    return PayloadInfo(
        total_bytes=header.total_bytes, num_chunks=header.num_chunks, sha256=header.sha256
    )


def chunk_to_proto(chunk: ChunkData) -> common_pb2.Chunk:
    """Build the protobuf message of one chunk."""
    return common_pb2.Chunk(seq=chunk.seq, data=bytes(chunk.data), crc32=chunk.crc32)


def chunk_from_proto(chunk: common_pb2.Chunk) -> ChunkData:
    """Read one protobuf chunk."""
    return ChunkData(seq=chunk.seq, data=memoryview(chunk.data), crc32=chunk.crc32)


def payload_messages(
    payload: bytes,
) -> tuple[common_pb2.PayloadHeader, Iterator[common_pb2.Chunk]]:
    """Split ``payload`` into its protobuf header and a lazy iterator of protobuf chunks."""
    return payload_header(payload), (chunk_to_proto(c) for c in split_payload(payload))


#: Full name of the coordinator's upload method (for a call on pre-serialized messages).
UPLOAD_METHOD = "/fedprompt.v1.Coordinator/UploadUpdate"
#: Field number of ``chunk`` in ``UploadUpdateRequest`` (and ``FetchModelResponse``).
_CHUNK_FIELD = 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def chunk_message_bytes(chunk: ChunkData, *, field_number: int = _CHUNK_FIELD) -> bytes:
    """The serialized parent message whose field ``field_number`` is ``chunk``.

    The same bytes as ``UploadUpdateRequest(chunk=chunk_to_proto(chunk)).SerializeToString()``
    (tested), written with one copy of the chunk's data instead of four (``bytes``, the
    ``Chunk`` message, the parent message, serialization): building protobuf chunk messages
    was most of a client's CPU time per uploaded MiB.
    """
    n = len(chunk.data)
    inner_head = b""
    if chunk.seq:
        inner_head += b"\x08" + _varint(chunk.seq)
    if n:
        inner_head += b"\x12" + _varint(n)
    inner_tail = b"\x18" + _varint(chunk.crc32) if chunk.crc32 else b""
    inner_len = len(inner_head) + n + len(inner_tail)
    head = bytes([(field_number << 3) | 2]) + _varint(inner_len) + inner_head
    return b"".join((head, chunk.data, inner_tail))


def upload_request_bytes(
    header: coordinator_pb2.UpdateHeader, payload: bytes, *, chunk_size: int = MAX_CHUNK_BYTES
) -> Iterator[bytes]:
    """Serialized ``UploadUpdateRequest`` messages of one upload: its header, then its chunks.

    Chunks (and their CRC-32s) are made lazily, one at a time, so a large payload is never
    held twice. Send them with :func:`upload_call`.
    """
    yield coordinator_pb2.UploadUpdateRequest(header=header).SerializeToString()
    for chunk in split_payload(payload, chunk_size=chunk_size):
        yield chunk_message_bytes(chunk)


def upload_call(
    channel: grpc.aio.Channel,
) -> grpc.aio.StreamUnaryMultiCallable[bytes, coordinator_pb2.UploadUpdateResponse]:
    """``UploadUpdate`` on ``channel`` for requests already serialized by
    :func:`upload_request_bytes` (no serializer runs; the server sees ordinary messages)."""
    return channel.stream_unary(
        UPLOAD_METHOD,
        request_serializer=None,
        response_deserializer=coordinator_pb2.UploadUpdateResponse.FromString,
    )
