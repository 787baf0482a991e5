"""Lossless conversions between torch tensors and numpy arrays.

numpy has no native bfloat16 or float8 types; ``ml_dtypes`` provides them. Those
dtypes are moved between the two libraries as raw bit patterns (an integer view
of the same width), so every value, including NaN payloads, round-trips
bit-exactly. All other dtypes that torch and numpy share go through
``Tensor.numpy`` / ``torch.from_numpy`` directly.

Both functions always return a copy that owns its memory: the result never
aliases the input, so callers may mutate either side freely.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import torch

__all__ = ["numpy_to_torch", "supported_torch_dtypes", "torch_to_numpy"]

# torch dtype -> (numpy dtype on the numpy side, same-width integer dtype used for the bit view).
_BIT_VIEW_DTYPES: dict[torch.dtype, tuple[np.dtype[Any], torch.dtype]] = {
    torch.bfloat16: (np.dtype(ml_dtypes.bfloat16), torch.int16),
    torch.float8_e4m3fn: (np.dtype(ml_dtypes.float8_e4m3fn), torch.uint8),
    torch.float8_e4m3fnuz: (np.dtype(ml_dtypes.float8_e4m3fnuz), torch.uint8),
    torch.float8_e5m2: (np.dtype(ml_dtypes.float8_e5m2), torch.uint8),
    torch.float8_e5m2fnuz: (np.dtype(ml_dtypes.float8_e5m2fnuz), torch.uint8),
    torch.float8_e8m0fnu: (np.dtype(ml_dtypes.float8_e8m0fnu), torch.uint8),
}

# Integer dtypes used for the numpy-side view; they mirror the torch ones above.
_NUMPY_VIEW_OF_TORCH_INT: dict[torch.dtype, np.dtype[Any]] = {
    torch.int16: np.dtype(np.int16),
    torch.uint8: np.dtype(np.uint8),
}

_NATIVE_DTYPES: dict[torch.dtype, np.dtype[Any]] = {
    torch.bool: np.dtype(np.bool_),
    torch.uint8: np.dtype(np.uint8),
    torch.uint16: np.dtype(np.uint16),
    torch.uint32: np.dtype(np.uint32),
    torch.uint64: np.dtype(np.uint64),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.float16: np.dtype(np.float16),
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.complex64: np.dtype(np.complex64),
    torch.complex128: np.dtype(np.complex128),
}

_TORCH_OF_NUMPY: dict[np.dtype[Any], torch.dtype] = {
    **{np_dtype: t_dtype for t_dtype, np_dtype in _NATIVE_DTYPES.items()},
    **{np_dtype: t_dtype for t_dtype, (np_dtype, _) in _BIT_VIEW_DTYPES.items()},
}


def supported_torch_dtypes() -> tuple[torch.dtype, ...]:
    """List the torch dtypes that both conversion functions handle.

    Returns
    -------
    tuple of torch.dtype
        Native numpy dtypes first, then the ``ml_dtypes``-backed ones.
    """
    return (*_NATIVE_DTYPES, *_BIT_VIEW_DTYPES)


def torch_to_numpy(t: torch.Tensor) -> np.ndarray:
    """Copy a tensor into a numpy array of the equivalent dtype.

    Parameters
    ----------
    t : torch.Tensor
        Any tensor on any device; it is detached and copied to host memory.

    Returns
    -------
    numpy.ndarray
        A C-contiguous array that owns its data; bfloat16 and float8 tensors
        become ``ml_dtypes`` arrays with identical bit patterns.

    Raises
    ------
    TypeError
        If the tensor's dtype has no numpy counterpart (e.g. quantized types).
    """
    host = t.detach().to("cpu").contiguous()
    if host.dtype in _BIT_VIEW_DTYPES:
        np_dtype, int_dtype = _BIT_VIEW_DTYPES[host.dtype]
        bits = host.view(int_dtype).numpy()
        return np.array(bits, copy=True).view(np_dtype)
    if host.dtype in _NATIVE_DTYPES:
        return np.array(host.numpy(), copy=True)
    raise TypeError(f"cannot convert torch dtype {host.dtype} to numpy")


def numpy_to_torch(a: np.ndarray) -> torch.Tensor:
    """Copy a numpy array into a CPU tensor of the equivalent dtype.

    Parameters
    ----------
    a : numpy.ndarray
        Any array, including ``ml_dtypes.bfloat16`` and float8 arrays;
        non-contiguous and read-only arrays are accepted.

    Returns
    -------
    torch.Tensor
        A contiguous CPU tensor that owns its data, with the same shape and the
        same bit patterns as ``a``.

    Raises
    ------
    TypeError
        If the array's dtype has no torch counterpart (e.g. strings, objects).
    """
    arr = np.asarray(a)
    t_dtype = _TORCH_OF_NUMPY.get(arr.dtype)
    if t_dtype is None:
        raise TypeError(f"cannot convert numpy dtype {arr.dtype} to torch")
    owned = np.array(arr, copy=True, order="C")
    if t_dtype in _BIT_VIEW_DTYPES:
        _, int_dtype = _BIT_VIEW_DTYPES[t_dtype]
        bits = owned.view(_NUMPY_VIEW_OF_TORCH_INT[int_dtype])
        return torch.from_numpy(bits).view(t_dtype)
    return torch.from_numpy(owned)
