"""Tests of the vectorised, block-wise sums used by aggregation."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt_coordinator.aggregation import weighted_sum as ws


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force many blocks so that block boundaries are exercised on small arrays."""
    monkeypatch.setattr(ws, "BLOCK_ELEMENTS", 7)


def _arrays(n: int, shape: tuple[int, ...], dtype: type = np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


@pytest.mark.parametrize("blocks", ["one", "many"])
def test_weighted_sum_equals_the_plain_loop(blocks: str, request: pytest.FixtureRequest) -> None:
    if blocks == "many":
        request.getfixturevalue("small_blocks")
    arrays = _arrays(5, (3, 11))
    w = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    expected = sum(wi * a.astype(np.float64) for wi, a in zip(w, arrays, strict=True))
    got = ws.weighted_sum(arrays, w)
    assert got.dtype == np.float64 and got.shape == (3, 11)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_weighted_sum_of_zero_dimensional_and_empty_arrays() -> None:
    np.testing.assert_allclose(
        ws.weighted_sum([np.float32(2.0) * np.ones(())] * 2, [0.5, 0.5]), 2.0
    )
    assert ws.weighted_sum([np.zeros((0, 4))] * 3, [1, 1, 1]).shape == (0, 4)


def test_weighted_sum_reads_memory_mapped_inputs(tmp_path, small_blocks: None) -> None:  # type: ignore[no-untyped-def]
    arrays = _arrays(3, (40,))
    mapped = []
    for i, a in enumerate(arrays):
        m = np.lib.format.open_memmap(
            tmp_path / f"{i}.npy", mode="w+", dtype=a.dtype, shape=a.shape
        )
        m[:] = a
        mapped.append(np.load(tmp_path / f"{i}.npy", mmap_mode="r"))
    np.testing.assert_allclose(
        ws.weighted_sum(mapped, [1, 2, 3]), ws.weighted_sum(arrays, [1, 2, 3])
    )


@pytest.mark.parametrize(
    ("arrays", "weights"),
    [([], []), ([np.zeros(2)], [1.0, 2.0]), ([np.zeros(2), np.zeros(3)], [1.0, 1.0])],
    ids=["empty", "count-mismatch", "shape-mismatch"],
)
def test_weighted_sum_refuses_bad_input(arrays: list[np.ndarray], weights: list[float]) -> None:
    with pytest.raises(ValueError):
        ws.weighted_sum(arrays, weights)


@pytest.mark.parametrize("blocks", ["one", "many"])
def test_squared_norms_match_numpy(blocks: str, request: pytest.FixtureRequest) -> None:
    if blocks == "many":
        request.getfixturevalue("small_blocks")
    same = _arrays(4, (5, 6))
    np.testing.assert_allclose(
        ws.squared_norms(same), [float(np.sum(a.astype(np.float64) ** 2)) for a in same]
    )
    mixed = [np.ones(3), np.ones((2, 5))]
    np.testing.assert_allclose(ws.squared_norms(mixed), [3.0, 10.0])
    assert ws.squared_norms([]).shape == (0,)


def test_add_scaled_keeps_the_base_dtype_and_shape(small_blocks: None) -> None:
    base = np.arange(20, dtype=np.float32).reshape(4, 5)
    delta = np.full((4, 5), 0.5)
    out = ws.add_scaled(base, delta, scale=2.0)
    assert out.dtype == np.float32 and out.shape == (4, 5)
    np.testing.assert_allclose(out, base + 1.0)
    with pytest.raises(ValueError):
        ws.add_scaled(base, np.zeros(3))


@pytest.mark.parametrize("blocks", ["one", "many"])
def test_add_weighted_sum_equals_add_scaled_of_weighted_sum(
    blocks: str, request: pytest.FixtureRequest
) -> None:
    if blocks == "many":
        request.getfixturevalue("small_blocks")
    base = np.linspace(-1, 1, 33, dtype=np.float32).reshape(3, 11)
    arrays = _arrays(4, (3, 11))
    w = [0.4, 0.3, 0.2, 0.1]
    got = ws.add_weighted_sum(base, arrays, w)
    assert got.dtype == np.float32 and got.shape == base.shape
    np.testing.assert_array_equal(got, ws.add_scaled(base, ws.weighted_sum(arrays, w)))
    with pytest.raises(ValueError):
        ws.add_weighted_sum(np.zeros(5, np.float32), arrays, w)
