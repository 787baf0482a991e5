"""Tests of the per-message wire sizes the traffic meter counts."""

from __future__ import annotations

import pytest

from fedprompt.v1 import common_pb2, coordinator_pb2
from fedprompt_coordinator.traffic import GRPC_MESSAGE_PREFIX_BYTES, wire_size


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 2**20, 2**40])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1024 * 1024])
@pytest.mark.parametrize("crc", [0, 1, 2**31, 2**32 - 1])
@pytest.mark.parametrize(
    "carrier", [coordinator_pb2.UploadUpdateRequest, coordinator_pb2.FetchModelResponse]
)
def test_chunk_sizes_are_computed_exactly_without_serialising(
    seq: int, size: int, crc: int, carrier: type
) -> None:
    message = carrier(chunk=common_pb2.Chunk(seq=seq, data=b"x" * size, crc32=crc))
    assert wire_size(message) == message.ByteSize() + GRPC_MESSAGE_PREFIX_BYTES


def test_other_messages_use_their_byte_size() -> None:
    header = coordinator_pb2.UploadUpdateRequest(
        header=coordinator_pb2.UpdateHeader(client_id="a", round=3)
    )
    assert wire_size(header) == header.ByteSize() + GRPC_MESSAGE_PREFIX_BYTES
    join = coordinator_pb2.JoinRequest(client_id="abc")
    assert wire_size(join) == join.ByteSize() + GRPC_MESSAGE_PREFIX_BYTES
