"""Sums over many same-shaped arrays in float64, in bounded memory.

Aggregating a round means ``Σ_i w_i Δ_i`` over the participants' updates. The sum runs
update by update into one float64 accumulator with two in-place ufunc calls per update
(no temporaries are allocated per update), and, for large tensors, slice by slice of at
most :data:`BLOCK_ELEMENTS` values so that the working set stays small and inputs may be
memory-mapped files (only a slice of each is touched at a time).

Measured on the 2-core dev machine (bench/aggregation_1000.py): stacking all updates
into one matrix and reducing it with a BLAS call is *slower* for 1000 x 30 KB (~60-90 ms
against ~16 ms for this loop): the stacked matrix (61 MB of float64) does not fit in cache,
while the accumulator of this loop (61 KB) does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Values per slice of a large tensor: 1 Mi values = 8 MiB of float64 accumulator.
BLOCK_ELEMENTS = 1024 * 1024


def _checked(
    arrays: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    w = np.asarray(weights, dtype=np.float64)
    if not arrays or w.shape != (len(arrays),):
        raise ValueError(f"need one weight per array, got {w.shape} for {len(arrays)} arrays")
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError("arrays of a weighted sum must all have the same shape")
    return w, [a.reshape(-1) for a in arrays]


def _accumulate(
    acc: np.ndarray, tmp: np.ndarray, w: np.ndarray, flats: list[np.ndarray], start: int
) -> None:
    """``acc = Σ_i w_i flats[i][start:start+len(acc)]`` (acc and tmp are float64 scratch)."""
    end = start + acc.size
    acc.fill(0.0)
    for wi, flat in zip(w, flats, strict=True):
        np.multiply(flat[start:end], wi, out=tmp)  # casts to float64 inside the ufunc
        acc += tmp


def weighted_sum(arrays: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """``Σ_i weights[i] * arrays[i]`` in float64, with the arrays' common shape.

    Raises
    ------
    ValueError
        When there are no arrays, the counts differ or the shapes differ.
    """
    w, flats = _checked(arrays, weights)
    size = flats[0].size
    out = np.empty(size, dtype=np.float64)
    scratch = np.empty(min(size, BLOCK_ELEMENTS), dtype=np.float64)
    for start in range(0, size, BLOCK_ELEMENTS):
        end = min(size, start + BLOCK_ELEMENTS)
        _accumulate(out[start:end], scratch[: end - start], w, flats, start)
    return out.reshape(arrays[0].shape)


def add_weighted_sum(
    base: np.ndarray, arrays: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray
) -> np.ndarray:
    """``base + Σ_i weights[i] * arrays[i]`` (float64 inside) in ``base``'s dtype.

    Equal to ``add_scaled(base, weighted_sum(arrays, weights))`` but never holds the
    float64 sum of a whole tensor: a large model's aggregate costs one copy of the model.
    """
    w, flats = _checked(arrays, weights)
    if base.shape != arrays[0].shape:
        raise ValueError(f"shape {arrays[0].shape} does not match the base {base.shape}")
    out = np.empty(base.shape, dtype=base.dtype)
    b, o = base.reshape(-1), out.reshape(-1)
    n = min(b.size, BLOCK_ELEMENTS)
    acc, tmp = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
    for start in range(0, b.size, BLOCK_ELEMENTS):
        end = min(b.size, start + BLOCK_ELEMENTS)
        part = acc[: end - start]
        _accumulate(part, tmp[: end - start], w, flats, start)
        part += b[start:end]
        o[start:end] = part
    return out


def squared_norms(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``Σ x²`` of each array in float64, slice by slice."""
    out = np.zeros(len(arrays), dtype=np.float64)
    for i, array in enumerate(arrays):
        flat = array.reshape(-1)
        for start in range(0, flat.size, BLOCK_ELEMENTS):
            part = flat[start : start + BLOCK_ELEMENTS].astype(np.float64)
            out[i] += float(part @ part)
    return out


def add_scaled(base: np.ndarray, delta: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """``base + scale * delta`` computed in float64 slice by slice, cast to ``base``'s dtype."""
    if base.shape != delta.shape:
        raise ValueError(f"shape {delta.shape} does not match the base {base.shape}")
    out = np.empty(base.shape, dtype=base.dtype)
    b, d, o = base.reshape(-1), delta.reshape(-1), out.reshape(-1)
    for start in range(0, b.size, BLOCK_ELEMENTS):
        end = start + BLOCK_ELEMENTS
        part = b[start:end].astype(np.float64)
        part += scale * d[start:end].astype(np.float64, copy=False)
        o[start:end] = part
    return out
