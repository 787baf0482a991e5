"""Checks an update must pass before it may reach an aggregate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt.codec import dtype_name
from fedprompt.errors import NonFiniteError, ShapeMismatchError
from fedprompt_coordinator.domain import TensorSpec


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
        if max_l2_norm is not None and norm > max_l2_norm:
            raise ShapeMismatchError(
                f"tensor {name!r} has L2 norm {norm:.4g}, over the bound {max_l2_norm:.4g}"
            )
