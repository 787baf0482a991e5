"""The one tensor codec: named numpy arrays <-> safetensors bytes.

Every dtype safetensors knows travels, bfloat16 included (numpy side: ``ml_dtypes``).
The format is safetensors' (an 8-byte header length, a JSON header, then the tensors'
bytes back to back); the bytes written here are read by the ``safetensors`` library and
the other way round. Encoding copies the data once (or not at all with
:func:`write_tensors`); decoding is zero-copy (numpy views of the payload or of a
memory-mapped file). Decoding validates the header and every offset and raises
:class:`~fedprompt.errors.InvalidArgumentError` for anything that is not a well-formed
safetensors payload.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, NamedTuple

import ml_dtypes
import numpy as np

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
#: Largest JSON header accepted (safetensors' own limit is 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024


def dtype_name(array: np.ndarray) -> str:
    """Return the safetensors dtype string of ``array`` (e.g. ``"BF16"``)."""
    try:
        return SAFETENSORS_DTYPES[array.dtype]
    except KeyError:
        raise InvalidArgumentError(f"dtype {array.dtype} cannot travel as safetensors") from None


def _prepared(tensors: Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """Arrays as they are written: C-contiguous, little-endian, travelable dtype."""
    out = []
    for name, array in tensors.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"tensor names must be strings, got {name!r}")
        if name == "__metadata__":  # the safetensors header reserves this key
            raise InvalidArgumentError("a tensor may not be named '__metadata__'")
        arr = np.require(array, requirements="C")  # keeps 0-d arrays 0-d
        if arr.dtype.byteorder == ">":
            arr = arr.byteswap().view(arr.dtype.newbyteorder("<"))
        dtype_name(arr)  # reject dtypes that cannot travel, with a clear error
        out.append((name, arr))
    return out


def _header(arrays: Sequence[tuple[str, np.ndarray]], metadata: Mapping[str, str] | None) -> bytes:
    """The 8-byte length plus the JSON header, padded with spaces to a multiple of 8."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, arr in arrays:
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)  # data starts 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(raw)) + raw


def _buffers(arrays: Sequence[tuple[str, np.ndarray]]) -> list[memoryview]:
    # ml_dtypes arrays do not export the buffer protocol: view every array as raw bytes
    return [memoryview(arr.reshape(-1).view(np.uint8)) for _, arr in arrays if arr.nbytes]  # type: ignore[arg-type]


def encode_tensors(
    tensors: Mapping[str, np.ndarray], *, metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialize named arrays to safetensors bytes (one copy of the data).

    Parameters
    ----------
    tensors
        Name -> array. Arrays are written little-endian and C-contiguous, in name order.
    metadata
        Optional string metadata stored in the safetensors header.
    """
    arrays = sorted(_prepared(tensors), key=lambda item: item[0])
    return b"".join([_header(arrays, metadata), *_buffers(arrays)])


def write_tensors(
    file: BinaryIO,
    tensors: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
) -> int:
    """Write the safetensors bytes of ``tensors`` to ``file`` without building them in memory.

    Returns the number of bytes written; the bytes equal :func:`encode_tensors`'s.
    """
    arrays = sorted(_prepared(tensors), key=lambda item: item[0])
    written = file.write(_header(arrays, metadata))
    for buf in _buffers(arrays):
        written += file.write(buf)
    return written


def _invalid(reason: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"payload is not valid safetensors: {reason}")


def _parse_header(view: memoryview) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors buffer and where its data starts."""
    if len(view) < 8:
        raise _invalid("shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", view[:8])
    if header_len > len(view) - 8 or header_len > MAX_HEADER_BYTES:
        raise _invalid(f"header length {header_len} exceeds the payload")
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _invalid("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _invalid("header is not a JSON object")
    return header, 8 + header_len


class DecodedPayload(NamedTuple):
    """A decoded safetensors payload: its arrays and its string metadata."""

    tensors: dict[str, np.ndarray]
    metadata: dict[str, str]


def _metadata_of(header: Mapping[str, Any]) -> dict[str, str]:
    """The ``__metadata__`` of a parsed header (empty when absent)."""
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise _invalid("its __metadata__ is not a JSON object")
    return {str(k): str(v) for k, v in meta.items()}


def decode_payload(payload: bytes | bytearray | memoryview | mmap.mmap) -> DecodedPayload:
    """Parse safetensors bytes into named numpy arrays and metadata, parsing the header once.

    The arrays are views of ``payload`` (read-only when ``payload`` is ``bytes``); copy them
    to keep them beyond a mutable buffer's life. bfloat16 and float8 use ``ml_dtypes``.

    Raises
    ------
    InvalidArgumentError
        When the bytes are not a valid safetensors payload (bad header or metadata, unknown
        dtype, offsets that overlap, leave holes, disagree with the shape or pass the end).
    """
    view = memoryview(payload).cast("B")
    header, data_start = _parse_header(view)
    metadata = _metadata_of(header)
    data_len = len(view) - data_start
    entries = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _invalid(f"entry {name!r} is not an object")
        dtype = NUMPY_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
        if dtype is None:
            raise _invalid(f"tensor {name!r} has unsupported dtype {entry.get('dtype')}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
        ):
            raise _invalid(f"tensor {name!r} has a malformed shape or data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_len:
            raise _invalid(f"tensor {name!r} data_offsets {offsets} lie outside the data")
        count = math.prod(shape)
        if count * dtype.itemsize != end - begin:
            raise _invalid(f"tensor {name!r} of shape {shape} does not fit {end - begin} bytes")
        entries.append((begin, end, name, dtype, tuple(shape), count))
    entries.sort(key=lambda e: (e[0], e[1]))
    position = 0
    for begin, end, name, *_ in entries:
        if begin != position:
            raise _invalid(f"tensor {name!r} overlaps another or leaves a hole in the data")
        position = end
    if position != data_len:
        raise _invalid(f"{data_len - position} bytes after the last tensor")
    tensors: dict[str, np.ndarray] = {}
    for begin, _end, name, dtype, shape, count in entries:
        tensors[name] = np.frombuffer(
            view, dtype=dtype, count=count, offset=data_start + begin
        ).reshape(shape)
    return DecodedPayload(tensors, metadata)


def decode_tensors(payload: bytes | bytearray | memoryview | mmap.mmap) -> dict[str, np.ndarray]:
    """The arrays of a safetensors payload (zero-copy views; see :func:`decode_payload`)."""
    return decode_payload(payload).tensors


def decode_payload_file(path: str | os.PathLike[str]) -> DecodedPayload:
    """Memory-map a safetensors file and return read-only array views of it and its metadata.

    The pages are read on demand and belong to the page cache, so a large file costs
    address space, not heap; the mapping lives as long as any returned array does.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise _invalid("the file is empty")
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return decode_payload(mapped)


def decode_tensors_file(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file, memory-mapped (see :func:`decode_payload_file`)."""
    return decode_payload_file(path).tensors


def read_metadata(payload: bytes) -> dict[str, str]:
    """Return the string metadata of a safetensors payload's header (its data may be absent)."""
    header, _ = _parse_header(memoryview(payload).cast("B"))
    return _metadata_of(header)


__all__ = [
    "CONTENT_TYPE",
    "NUMPY_DTYPES",
    "DecodedPayload",
    "decode_payload",
    "decode_payload_file",
    "decode_tensors",
    "decode_tensors_file",
    "dtype_name",
    "encode_tensors",
    "read_metadata",
    "write_tensors",
]
