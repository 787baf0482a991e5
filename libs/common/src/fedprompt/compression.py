"""Optional lossy compression of uploaded deltas: fp16, or int8 with one scale per block.

A compressed update is still one safetensors payload; its header metadata says how it was
compressed, and :func:`decompress_tensors` turns it back into the float32 tensors the
round expects (the coordinator does this before validation and aggregation):

* ``fp16``: every float tensor travels as F16 (half the bytes; relative error ~5e-4).
* ``int8``: every float tensor is flattened into blocks of :data:`INT8_BLOCK` values;
  each block travels as I8 values ``round(x / s)`` with ``s = max|x| / 127`` and its F32
  scale ``s`` in a companion tensor ``<name>.__scales`` (about a quarter of the bytes;
  absolute error at most ``s / 2`` per value). Original shapes are in the metadata.

Non-float tensors travel unchanged.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping

import numpy as np

from fedprompt.errors import InvalidArgumentError

#: safetensors metadata key naming the compression of a payload.
METADATA_KEY = "fedprompt.compression"
#: metadata key of the original shapes of int8-compressed tensors (JSON object).
SHAPES_KEY = "fedprompt.shapes"
#: Values sharing one int8 scale.
INT8_BLOCK = 256
SCALES_SUFFIX = ".__scales"


class Compression(enum.StrEnum):
    """How a client compresses the deltas it uploads."""

    NONE = "none"
    FP16 = "fp16"
    INT8 = "int8"


def compress_tensors(
    tensors: Mapping[str, np.ndarray], method: Compression | str
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Compress float tensors; returns the tensors to encode and the header metadata."""
    method = Compression(method)
    if method is Compression.NONE:
        return dict(tensors), {}
    out: dict[str, np.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    for name, array in tensors.items():
        arr = np.asarray(array)
        if not np.issubdtype(arr.dtype, np.floating):
            out[name] = arr
            continue
        if name.endswith(SCALES_SUFFIX):
            raise InvalidArgumentError(f"tensor name {name!r} is reserved for int8 scales")
        if method is Compression.FP16:
            out[name] = arr.astype(np.float16)
            continue
        flat = arr.astype(np.float32).reshape(-1)
        blocks = math.ceil(flat.size / INT8_BLOCK)
        padded = np.zeros((blocks, INT8_BLOCK), dtype=np.float32)
        padded.reshape(-1)[: flat.size] = flat
        scales = np.abs(padded).max(axis=1) / 127.0
        safe = np.where(scales > 0, scales, 1.0).astype(np.float32)
        out[name] = np.clip(np.rint(padded / safe[:, None]), -127, 127).astype(np.int8)
        out[name + SCALES_SUFFIX] = scales.astype(np.float32)
        shapes[name] = list(arr.shape)
    meta = {METADATA_KEY: method.value}
    if shapes:
        meta[SHAPES_KEY] = json.dumps(shapes, sort_keys=True)
    return out, meta


def decompress_tensors(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> dict[str, np.ndarray]:
    """Undo :func:`compress_tensors`: float32 tensors of the original shapes.

    Payloads without compression metadata are returned unchanged.

    Raises
    ------
    InvalidArgumentError
        For an unknown method or int8 tensors whose scales or shapes do not fit.
    """
    name = metadata.get(METADATA_KEY)
    if name is None or name == Compression.NONE.value:
        return dict(tensors)
    try:
        method = Compression(name)
    except ValueError:
        raise InvalidArgumentError(f"unknown update compression {name!r}") from None
    if method is Compression.FP16:
        return {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in tensors.items()}
    try:
        shapes = json.loads(metadata.get(SHAPES_KEY, "{}"))
    except json.JSONDecodeError:
        raise InvalidArgumentError("int8 update has malformed shape metadata") from None
    if not isinstance(shapes, dict):
        raise InvalidArgumentError("int8 update has malformed shape metadata")
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if key.endswith(SCALES_SUFFIX):
            if key.removesuffix(SCALES_SUFFIX) not in shapes:
                raise InvalidArgumentError(f"int8 scales {key!r} belong to no tensor")
            continue
        if key not in shapes:
            out[key] = value
            continue
        shape = shapes[key]
        scales = tensors.get(key + SCALES_SUFFIX)
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and d >= 0 for d in shape)
            or scales is None
            or value.dtype != np.int8
            or value.ndim != 2
            or value.shape[1] != INT8_BLOCK
            or scales.shape != (value.shape[0],)
            or value.shape[0] != math.ceil(math.prod(shape) / INT8_BLOCK)
        ):
            raise InvalidArgumentError(f"int8 tensor {key!r} does not fit its scales or shape")
        restored = value.astype(np.float32) * scales.astype(np.float32)[:, None]
        out[key] = restored.reshape(-1)[: math.prod(shape)].reshape(shape)
    return out
