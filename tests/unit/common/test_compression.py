"""Tests of the optional fp16 / int8 upload compression."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedprompt.codec import decode_tensors, encode_tensors, read_metadata
from fedprompt.compression import (
    INT8_BLOCK,
    METADATA_KEY,
    SHAPES_KEY,
    Compression,
    compress_tensors,
    decompress_tensors,
)
from fedprompt.errors import InvalidArgumentError


def _delta() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "prompt.global": rng.standard_normal((8, 384)).astype(np.float32) * 0.01,
        "head.bias": rng.standard_normal(7).astype(np.float32),  # not a block multiple
        "steps": np.array([3], dtype=np.int64),
    }


def _round_trip(method: Compression) -> tuple[dict[str, np.ndarray], int]:
    packed, meta = compress_tensors(_delta(), method)
    payload = encode_tensors(packed, metadata=meta)
    return decompress_tensors(decode_tensors(payload), read_metadata(payload)), len(payload)


def test_none_is_the_identity_and_adds_no_metadata() -> None:
    packed, meta = compress_tensors(_delta(), "none")
    assert meta == {}
    assert decompress_tensors(packed, meta).keys() == _delta().keys()


@pytest.mark.parametrize(("method", "ratio"), [(Compression.FP16, 0.55), (Compression.INT8, 0.35)])
def test_compressed_updates_restore_float32_shapes_within_the_error_bound(
    method: Compression, ratio: float
) -> None:
    original = _delta()
    restored, size = _round_trip(method)
    full = len(encode_tensors(original))
    assert size < ratio * full
    assert sorted(restored) == sorted(original)
    for name, arr in original.items():
        got = restored[name]
        assert got.shape == arr.shape and got.dtype == arr.dtype
        if arr.dtype == np.int64:
            np.testing.assert_array_equal(got, arr)
        elif method is Compression.FP16:
            np.testing.assert_allclose(got, arr, rtol=1e-3, atol=1e-7)
        else:  # at most half a quantisation step per value
            step = np.abs(arr).max() / 127.0
            assert np.abs(got - arr).max() <= step / 2 + 1e-9


def test_int8_of_zeros_is_exact() -> None:
    packed, meta = compress_tensors({"z": np.zeros((3, 5), np.float32)}, "int8")
    np.testing.assert_array_equal(decompress_tensors(packed, meta)["z"], np.zeros((3, 5)))


@pytest.mark.parametrize(
    "tamper",
    ["unknown-method", "bad-shapes-json", "missing-scales", "wrong-shape", "orphan-scales"],
)
def test_tampered_int8_payloads_are_invalid_argument(tamper: str) -> None:
    packed, meta = compress_tensors({"x": np.ones(300, np.float32)}, "int8")
    if tamper == "unknown-method":
        meta[METADATA_KEY] = "zstd"
    elif tamper == "bad-shapes-json":
        meta[SHAPES_KEY] = "{not json"
    elif tamper == "missing-scales":
        del packed["x.__scales"]
    elif tamper == "wrong-shape":
        meta[SHAPES_KEY] = json.dumps({"x": [300 + INT8_BLOCK]})
    else:
        packed["y.__scales"] = np.ones(1, np.float32)
    with pytest.raises(InvalidArgumentError):
        decompress_tensors(packed, meta)


def test_reserved_scale_names_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="reserved"):
        compress_tensors({"a.__scales": np.ones(2, np.float32)}, "int8")
