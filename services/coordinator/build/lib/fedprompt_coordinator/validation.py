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
        as_float = arr.astype(np.float64, copy=False)
        if not np.isfinite(as_float).all():
            raise NonFiniteError(f"tensor {name!r} contains NaN or infinity")
        if max_l2_norm is not None:
            norm = float(np.linalg.norm(as_float))
            if norm > max_l2_norm:
                raise ShapeMismatchError(
                    f"tensor {name!r} has L2 norm {norm:.4g}, over the bound {max_l2_norm:.4g}"
                )
