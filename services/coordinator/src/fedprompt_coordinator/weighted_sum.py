"""Vectorised sums over many same-shaped arrays, in bounded memory.

Aggregating a round means ``Σ_i w_i Δ_i`` over the participants' updates. One Python-level
``acc += w * Δ`` per update costs two temporaries and an interpreter round trip each, which
dominates for a thousand small prompts; stacking everything at once would hold every update
twice for large ones. These helpers take the middle road: the flattened updates are
processed in column blocks of at most :data:`BLOCK_ELEMENTS` values (all clients × a slice
of the tensor), each block stacked into one float64 matrix and reduced with one BLAS call.
Inputs may be memory-mapped files: only one block of them is resident at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Values (clients x columns) in one stacked block: 4 Mi values = 32 MiB of float64.
BLOCK_ELEMENTS = 4 * 1024 * 1024


def _columns_per_block(rows: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(rows, 1))


def weighted_sum(arrays: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """``Σ_i weights[i] * arrays[i]`` in float64, with the arrays' common shape.

    Raises
    ------
    ValueError
        When there are no arrays, the counts differ or the shapes differ.
    """
    w = np.asarray(weights, dtype=np.float64)
    if not arrays or w.shape != (len(arrays),):
        raise ValueError(f"need one weight per array, got {w.shape} for {len(arrays)} arrays")
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise ValueError("arrays of a weighted sum must all have the same shape")
    flats = [a.reshape(-1) for a in arrays]
    size = flats[0].size
    out = np.empty(size, dtype=np.float64)
    step = _columns_per_block(len(flats))
    for start in range(0, size, step):
        block = np.stack([f[start : start + step] for f in flats], dtype=np.float64)
        np.matmul(w, block, out=out[start : start + step])
    return out.reshape(shape)


def squared_norms(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``Σ x²`` of each array (float64), computed block by block."""
    if not arrays:
        return np.zeros(0, dtype=np.float64)
    flats = [a.reshape(-1) for a in arrays]
    size = max(f.size for f in flats)
    out = np.zeros(len(flats), dtype=np.float64)
    if len({f.size for f in flats}) != 1:  # different sizes: no stacking
        for i, f in enumerate(flats):
            out[i] = _sum_squares(f)
        return out
    step = _columns_per_block(len(flats))
    for start in range(0, size, step):
        block = np.stack([f[start : start + step] for f in flats], dtype=np.float64)
        out += np.einsum("ij,ij->i", block, block)
    return out


def _sum_squares(flat: np.ndarray) -> float:
    total = 0.0
    for start in range(0, flat.size, BLOCK_ELEMENTS):
        part = flat[start : start + BLOCK_ELEMENTS].astype(np.float64)
        total += float(part @ part)
    return total


def add_scaled(base: np.ndarray, delta: np.ndarray, *, scale: float = 1.0) -> np.ndarray:
    """``base + scale * delta`` computed in float64 block by block, cast to ``base``'s dtype."""
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
