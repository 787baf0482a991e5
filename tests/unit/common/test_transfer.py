"""Chunk messages written straight from the payload are the bytes protobuf itself writes."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from fedprompt.chunking import ChunkAssembler, ChunkData, describe_payload
from fedprompt.transfer import (
    chunk_from_proto,
    chunk_message_bytes,
    chunk_to_proto,
    payload_header_to_proto,
    payload_info_from_proto,
    upload_request_bytes,
)
from fedprompt.v1 import coordinator_pb2

UINT64 = st.integers(0, 2**64 - 1)
UINT32 = st.integers(0, 2**32 - 1)


@settings(max_examples=500, deadline=None)
@given(seq=UINT64, data=st.binary(max_size=3000), crc=UINT32)
def test_chunk_message_bytes_equal_protobuf_serialization(seq: int, data: bytes, crc: int) -> None:
    chunk = ChunkData(seq=seq, data=memoryview(data), crc32=crc)
    proto = chunk_to_proto(chunk)
    written = chunk_message_bytes(chunk)
    assert written == coordinator_pb2.UploadUpdateRequest(chunk=proto).SerializeToString()
    assert written == coordinator_pb2.FetchModelResponse(chunk=proto).SerializeToString()
    parsed = coordinator_pb2.UploadUpdateRequest.FromString(written)
    assert (parsed.chunk.seq, parsed.chunk.data, parsed.chunk.crc32) == (seq, data, crc)


@settings(max_examples=50, deadline=None)
@given(payload=st.binary(max_size=5000), chunk_size=st.integers(1, 700))
def test_an_upload_written_as_bytes_reassembles_on_the_server_side(
    payload: bytes, chunk_size: int
) -> None:
    header_proto = payload_header_to_proto(describe_payload(payload, chunk_size=chunk_size))
    header = coordinator_pb2.UpdateHeader(client_id="a", round=3, payload=header_proto)
    messages = [
        coordinator_pb2.UploadUpdateRequest.FromString(m)
        for m in upload_request_bytes(header, payload, chunk_size=chunk_size)
    ]
    assert len(messages) == 1 + -(-len(payload) // chunk_size)
    assert messages[0].header == header
    assembler = ChunkAssembler(
        payload_info_from_proto(messages[0].header.payload), max_total_bytes=len(payload)
    )
    for message in messages[1:]:
        assembler.add(chunk_from_proto(message.chunk))
    assert assembler.finish() == payload
    assert hashlib.sha256(payload).digest() == header.payload.sha256
