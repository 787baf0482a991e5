"""Chunked payload transfer: split bytes into checksummed chunks and reassemble them safely.

A payload travels as a header (total size, chunk count, SHA-256) followed by chunks of at
most :data:`~fedprompt.server.MAX_CHUNK_BYTES` with a CRC-32 each and consecutive sequence
numbers. :class:`ChunkAssembler` checks every promise the header made and raises a coded
error (``DATA_LOSS`` for corruption or truncation, ``INVALID_ARGUMENT`` for protocol
violations, ``RESOURCE_EXHAUSTED`` for size limits) at the first broken one.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fedprompt.errors import (
    CorruptPayloadError,
    InvalidArgumentError,
    TooLargeError,
    TruncatedPayloadError,
)
from fedprompt.server import MAX_CHUNK_BYTES


@dataclass(frozen=True)
class PayloadInfo:
    """What a payload header promises."""

    total_bytes: int
    num_chunks: int
    sha256: bytes


@dataclass(frozen=True)
class ChunkData:
    """One chunk: sequence number, bytes and their CRC-32."""

    seq: int
    data: memoryview
    crc32: int


def crc32(data: bytes | memoryview) -> int:
    """CRC-32 (zlib polynomial) of ``data`` as an unsigned 32-bit integer."""
    return zlib.crc32(data) & 0xFFFFFFFF


def describe_payload(payload: bytes, *, chunk_size: int = MAX_CHUNK_BYTES) -> PayloadInfo:
    """Compute the header for ``payload`` split into ``chunk_size`` pieces."""
    num_chunks = (len(payload) + chunk_size - 1) // chunk_size
    return PayloadInfo(
        total_bytes=len(payload), num_chunks=num_chunks, sha256=hashlib.sha256(payload).digest()
    )


def split_payload(payload: bytes, *, chunk_size: int = MAX_CHUNK_BYTES) -> Iterator[ChunkData]:
    """Yield zero-copy chunks of ``payload`` with their CRC-32."""
    if not 0 < chunk_size <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_size must be in (0, {MAX_CHUNK_BYTES}], got {chunk_size}")
    view = memoryview(payload)
    for seq, start in enumerate(range(0, len(payload), chunk_size)):
        piece = view[start : start + chunk_size]
        yield ChunkData(seq=seq, data=piece, crc32=crc32(piece))


class ChunkAssembler:
    """Reassemble a chunked payload, verifying sizes, order and checksums.

    Parameters
    ----------
    info
        The header sent before the chunks.
    max_total_bytes
        Largest payload accepted; larger announcements are refused before any chunk arrives.
    sink
        Optional binary file the bytes are written to as they arrive (bounded memory);
        without it the payload is kept in memory and returned by :meth:`finish`.
    """

    def __init__(self, info: PayloadInfo, *, max_total_bytes: int, sink: BinaryIO | None = None):
        if info.total_bytes > max_total_bytes:
            raise TooLargeError(
                f"payload of {info.total_bytes} bytes exceeds the limit of {max_total_bytes} bytes"
            )
        expected_chunks = (info.total_bytes + MAX_CHUNK_BYTES - 1) // MAX_CHUNK_BYTES
        if info.num_chunks < expected_chunks or (info.total_bytes == 0) != (info.num_chunks == 0):
            raise InvalidArgumentError(
                f"header announces {info.num_chunks} chunks for {info.total_bytes} bytes; "
                f"chunks hold at most {MAX_CHUNK_BYTES} bytes"
            )
        if info.num_chunks > max(info.total_bytes, 0):
            raise InvalidArgumentError(
                f"header announces {info.num_chunks} chunks for only {info.total_bytes} bytes"
            )
        if len(info.sha256) != 32:
            raise InvalidArgumentError("header sha256 must be 32 bytes")
        self._info = info
        self._sink = sink
        self._buffer = bytearray() if sink is None else None
        self._hash = hashlib.sha256()
        self._received_bytes = 0
        self._next_seq = 0

    @property
    def received_bytes(self) -> int:
        """Payload bytes accepted so far."""
        return self._received_bytes

    def add(self, chunk: ChunkData) -> None:
        """Accept the next chunk or raise the coded error for what is wrong with it."""
        if chunk.seq != self._next_seq:
            raise InvalidArgumentError(
                f"chunk seq {chunk.seq} out of order, expected {self._next_seq}"
            )
        if chunk.seq >= self._info.num_chunks:
            raise InvalidArgumentError(
                f"chunk seq {chunk.seq} is beyond num_chunks={self._info.num_chunks} of the header"
            )
        if len(chunk.data) > MAX_CHUNK_BYTES:
            raise TooLargeError(
                f"chunk {chunk.seq} holds {len(chunk.data)} bytes, over {MAX_CHUNK_BYTES}"
            )
        if len(chunk.data) == 0:
            raise InvalidArgumentError(f"chunk {chunk.seq} is empty")
        if crc32(chunk.data) != chunk.crc32:
            raise CorruptPayloadError(f"chunk {chunk.seq} failed its CRC-32 check")
        if self._received_bytes + len(chunk.data) > self._info.total_bytes:
            raise CorruptPayloadError(
                f"chunk {chunk.seq} carries bytes past the announced {self._info.total_bytes}"
            )
        self._hash.update(chunk.data)
        if self._buffer is not None:
            self._buffer += chunk.data
        else:
            assert self._sink is not None
            self._sink.write(chunk.data)
        self._received_bytes += len(chunk.data)
        self._next_seq += 1

    def finish(self) -> bytes:
        """Check completeness and the SHA-256; return the payload (empty when using a sink)."""
        if (
            self._next_seq != self._info.num_chunks
            or self._received_bytes != self._info.total_bytes
        ):
            raise TruncatedPayloadError(
                f"payload truncated: got {self._next_seq}/{self._info.num_chunks} chunks, "
                f"{self._received_bytes}/{self._info.total_bytes} bytes"
            )
        if self._hash.digest() != self._info.sha256:
            raise CorruptPayloadError("payload SHA-256 does not match its header")
        return bytes(self._buffer) if self._buffer is not None else b""


def check_inline_payload(data: bytes, sha256: bytes, *, max_total_bytes: int) -> bytes:
    """Return ``data``, a payload sent whole inside a message, after checking its digest."""
    if len(data) > max_total_bytes:
        raise TooLargeError(f"inline payload of {len(data)} bytes exceeds {max_total_bytes}")
    if hashlib.sha256(data).digest() != sha256:
        raise CorruptPayloadError("inline payload SHA-256 does not match its message")
    return data
