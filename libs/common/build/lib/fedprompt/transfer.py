"""Proto edge of chunked transfer: payload headers and chunks <-> protobuf messages.

The pure logic lives in :mod:`fedprompt.chunking`; this module only converts, so that
every service sends and receives payloads the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

from fedprompt.chunking import ChunkData, PayloadInfo, describe_payload, split_payload
from fedprompt.codec import CONTENT_TYPE
from fedprompt.errors import InvalidArgumentError
from fedprompt.v1 import common_pb2


def payload_header_to_proto(info: PayloadInfo) -> common_pb2.PayloadHeader:
    """Build the protobuf header of a payload."""
    return common_pb2.PayloadHeader(
        total_bytes=info.total_bytes,
        num_chunks=info.num_chunks,
        sha256=info.sha256,
        content_type=CONTENT_TYPE,
    )


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
    header = payload_header_to_proto(describe_payload(payload))
    return header, (chunk_to_proto(c) for c in split_payload(payload))
