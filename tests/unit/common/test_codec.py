"""Tests of the safetensors tensor codec."""

from __future__ import annotations

import json
import struct

import grpc
import ml_dtypes
import numpy as np
import pytest

from fedprompt.codec import (
    NUMPY_DTYPES,
    decode_tensors,
    dtype_name,
    encode_tensors,
    read_metadata,
)
from fedprompt.errors import InvalidArgumentError


def _header(payload: bytes) -> dict:
    (length,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8 : 8 + length])


def _raw_payload(header: dict, data: bytes) -> bytes:
    """A hand-built safetensors payload (header JSON padded to 8 bytes, then data)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _sample(dtype: np.dtype) -> np.ndarray:
    """Every bit pattern the dtype has (up to 4096 of them), as a 2-D array."""
    if dtype == np.bool_:
        return np.array([[True, False, True], [False, False, True]])
    rng = np.random.default_rng(7)
    if dtype.itemsize == 1:
        bits = np.arange(256, dtype=np.uint8)
    else:
        bits = rng.integers(0, 256, size=4096 * dtype.itemsize, dtype=np.uint8)
    return bits.view(dtype).reshape(16, -1)


@pytest.mark.parametrize("name", sorted(NUMPY_DTYPES))
def test_every_dtype_round_trips_bit_exact(name: str) -> None:
    dtype = NUMPY_DTYPES[name]
    array = _sample(dtype)
    payload = encode_tensors({"t": array})
    assert _header(payload)["t"]["dtype"] == name
    assert _header(payload)["t"]["shape"] == list(array.shape)
    decoded = decode_tensors(payload)["t"]
    assert decoded.dtype == dtype
    assert decoded.shape == array.shape
    # Bit-exact, NaN payloads included (comparing values would treat NaN != NaN).
    assert decoded.tobytes() == array.tobytes()
    assert dtype_name(decoded) == name


def test_bf16_and_f8_values_survive() -> None:
    bf16 = np.array([1.0, -2.5, 3.140625, np.inf, -0.0], dtype=ml_dtypes.bfloat16)
    e4m3 = np.array([0.5, -448.0, 0.001953125], dtype=ml_dtypes.float8_e4m3fn)
    e5m2 = np.array([57344.0, -1.5, 2.0**-16], dtype=ml_dtypes.float8_e5m2)
    out = decode_tensors(encode_tensors({"b": bf16, "e4": e4m3, "e5": e5m2}))
    assert out["b"].astype(np.float64).tolist() == [1.0, -2.5, 3.140625, np.inf, -0.0]
    assert np.signbit(out["b"][-1].astype(np.float64))
    assert out["e4"].astype(np.float64).tolist() == [0.5, -448.0, 0.001953125]
    assert out["e5"].astype(np.float64).tolist() == [57344.0, -1.5, 2.0**-16]


def test_several_tensors_keep_names_and_values() -> None:
    tensors = {
        "prompt.global": np.arange(6, dtype=np.float32).reshape(2, 3),
        "prompt.cluster": np.full((1, 4), -1.5, dtype=np.float16),
        "head.bias": np.array([7, 8], dtype=np.int64),
    }
    out = decode_tensors(encode_tensors(tensors))
    assert sorted(out) == sorted(tensors)
    for key, value in tensors.items():
        assert out[key].dtype == value.dtype
        np.testing.assert_array_equal(out[key], value)


def test_zero_dimensional_array_stays_zero_dimensional() -> None:
    out = decode_tensors(encode_tensors({"scalar": np.array(3.5, dtype=np.float32)}))
    assert out["scalar"].shape == ()
    assert out["scalar"].dtype == np.float32
    assert float(out["scalar"]) == 3.5


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0, 2)])
def test_empty_arrays_keep_their_shape(shape: tuple[int, ...]) -> None:
    out = decode_tensors(encode_tensors({"empty": np.zeros(shape, dtype=np.float32)}))
    assert out["empty"].shape == shape
    assert out["empty"].dtype == np.float32


def test_no_tensors_round_trips_to_an_empty_dict() -> None:
    assert decode_tensors(encode_tensors({})) == {}


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i8", ">u2", ">f2"])
def test_big_endian_input_is_written_little_endian(dtype: str) -> None:
    big = np.arange(-3, 9).astype(dtype).reshape(3, 4)
    payload = encode_tensors({"x": big})
    little = big.astype(np.dtype(dtype).newbyteorder("<"))
    # The data section holds exactly the little-endian bytes.
    assert payload.endswith(little.tobytes())
    out = decode_tensors(payload)["x"]
    assert out.dtype.byteorder in ("=", "<", "|")
    np.testing.assert_array_equal(out, big)


def test_non_contiguous_input_is_encoded_by_value() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = base[:, ::2]
    out = decode_tensors(encode_tensors({"v": view, "t": base.T}))
    np.testing.assert_array_equal(out["v"], [[0, 2], [4, 6], [8, 10]])
    np.testing.assert_array_equal(out["t"], base.T)


def test_metadata_round_trips_and_does_not_disturb_tensors() -> None:
    payload = encode_tensors(
        {"x": np.ones(2, dtype=np.float32)}, metadata={"round": "3", "kind": "delta"}
    )
    assert read_metadata(payload) == {"round": "3", "kind": "delta"}
    np.testing.assert_array_equal(decode_tensors(payload)["x"], [1.0, 1.0])


def test_payload_without_metadata_has_empty_metadata() -> None:
    assert read_metadata(encode_tensors({"x": np.zeros(1, dtype=np.uint8)})) == {}


def test_decoded_arrays_are_independent_of_later_encodes() -> None:
    source = np.zeros(3, dtype=np.float32)
    payload = encode_tensors({"x": source})
    source[:] = 9.0
    np.testing.assert_array_equal(decode_tensors(payload)["x"], [0.0, 0.0, 0.0])


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(2, dtype=np.complex64),
        np.array(["a", "b"]),
        np.array([object(), 1], dtype=object),
    ],
    ids=["complex64", "unicode", "object"],
)
def test_unsupported_dtype_is_refused_on_encode(array: np.ndarray) -> None:
    with pytest.raises(InvalidArgumentError, match="cannot travel") as info:
        encode_tensors({"x": array})
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


def test_unsupported_dtype_is_refused_on_decode() -> None:
    payload = _raw_payload({"x": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(InvalidArgumentError) as info:
        decode_tensors(payload)
    assert "C64" in info.value.message or "not valid safetensors" in info.value.message
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"garbage",
        b"\xff" * 8 + b"not a header",
        struct.pack("<Q", 4) + b"abcd",
        struct.pack("<Q", 2) + b"[]",
        bytes(range(256)) * 4,
    ],
    ids=["empty", "short", "huge-header-length", "not-json", "json-list", "noise"],
)
def test_garbage_bytes_are_invalid_argument(payload: bytes) -> None:
    with pytest.raises(InvalidArgumentError, match="not valid safetensors") as info:
        decode_tensors(payload)
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("cut", [1, 4, 40])
def test_truncated_payload_is_invalid_argument(cut: int) -> None:
    payload = encode_tensors({"x": np.arange(64, dtype=np.float32)})
    with pytest.raises(InvalidArgumentError):
        decode_tensors(payload[:-cut])


def test_truncated_inside_the_header_is_invalid_argument() -> None:
    payload = encode_tensors({"x": np.arange(64, dtype=np.float32)})
    with pytest.raises(InvalidArgumentError):
        decode_tensors(payload[:12])


def test_data_offsets_pointing_past_the_buffer_are_invalid_argument() -> None:
    payload = _raw_payload(
        {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8
    )
    with pytest.raises(InvalidArgumentError):
        decode_tensors(payload)


def test_shape_disagreeing_with_data_length_is_invalid_argument() -> None:
    payload = _raw_payload({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(InvalidArgumentError):
        decode_tensors(payload)


@pytest.mark.parametrize(
    "payload",
    [
        b"short",
        struct.pack("<Q", 1000) + b"{}",
        struct.pack("<Q", 4) + b"abcd",
        struct.pack("<Q", 2) + b"[]",
    ],
    ids=["short", "header-past-end", "not-json", "json-list"],
)
def test_read_metadata_refuses_garbage_with_invalid_argument(payload: bytes) -> None:
    with pytest.raises(InvalidArgumentError):
        read_metadata(payload)


# ----------------------------------------------------------------- zero-copy paths


def test_payloads_interoperate_with_the_safetensors_library() -> None:
    import safetensors

    tensors = {
        "b": np.arange(12, dtype=np.float32).reshape(3, 4),
        "a": np.arange(5, dtype=np.int64),
        "h": np.ones((2, 2), dtype=ml_dtypes.bfloat16),
    }
    ours = encode_tensors(tensors, metadata={"k": "v"})
    parsed = dict(safetensors.deserialize(ours))
    assert sorted(parsed) == ["a", "b", "h"]
    assert parsed["b"]["shape"] == [3, 4]
    assert bytes(parsed["b"]["data"]) == tensors["b"].tobytes()
    theirs = safetensors.serialize(
        {
            k: safetensors.TensorSpec(
                dtype=v.dtype.name, shape=v.shape, data_ptr=v.ctypes.data, data_len=v.nbytes
            )
            for k, v in tensors.items()
        }
    )
    decoded = decode_tensors(theirs)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(decoded[name], arr)


def test_decode_returns_views_of_the_payload_not_copies() -> None:
    payload = bytearray(encode_tensors({"x": np.zeros(4, dtype=np.float32)}))
    x = decode_tensors(payload)["x"]
    payload[-4:] = np.float32(5.0).tobytes()
    assert x[-1] == 5.0  # a view: callers copy what they keep beyond the buffer


def test_write_tensors_writes_exactly_the_encoded_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedprompt.codec import write_tensors

    tensors = {"w": np.arange(10, dtype=np.float16), "e": np.zeros((0, 3), dtype=np.float32)}
    path = tmp_path / "t.safetensors"
    with open(path, "wb") as fh:
        written = write_tensors(fh, tensors, metadata={"m": "1"})
    assert path.read_bytes() == encode_tensors(tensors, metadata={"m": "1"})
    assert written == path.stat().st_size


def test_decode_tensors_file_maps_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fedprompt.codec import decode_tensors_file

    path = tmp_path / "t.safetensors"
    arr = np.arange(1000, dtype=np.float32).reshape(10, 100)
    path.write_bytes(encode_tensors({"x": arr}))
    out = decode_tensors_file(path)
    np.testing.assert_array_equal(out["x"], arr)
    assert not out["x"].flags.writeable
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(InvalidArgumentError):
        decode_tensors_file(tmp_path / "empty")


@pytest.mark.parametrize(
    ("entries", "data_len"),
    [
        ({"a": [0, 8], "b": [4, 12]}, 12),  # overlap
        ({"a": [0, 4], "b": [8, 12]}, 12),  # hole
        ({"a": [0, 4]}, 8),  # trailing bytes
        ({"a": [4, 0]}, 4),  # reversed offsets
    ],
    ids=["overlap", "hole", "trailing", "reversed"],
)
def test_offsets_that_overlap_or_leave_holes_are_invalid_argument(
    entries: dict[str, list[int]], data_len: int
) -> None:
    header = {
        name: {"dtype": "F32", "shape": [(e - b) // 4 if e >= b else 1], "data_offsets": [b, e]}
        for name, (b, e) in entries.items()
    }
    with pytest.raises(InvalidArgumentError, match="not valid safetensors"):
        decode_tensors(_raw_payload(header, b"\0" * data_len))


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": "4", "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]},
        "not an object",
    ],
    ids=["negative-dim", "shape-string", "one-offset", "float-offsets", "not-object"],
)
def test_malformed_entries_are_invalid_argument(entry: object) -> None:
    with pytest.raises(InvalidArgumentError, match="not valid safetensors"):
        decode_tensors(_raw_payload({"x": entry}, b"\0" * 4))


def test_decode_payload_returns_tensors_and_metadata_from_one_parse() -> None:
    from fedprompt.codec import decode_payload

    payload = encode_tensors({"x": np.arange(3, dtype=np.float32)}, metadata={"kind": "delta"})
    tensors, metadata = decode_payload(payload)
    assert metadata == {"kind": "delta"} == read_metadata(payload)
    np.testing.assert_array_equal(tensors["x"], [0.0, 1.0, 2.0])


def test_metadata_that_is_not_an_object_is_invalid_argument() -> None:
    from fedprompt.codec import decode_payload

    with pytest.raises(InvalidArgumentError, match="__metadata__"):
        decode_payload(_raw_payload({"__metadata__": [1]}, b""))
