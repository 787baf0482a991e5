"""The one tensor codec: named numpy arrays <-> safetensors bytes.

Every dtype safetensors knows travels, bfloat16 included (numpy side: ``ml_dtypes``).
Decoding validates the bytes and raises :class:`~fedprompt.errors.InvalidArgumentError`
for anything that is not a well-formed safetensors payload.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
import safetensors

from fedprompt.errors import InvalidArgumentError

#: safetensors dtype string -> numpy dtype.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "U64": np.dtype(np.uint64),
    "I32": np.dtype(np.int32),
    "U32": np.dtype(np.uint32),
    "I16": np.dtype(np.int16),
    "U16": np.dtype(np.uint16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
SAFETENSORS_DTYPES: dict[np.dtype, str] = {v: k for k, v in NUMPY_DTYPES.items()}
CONTENT_TYPE = "application/safetensors"


def dtype_name(array: np.ndarray) -> str:
    """Return the safetensors dtype string of ``array`` (e.g. ``"BF16"``)."""
    try:
        return SAFETENSORS_DTYPES[array.dtype]
    except KeyError:
        raise InvalidArgumentError(f"dtype {array.dtype} cannot travel as safetensors") from None


def encode_tensors(
    tensors: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialize named arrays to safetensors bytes.

    Parameters
    ----------
    tensors
        Name -> array. Arrays are written little-endian and C-contiguous.
    metadata
        Optional string metadata stored in the safetensors header.
    """
    flat: dict[str, safetensors.TensorSpec] = {}
    keep_alive: list[np.ndarray] = []  # safetensors reads raw pointers: keep the arrays alive
    for name, array in tensors.items():
        arr = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
        if arr.dtype.byteorder == ">":
            arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
        dtype_name(arr)  # reject dtypes that cannot travel, with a clear error
        keep_alive.append(arr)
        flat[name] = safetensors.TensorSpec(
            dtype=arr.dtype.name, shape=arr.shape, data_ptr=arr.ctypes.data, data_len=arr.nbytes
        )
    out: bytes = safetensors.serialize(flat, metadata=dict(metadata) if metadata else None)
    del keep_alive
    return out


def decode_tensors(payload: bytes | bytearray | memoryview) -> dict[str, np.ndarray]:
    """Parse safetensors bytes into named numpy arrays (bfloat16 via ``ml_dtypes``).

    Raises
    ------
    InvalidArgumentError
        When the bytes are not a valid safetensors payload or hold an unknown dtype.
    """
    try:
        # safetensors ships no annotation for deserialize: [(name, {dtype, shape, data})].
        views: list[tuple[str, dict[str, Any]]] = safetensors.deserialize(  # type: ignore[no-untyped-call]
            bytes(payload)
        )
    except Exception as exc:  # noqa: BLE001 - safetensors raises several error types
        raise InvalidArgumentError(f"payload is not valid safetensors: {exc}") from None
    result: dict[str, np.ndarray] = {}
    for name, view in views:
        dtype = NUMPY_DTYPES.get(view["dtype"])
        if dtype is None:
            raise InvalidArgumentError(f"tensor {name!r} has unsupported dtype {view['dtype']}")
        result[name] = np.frombuffer(view["data"], dtype=dtype).reshape(view["shape"])
    return result


def read_metadata(payload: bytes) -> dict[str, str]:
    """Return the string metadata of a safetensors payload's header."""
    import json
    import struct

    if len(payload) < 8:
        raise InvalidArgumentError("payload is too short to be safetensors")
    (header_len,) = struct.unpack("<Q", payload[:8])
    if header_len > len(payload) - 8:
        raise InvalidArgumentError("safetensors header length exceeds the payload")
    try:
        header = json.loads(payload[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidArgumentError("safetensors header is not valid JSON") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise InvalidArgumentError("safetensors header must be a JSON object with object metadata")
    return {str(k): str(v) for k, v in meta.items()}


__all__ = [
    "CONTENT_TYPE",
    "NUMPY_DTYPES",
    "decode_tensors",
    "dtype_name",
    "encode_tensors",
    "read_metadata",
]
