"""Checks an update must pass before it may reach an aggregate.

Before any chunk is read, :func:`check_update_size` refuses an upload whose announced size
is over the configured limit or larger than the round's tensor spec can need; after
decoding, :func:`validate_update` checks names, dtypes and shapes against the spec, finite
values and the L2 norm bound. Each failure is a coded error with a message (see
:mod:`fedprompt.errors` for the status codes). The fields a client sends beside its tensors
(counts, metadata, metrics, names) are checked by :mod:`fedprompt.client_input`, the one
validator the coordinator and the clusterer share.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt.codec import NUMPY_DTYPES, dtype_name
from fedprompt.errors import (
    InvalidArgumentError,
    NonFiniteError,
    ShapeMismatchError,
    TooLargeError,
)
from fedprompt_coordinator.domain import TensorSpec

#: Bytes a safetensors header may take per tensor (JSON name, dtype, shape, offsets).
HEADER_BYTES_PER_TENSOR = 1024
#: Fixed allowance for the safetensors header (length prefix, metadata, padding).
HEADER_BYTES_FIXED = 8 * 1024


def spec_payload_bytes(spec: Sequence[TensorSpec]) -> int:
    """Bytes of tensor data an update matching ``spec`` holds."""
    total = 0
    for s in spec:
        dtype = NUMPY_DTYPES.get(s.dtype)
        if dtype is None:
            raise InvalidArgumentError(f"the round spec names an unknown dtype {s.dtype}")
        total += math.prod(s.shape) * dtype.itemsize
    return total


def check_update_size(
    total_bytes: int, spec: Sequence[TensorSpec], *, max_update_bytes: int
) -> None:
    """Refuse (``RESOURCE_EXHAUSTED``) an announced payload size no honest update has.

    Parameters
    ----------
    total_bytes
        Size the upload header announces.
    spec
        The round's tensor spec; empty when none is fixed yet (only the limit applies).
    max_update_bytes
        The configured limit of any update.
    """
    if total_bytes < 0:
        raise InvalidArgumentError("an upload cannot announce a negative size")
    if total_bytes > max_update_bytes:
        raise TooLargeError(
            f"update of {total_bytes} bytes exceeds the limit of {max_update_bytes} bytes"
        )
    if spec:
        bound = spec_payload_bytes(spec) + HEADER_BYTES_FIXED + HEADER_BYTES_PER_TENSOR * len(spec)
        if total_bytes > bound:
            raise TooLargeError(
                f"update of {total_bytes} bytes is larger than the round's tensors can be "
                f"({bound} bytes at most)"
            )


def spec_of(tensors: Mapping[str, np.ndarray]) -> tuple[TensorSpec, ...]:
    """The sorted tensor specs of a set of named arrays."""
    return tuple(
        TensorSpec(name=name, dtype=dtype_name(arr), shape=tuple(int(d) for d in arr.shape))
        for name, arr in sorted(tensors.items())
    )


#: Values checked at a time, so that a large (memory-mapped) update is never copied whole.
_CHECK_BLOCK = 1024 * 1024


def _finite_and_norm(arr: np.ndarray) -> tuple[bool, float]:
    """Whether every value is finite, and the L2 norm (float64), block by block."""
    flat = arr.reshape(-1)
    total = 0.0
    for start in range(0, flat.size, _CHECK_BLOCK):
        part = flat[start : start + _CHECK_BLOCK].astype(np.float64)
        if not np.isfinite(part).all():
            return False, float("nan")
        total += float(part @ part)
    return True, total**0.5


def validate_update(
    tensors: Mapping[str, np.ndarray],
    expected: Sequence[TensorSpec],
    *,
    max_l2_norm: float | None = None,
) -> None:
    """Raise a coded error unless ``tensors`` match ``expected`` exactly and are finite.

    Parameters
    ----------
    tensors
        The decoded update.
    expected
        The round's spec: every name must be present, none extra, dtype and shape equal.
    max_l2_norm
        Optional bound on the L2 norm of each tensor.
    """
    want = {s.name: s for s in expected}
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise ShapeMismatchError(
            f"update tensors do not match the round spec: missing {missing}, unexpected {extra}"
        )
    for name, arr in tensors.items():
        spec = want[name]
        got_dtype = dtype_name(arr)
        if got_dtype != spec.dtype:
            raise ShapeMismatchError(
                f"tensor {name!r} has dtype {got_dtype}, expected {spec.dtype}"
            )
        if tuple(arr.shape) != spec.shape:
            raise ShapeMismatchError(
                f"tensor {name!r} has shape {list(arr.shape)}, expected {list(spec.shape)}"
            )
        finite, norm = _finite_and_norm(arr)
        if not finite:
            raise NonFiniteError(f"tensor {name!r} contains NaN or infinity")
        if max_l2_norm is not None and not norm <= max_l2_norm:  # inf (overflow) too
            raise ShapeMismatchError(
                f"tensor {name!r} has L2 norm {norm:.4g}, over the bound {max_l2_norm:.4g}"
            )
