"""A model as ``FetchModel`` sends it: serialized response messages, made once per round.

Every participant of a cluster downloads the same model, so its ``FetchModelResponse``
messages (the header with the payload's size and SHA-256, then chunks with their CRC-32)
are serialized once, off the event loop, and the same bytes are sent to every reader; the
servicer registers ``FetchModel`` without a response serializer (like uploads, which
clients send pre-serialized).

The messages are written straight from the arrays (:func:`fedprompt.codec.write_tensors`),
chunk by chunk: the safetensors payload is never built whole unless it is small enough to
travel inline in a task. Models over ``spill_bytes`` keep their messages in a file (each
reader reads one message at a time), so a round holds no in-memory copy of what clients
download; smaller ones keep them in memory.

:meth:`EncodedModel.close` deletes the file; a reader still streaming the model then ends
with ``WrongRoundError`` (``FAILED_PRECONDITION``) at its next message.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from fedprompt.chunking import ChunkAssembler, ChunkData, PayloadInfo, crc32
from fedprompt.codec import encode_tensors, write_tensors
from fedprompt.errors import WrongRoundError
from fedprompt.server import MAX_CHUNK_BYTES
from fedprompt.transfer import (
    chunk_from_proto,
    chunk_message_bytes,
    payload_header_to_proto,
    payload_info_from_proto,
)
from fedprompt.v1 import coordinator_pb2


class _ChunkWriter:
    """A binary sink that cuts what is written into chunks and serializes each as a message.

    Full chunks of a large array are cut straight from it (one copy: into the message);
    only the pieces that straddle two writes go through a buffer.
    """

    def __init__(self, emit: Callable[[bytes], None], chunk_size: int) -> None:
        self._emit = emit
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._seq = 0
        self._sha256 = hashlib.sha256()
        self.total_bytes = 0

    def _chunk(self, data: memoryview) -> None:
        message = chunk_message_bytes(ChunkData(seq=self._seq, data=data, crc32=crc32(data)))
        self._emit(message)
        self._seq += 1

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self._sha256.update(view)
        self.total_bytes += n
        pos = 0
        while pos < n:
            take = min(self._chunk_size - len(self._buffer), n - pos)
            if not self._buffer and take == self._chunk_size:
                self._chunk(view[pos : pos + take])
            else:
                self._buffer += view[pos : pos + take]
                if len(self._buffer) == self._chunk_size:
                    self._flush()
            pos += take
        return n

    def _flush(self) -> None:
        with memoryview(self._buffer) as buffered:
            self._chunk(buffered)
        self._buffer.clear()

    def finish(self) -> PayloadInfo:
        """Emit the last partial chunk; the payload's size, chunk count and SHA-256."""
        if self._buffer:
            self._flush()
        return PayloadInfo(
            total_bytes=self.total_bytes, num_chunks=self._seq, sha256=self._sha256.digest()
        )


class EncodedModel:
    """The serialized ``FetchModelResponse`` messages of one model: a header, then chunks.

    Made by :func:`encode_model`. ``payload`` holds the safetensors bytes only for models
    small enough to travel inline; ``path`` names the file of a file-backed model.
    """

    def __init__(
        self,
        info: PayloadInfo,
        *,
        payload: bytes | None,
        chunks: list[bytes] | None = None,
        path: Path | None = None,
        offsets: list[int] | None = None,
    ) -> None:
        self.info = info
        self.payload = payload
        self.path = path
        self._header = coordinator_pb2.FetchModelResponse(
            header=payload_header_to_proto(info)
        ).SerializeToString()
        self._chunks = chunks
        self._offsets = offsets
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether the model was dropped (its round moved on)."""
        return self._closed

    @property
    def wire_bytes(self) -> int:
        """Bytes of all messages (without gRPC's prefixes)."""
        if self._chunks is not None:
            return len(self._header) + sum(len(c) for c in self._chunks)
        assert self._offsets is not None
        return len(self._header) + self._offsets[-1]

    def _check_open(self) -> None:
        if self._closed:
            raise WrongRoundError("the round of this model download has moved on")

    def messages(self) -> Iterator[bytes]:
        """The serialized messages, header first; raises ``WrongRoundError`` once closed."""
        self._check_open()
        chunks = self._chunks
        if chunks is not None:
            yield self._header
            for chunk in chunks:
                self._check_open()
                yield chunk
            return
        assert self.path is not None and self._offsets is not None
        try:  # the reader's own descriptor: close() may unlink the file under it
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self._check_open()
            raise
        try:
            yield self._header
            for start, end in zip(self._offsets, self._offsets[1:], strict=False):
                self._check_open()
                yield os.pread(fd, end - start, start)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Drop the messages (and delete their file); later reads raise ``WrongRoundError``."""
        self._closed = True
        self._chunks = None if self._chunks is None else []
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _estimated_bytes(tensors: Mapping[str, np.ndarray]) -> int:
    return sum(int(np.asarray(t).nbytes) for t in tensors.values())


def encode_model(
    tensors: Mapping[str, np.ndarray],
    *,
    keep_payload_bytes: int,
    spill_bytes: int,
    spill_dir: Path | None,
    chunk_size: int = MAX_CHUNK_BYTES,
) -> EncodedModel:
    """Serialize the ``FetchModel`` messages of ``tensors`` once.

    Parameters
    ----------
    tensors
        The model (encoded as :func:`fedprompt.codec.encode_tensors` would).
    keep_payload_bytes
        Models whose data is at most this many bytes also keep their safetensors payload
        (to travel inline in a task).
    spill_bytes
        Models whose data is over this many bytes keep their messages in a file under
        ``spill_dir`` (when given) instead of memory.
    chunk_size
        Payload bytes per chunk message.
    """
    size = _estimated_bytes(tensors)
    payload = encode_tensors(tensors) if size <= keep_payload_bytes else None
    if spill_dir is None or size <= spill_bytes:
        chunks: list[bytes] = []
        writer = _ChunkWriter(chunks.append, chunk_size)
        if payload is not None:
            writer.write(payload)
        else:
            write_tensors(writer, tensors)  # type: ignore[arg-type]  # has write()
        return EncodedModel(writer.finish(), payload=payload, chunks=chunks)
    spill_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="fetch-", suffix=".messages", dir=spill_dir)
    path = Path(name)
    try:
        offsets = [0]
        with os.fdopen(fd, "wb") as fh:

            def emit(message: bytes) -> None:
                fh.write(message)
                offsets.append(offsets[-1] + len(message))

            writer = _ChunkWriter(emit, chunk_size)
            write_tensors(writer, tensors)  # type: ignore[arg-type]  # has write()
            info = writer.finish()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return EncodedModel(info, payload=payload, path=path, offsets=offsets)


def assemble(messages: Iterable[bytes], *, max_total_bytes: int = 1 << 40) -> bytes:
    """The payload of serialized ``FetchModelResponse`` messages, checked like a client does."""
    assembler: ChunkAssembler | None = None
    for raw in messages:
        message = coordinator_pb2.FetchModelResponse.FromString(raw)
        if message.WhichOneof("message") == "header":
            assembler = ChunkAssembler(
                payload_info_from_proto(message.header), max_total_bytes=max_total_bytes
            )
        else:
            assert assembler is not None, "a chunk before the header"
            assembler.add(chunk_from_proto(message.chunk))
    assert assembler is not None, "no header"
    return assembler.finish()
