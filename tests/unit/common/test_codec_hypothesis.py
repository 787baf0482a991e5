"""Property tests (hypothesis) of the tensor codec and the chunk assembler.

Thousands of generated inputs each: well-formed payloads round-trip bit for bit; arbitrary or
mutated bytes are refused with a coded error and nothing else (no crash, no other exception).
"""

from __future__ import annotations

import contextlib
import hashlib

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedprompt.chunking import ChunkAssembler, ChunkData, crc32, describe_payload, split_payload
from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.errors import FedPromptError, InvalidArgumentError
from fedprompt.server import MAX_CHUNK_BYTES

MANY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = [
    np.dtype(np.float32),
    np.dtype(np.float16),
    np.dtype(np.float64),
    np.dtype(np.int64),
    np.dtype(np.int8),
    np.dtype(np.uint8),
    np.dtype(np.bool_),
]
names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=24
)
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """An array of any travelling dtype and a small shape, its bytes drawn at random."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes)
    n = int(np.prod(shape, dtype=np.int64))
    raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    if dtype == np.bool_:
        raw = bytes(b & 1 for b in raw)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


tensor_dicts = st.dictionaries(names.filter(lambda n: n != "__metadata__"), arrays(), max_size=5)


@MANY
@given(tensor_dicts)
def test_encode_decode_round_trips_bit_for_bit(tensors: dict[str, np.ndarray]) -> None:
    decoded = decode_tensors(encode_tensors(tensors))
    assert set(decoded) == set(tensors)
    for name, arr in tensors.items():
        assert decoded[name].dtype == arr.dtype
        assert decoded[name].shape == arr.shape
        assert decoded[name].tobytes() == np.ascontiguousarray(arr).tobytes()


@MANY
@given(st.lists(st.floats(width=32, allow_nan=True), min_size=0, max_size=40))
def test_bfloat16_round_trips(values: list[float]) -> None:
    arr = np.array(values, dtype=np.float32).astype(ml_dtypes.bfloat16)
    out = decode_tensors(encode_tensors({"x": arr}))["x"]
    assert out.dtype == arr.dtype and out.tobytes() == arr.tobytes()


def test_the_reserved_header_key_cannot_name_a_tensor() -> None:
    # found by the round-trip property: it used to encode into an unreadable payload
    with pytest.raises(InvalidArgumentError, match="__metadata__"):
        encode_tensors({"__metadata__": np.zeros(1, np.float32)})


@MANY
@given(st.binary(max_size=512))
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    with contextlib.suppress(InvalidArgumentError):
        decode_tensors(data)


@MANY
@given(tensor_dicts, st.data())
def test_mutated_payloads_decode_or_are_refused(
    tensors: dict[str, np.ndarray], data: st.DataObject
) -> None:
    payload = bytearray(encode_tensors(tensors))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    with contextlib.suppress(InvalidArgumentError):
        decode_tensors(bytes(payload[:cut]))


@MANY
@given(st.binary(min_size=0, max_size=4096), st.integers(1, 700))
def test_chunks_reassemble_to_the_payload(payload: bytes, chunk_size: int) -> None:
    # the header is built for the wire's chunk size; any smaller split is announced honestly
    chunks = list(split_payload(payload, chunk_size=chunk_size))
    info = describe_payload(payload, chunk_size=chunk_size)
    assembler = ChunkAssembler(info, max_total_bytes=len(payload))
    for chunk in chunks:
        assembler.add(chunk)
    assert assembler.finish() == payload
    assert assembler.received_bytes == len(payload)


@MANY
@given(st.binary(min_size=1, max_size=2048), st.integers(1, 300), st.data())
def test_a_flipped_byte_never_gets_through(
    payload: bytes, chunk_size: int, data: st.DataObject
) -> None:
    chunks = list(split_payload(payload, chunk_size=chunk_size))
    info = describe_payload(payload, chunk_size=chunk_size)
    k = data.draw(st.integers(0, len(chunks) - 1))
    victim = bytearray(chunks[k].data)
    i = data.draw(st.integers(0, len(victim) - 1))
    victim[i] ^= data.draw(st.integers(1, 255))
    keep_crc = data.draw(st.booleans())  # an attacker may also recompute the CRC
    crc = chunks[k].crc32 if keep_crc else crc32(bytes(victim))
    chunks[k] = ChunkData(seq=k, data=memoryview(bytes(victim)), crc32=crc)
    assembler = ChunkAssembler(info, max_total_bytes=len(payload))
    try:
        for chunk in chunks:
            assembler.add(chunk)
        assembler.finish()
    except FedPromptError as exc:
        assert exc.status_code.name == "DATA_LOSS"
    else:
        raise AssertionError("a modified payload was accepted")


@MANY
@given(
    st.integers(-5, 3 * MAX_CHUNK_BYTES),
    st.integers(-5, 10),
    st.binary(max_size=40),
    st.lists(
        st.tuples(st.integers(-2, 12), st.binary(max_size=64), st.integers(0, 2**32 - 1)),
        max_size=8,
    ),
)
def test_hostile_headers_and_chunks_only_raise_coded_errors(
    total: int, num_chunks: int, sha: bytes, chunks: list[tuple[int, bytes, int]]
) -> None:
    from fedprompt.chunking import PayloadInfo

    try:
        assembler = ChunkAssembler(
            PayloadInfo(total_bytes=total, num_chunks=num_chunks, sha256=sha),
            max_total_bytes=2 * MAX_CHUNK_BYTES,
        )
        for seq, body, crc in chunks:
            assembler.add(ChunkData(seq=seq, data=memoryview(body), crc32=crc))
        out = assembler.finish()
    except FedPromptError:
        return
    assert hashlib.sha256(out).digest() == sha
