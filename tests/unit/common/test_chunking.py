"""Tests of chunked payload transfer: split, reassemble, and every broken promise."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedprompt.chunking import (
    ChunkAssembler,
    ChunkData,
    PayloadInfo,
    crc32,
    describe_payload,
    split_payload,
)
from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.errors import (
    CorruptPayloadError,
    InvalidArgumentError,
    TooLargeError,
    TruncatedPayloadError,
)
from fedprompt.server import MAX_CHUNK_BYTES
from fedprompt.transfer import (
    chunk_from_proto,
    chunk_to_proto,
    payload_header_to_proto,
    payload_info_from_proto,
    payload_messages,
)
from fedprompt.v1 import common_pb2

MIB = 1024 * 1024
LIMIT = 64 * MIB


def _payload(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8).tobytes()


def _assemble(payload: bytes, *, chunk_size: int = MAX_CHUNK_BYTES) -> bytes:
    info = describe_payload(payload, chunk_size=chunk_size)
    assembler = ChunkAssembler(info, max_total_bytes=LIMIT)
    for chunk in split_payload(payload, chunk_size=chunk_size):
        assembler.add(chunk)
    return assembler.finish()


def _with(chunk: ChunkData, *, data: bytes | None = None, seq: int | None = None) -> ChunkData:
    """A copy of ``chunk`` with other bytes (CRC recomputed) or another seq."""
    new_data = memoryview(bytes(chunk.data) if data is None else data)
    return ChunkData(
        seq=chunk.seq if seq is None else seq,
        data=new_data,
        crc32=chunk.crc32 if data is None else crc32(new_data),
    )


def test_fifty_megabyte_tensor_payload_round_trips_in_bounded_chunks() -> None:
    array = np.random.default_rng(1).standard_normal(50 * MIB // 4, dtype=np.float32)
    payload = encode_tensors({"big": array})
    assert len(payload) > 50 * MIB

    info = describe_payload(payload)
    assert info.total_bytes == len(payload)
    assert info.num_chunks == -(-len(payload) // MAX_CHUNK_BYTES)
    assert info.sha256 == hashlib.sha256(payload).digest()

    assembler = ChunkAssembler(info, max_total_bytes=LIMIT)
    seqs = []
    for chunk in split_payload(payload):
        assert 0 < len(chunk.data) <= MAX_CHUNK_BYTES <= MIB
        assert chunk.crc32 == zlib.crc32(chunk.data) & 0xFFFFFFFF
        seqs.append(chunk.seq)
        assembler.add(chunk)
    assert seqs == list(range(info.num_chunks))
    assert assembler.received_bytes == len(payload)

    out = decode_tensors(assembler.finish())
    assert out["big"].dtype == np.float32
    np.testing.assert_array_equal(out["big"], array)


@pytest.mark.parametrize(
    "size", [1, 1000, MAX_CHUNK_BYTES - 1, MAX_CHUNK_BYTES, MAX_CHUNK_BYTES + 1]
)
def test_sizes_around_the_chunk_boundary_round_trip(size: int) -> None:
    payload = _payload(size)
    chunks = list(split_payload(payload))
    assert len(chunks) == describe_payload(payload).num_chunks == -(-size // MAX_CHUNK_BYTES)
    assert _assemble(payload) == payload


def test_smaller_chunks_than_the_maximum_are_accepted() -> None:
    payload = _payload(10_000)
    info = describe_payload(payload, chunk_size=999)
    assert info.num_chunks == 11
    assert _assemble(payload, chunk_size=999) == payload


def test_empty_payload_has_no_chunks_and_round_trips() -> None:
    info = describe_payload(b"")
    assert (info.total_bytes, info.num_chunks) == (0, 0)
    assert list(split_payload(b"")) == []
    assert ChunkAssembler(info, max_total_bytes=LIMIT).finish() == b""


@pytest.mark.parametrize("chunk_size", [0, -1, MAX_CHUNK_BYTES + 1])
def test_split_refuses_chunk_sizes_outside_the_limit(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        list(split_payload(b"abc", chunk_size=chunk_size))


def test_flipped_byte_fails_the_crc_with_data_loss() -> None:
    payload = _payload(3 * 1000)
    assembler = ChunkAssembler(describe_payload(payload, chunk_size=1000), max_total_bytes=LIMIT)
    chunks = list(split_payload(payload, chunk_size=1000))
    assembler.add(chunks[0])
    broken = bytearray(chunks[1].data)
    broken[17] ^= 0x01
    with pytest.raises(CorruptPayloadError, match="chunk 1 failed its CRC-32") as info:
        assembler.add(ChunkData(seq=1, data=memoryview(bytes(broken)), crc32=chunks[1].crc32))
    assert info.value.status_code is grpc.StatusCode.DATA_LOSS
    assert assembler.received_bytes == 1000


def test_bad_crc_value_is_data_loss() -> None:
    payload = _payload(500)
    assembler = ChunkAssembler(describe_payload(payload), max_total_bytes=LIMIT)
    (chunk,) = split_payload(payload)
    with pytest.raises(CorruptPayloadError) as info:
        assembler.add(ChunkData(seq=0, data=chunk.data, crc32=(chunk.crc32 + 1) & 0xFFFFFFFF))
    assert info.value.status_code is grpc.StatusCode.DATA_LOSS


def test_missing_last_chunk_is_truncated_at_finish() -> None:
    payload = _payload(2500)
    assembler = ChunkAssembler(describe_payload(payload, chunk_size=1000), max_total_bytes=LIMIT)
    chunks = list(split_payload(payload, chunk_size=1000))
    for chunk in chunks[:-1]:
        assembler.add(chunk)
    with pytest.raises(TruncatedPayloadError, match="2/3 chunks, 2000/2500 bytes") as info:
        assembler.finish()
    assert info.value.status_code is grpc.StatusCode.DATA_LOSS


def test_no_chunk_at_all_is_truncated() -> None:
    assembler = ChunkAssembler(describe_payload(_payload(10)), max_total_bytes=LIMIT)
    with pytest.raises(TruncatedPayloadError) as info:
        assembler.finish()
    assert info.value.status_code is grpc.StatusCode.DATA_LOSS


@pytest.mark.parametrize("bad_seq", [0, 2, 7], ids=["repeat", "skip", "far-ahead"])
def test_out_of_order_seq_is_invalid_argument(bad_seq: int) -> None:
    payload = _payload(3000)
    assembler = ChunkAssembler(describe_payload(payload, chunk_size=1000), max_total_bytes=LIMIT)
    chunks = list(split_payload(payload, chunk_size=1000))
    assembler.add(chunks[0])
    with pytest.raises(
        InvalidArgumentError, match=f"seq {bad_seq} out of order, expected 1"
    ) as info:
        assembler.add(_with(chunks[1], seq=bad_seq))
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT
    assert assembler.received_bytes == 1000


def test_announced_size_above_the_limit_is_too_large() -> None:
    info = PayloadInfo(total_bytes=10 * MIB + 1, num_chunks=11, sha256=b"\0" * 32)
    with pytest.raises(TooLargeError, match="exceeds the limit") as exc:
        ChunkAssembler(info, max_total_bytes=10 * MIB)
    assert exc.value.status_code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_announced_size_at_the_limit_is_accepted() -> None:
    payload = _payload(4096)
    assembler = ChunkAssembler(describe_payload(payload), max_total_bytes=4096)
    for chunk in split_payload(payload):
        assembler.add(chunk)
    assert assembler.finish() == payload


def test_chunk_over_the_maximum_chunk_size_is_too_large() -> None:
    payload = _payload(MAX_CHUNK_BYTES + 10)
    info = describe_payload(payload)
    assembler = ChunkAssembler(info, max_total_bytes=LIMIT)
    data = memoryview(payload[: MAX_CHUNK_BYTES + 1])
    with pytest.raises(TooLargeError) as exc:
        assembler.add(ChunkData(seq=0, data=data, crc32=crc32(data)))
    assert exc.value.status_code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bytes_past_the_announced_total_are_refused() -> None:
    payload = _payload(100)
    info = describe_payload(payload)
    assembler = ChunkAssembler(info, max_total_bytes=LIMIT)
    longer = payload + b"extra"
    with pytest.raises(CorruptPayloadError, match="past the announced 100") as exc:
        assembler.add(ChunkData(seq=0, data=memoryview(longer), crc32=crc32(longer)))
    assert exc.value.status_code is grpc.StatusCode.DATA_LOSS
    assert assembler.received_bytes == 0


def test_a_chunk_beyond_the_announced_count_is_refused() -> None:
    payload = _payload(100)
    assembler = ChunkAssembler(describe_payload(payload), max_total_bytes=LIMIT)
    (chunk,) = split_payload(payload)
    assembler.add(chunk)
    with pytest.raises(InvalidArgumentError, match="beyond num_chunks=1") as info:
        assembler.add(ChunkData(seq=1, data=memoryview(b"x"), crc32=crc32(b"x")))
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


def test_sha256_mismatch_is_data_loss_at_finish() -> None:
    payload = _payload(3000)
    info = describe_payload(payload, chunk_size=1000)
    assembler = ChunkAssembler(
        PayloadInfo(info.total_bytes, info.num_chunks, hashlib.sha256(b"other").digest()),
        max_total_bytes=LIMIT,
    )
    for chunk in split_payload(payload, chunk_size=1000):
        assembler.add(chunk)
    with pytest.raises(CorruptPayloadError, match="SHA-256") as exc:
        assembler.finish()
    assert exc.value.status_code is grpc.StatusCode.DATA_LOSS


def test_consistently_replaced_chunk_is_caught_by_the_sha256() -> None:
    payload = _payload(2000)
    assembler = ChunkAssembler(describe_payload(payload, chunk_size=1000), max_total_bytes=LIMIT)
    first, second = split_payload(payload, chunk_size=1000)
    assembler.add(first)
    assembler.add(_with(second, data=b"\x00" * 1000))  # valid CRC, wrong bytes
    with pytest.raises(CorruptPayloadError, match="SHA-256"):
        assembler.finish()


def test_empty_chunk_is_invalid_argument() -> None:
    assembler = ChunkAssembler(describe_payload(_payload(10)), max_total_bytes=LIMIT)
    with pytest.raises(InvalidArgumentError, match="empty") as exc:
        assembler.add(ChunkData(seq=0, data=memoryview(b""), crc32=crc32(b"")))
    assert exc.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("total", "chunks", "sha"),
    [
        (MAX_CHUNK_BYTES + 1, 1, b"\0" * 32),  # too few chunks to carry the bytes
        (10, 0, b"\0" * 32),  # bytes without chunks
        (0, 1, b"\0" * 32),  # a chunk without bytes
        (10, 11, b"\0" * 32),  # more chunks than bytes (every chunk holds at least 1 byte)
        (10, 1, b"\0" * 31),  # sha256 of the wrong length
        (10, 1, b""),
    ],
)
def test_inconsistent_header_is_invalid_argument(total: int, chunks: int, sha: bytes) -> None:
    with pytest.raises(InvalidArgumentError) as exc:
        ChunkAssembler(PayloadInfo(total, chunks, sha), max_total_bytes=LIMIT)
    assert exc.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


def test_sink_mode_writes_the_payload_to_a_file(tmp_path: Path) -> None:
    payload = _payload(3 * MAX_CHUNK_BYTES + 123, seed=5)
    target = tmp_path / "payload.bin"
    with open(target, "wb") as sink:
        assembler = ChunkAssembler(describe_payload(payload), max_total_bytes=LIMIT, sink=sink)
        for chunk in split_payload(payload):
            assembler.add(chunk)
        assert assembler.finish() == b""
    assert target.read_bytes() == payload


def test_sink_mode_still_checks_the_sha256(tmp_path: Path) -> None:
    payload = _payload(1000)
    info = describe_payload(payload)
    with open(tmp_path / "p.bin", "wb") as sink:
        assembler = ChunkAssembler(
            PayloadInfo(info.total_bytes, info.num_chunks, b"\1" * 32),
            max_total_bytes=LIMIT,
            sink=sink,
        )
        for chunk in split_payload(payload):
            assembler.add(chunk)
        with pytest.raises(CorruptPayloadError):
            assembler.finish()


def test_proto_messages_round_trip_through_the_transfer_helpers() -> None:
    payload = _payload(2 * MAX_CHUNK_BYTES + 7)
    header, chunks = payload_messages(payload)
    wire_header = common_pb2.PayloadHeader.FromString(header.SerializeToString())
    assert wire_header.content_type == "application/safetensors"
    assembler = ChunkAssembler(payload_info_from_proto(wire_header), max_total_bytes=LIMIT)
    for message in chunks:
        wire = common_pb2.Chunk.FromString(message.SerializeToString())
        assembler.add(chunk_from_proto(wire))
    assert assembler.finish() == payload


def test_chunk_and_header_conversions_are_inverse() -> None:
    chunk = ChunkData(seq=4, data=memoryview(b"abc"), crc32=crc32(b"abc"))
    back = chunk_from_proto(chunk_to_proto(chunk))
    assert (back.seq, bytes(back.data), back.crc32) == (4, b"abc", chunk.crc32)
    info = describe_payload(b"hello")
    assert payload_info_from_proto(payload_header_to_proto(info)) == info


def test_unknown_content_type_is_invalid_argument() -> None:
    header = payload_header_to_proto(describe_payload(b"x"))
    header.content_type = "application/x-pickle"
    with pytest.raises(InvalidArgumentError, match="content_type"):
        payload_info_from_proto(header)


def test_more_chunks_than_announced_are_refused_when_they_arrive() -> None:
    payload = b"0123456789"
    assembler = ChunkAssembler(
        PayloadInfo(total_bytes=10, num_chunks=1, sha256=hashlib.sha256(payload).digest()),
        max_total_bytes=LIMIT,
    )
    assembler.add(ChunkData(seq=0, data=memoryview(payload[:5]), crc32=crc32(payload[:5])))
    with pytest.raises(InvalidArgumentError, match="num_chunks") as exc:
        assembler.add(ChunkData(seq=1, data=memoryview(payload[5:]), crc32=crc32(payload[5:])))
    assert exc.value.status_code is grpc.StatusCode.INVALID_ARGUMENT
