"""Property tests (hypothesis) of the update validators over thousands of generated updates.

The oracle is written independently of the implementation: an update passes exactly when its
names, dtypes and shapes equal the spec, every value is finite and every tensor's L2 norm is
within the bound; any other update raises a coded error (never another exception), and the
announced size check refuses exactly the sizes over the limit or over what the spec needs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedprompt.codec import dtype_name
from fedprompt.errors import FedPromptError
from fedprompt_coordinator.domain import TensorSpec
from fedprompt_coordinator.validation import (
    HEADER_BYTES_FIXED,
    HEADER_BYTES_PER_TENSOR,
    check_update_size,
    spec_of,
    validate_update,
)

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
MANY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64), np.dtype(np.int32)]
shapes = st.lists(st.integers(0, 4), min_size=0, max_size=2).map(tuple)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    """A small array: random bits (NaN, inf, huge values included) or one repeated value."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes)
    n = int(np.prod(shape, dtype=np.int64))
    if draw(st.booleans()):
        raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if dtype.kind == "f":
        value = draw(st.floats(width=8 * dtype.itemsize))
    else:
        value = draw(st.integers(-(2**31), 2**31 - 1))
    return np.full(shape, value, dtype=dtype)


names = st.sampled_from(["prompt.global", "prompt.cluster", "head.weight", "head.bias", "x"])
updates = st.dictionaries(names, arrays(), max_size=4)
specs = st.dictionaries(
    names,
    st.tuples(st.sampled_from(["F32", "F16", "F64", "I32"]), shapes),
    max_size=4,
).map(lambda d: tuple(TensorSpec(n, dt, tuple(sh)) for n, (dt, sh) in sorted(d.items())))
bounds = st.one_of(st.none(), st.floats(min_value=1e-3, max_value=1e6))


def _should_pass(
    tensors: dict[str, np.ndarray], spec: tuple[TensorSpec, ...], bound: float | None
) -> bool:
    want = {s.name: (s.dtype, s.shape) for s in spec}
    if set(want) != set(tensors):
        return False
    for name, arr in tensors.items():
        if (dtype_name(arr), tuple(arr.shape)) != want[name]:
            return False
        values = [float(v) for v in arr.astype(np.float64).ravel()]
        if not all(math.isfinite(v) for v in values):
            return False
        if bound is not None and not math.sqrt(math.fsum(v * v for v in values)) <= bound:
            return False
    return True


def _accepts(
    tensors: dict[str, np.ndarray], spec: tuple[TensorSpec, ...], bound: float | None
) -> bool:
    try:
        validate_update(tensors, spec, max_l2_norm=bound)
    except FedPromptError as exc:
        assert exc.status_code.name == "INVALID_ARGUMENT", exc
        assert exc.message
        return False
    return True


@MANY
@given(updates, specs, bounds)
def test_validator_agrees_with_the_oracle_on_random_updates(
    tensors: dict[str, np.ndarray], spec: tuple[TensorSpec, ...], bound: float | None
) -> None:
    expected = _should_pass(tensors, spec, bound)
    got = _accepts(tensors, spec, bound)
    if expected != got:
        # the only tolerated disagreement: a norm within float64 rounding of the bound
        assert bound is not None
        norms = [float(np.linalg.norm(a.astype(np.float64))) for a in tensors.values()]
        assert any(math.isclose(n, bound, rel_tol=1e-9) for n in norms)


@MANY
@given(updates, bounds)
def test_an_update_matching_its_own_spec_passes_unless_non_finite_or_too_large(
    tensors: dict[str, np.ndarray], bound: float | None
) -> None:
    spec = spec_of(tensors)
    finite = all(np.isfinite(a.astype(np.float64)).all() for a in tensors.values())
    small = bound is None or all(
        float(np.linalg.norm(a.astype(np.float64))) <= bound for a in tensors.values()
    )
    assert _accepts(tensors, spec, bound) == (finite and small)


@MANY
@given(specs, st.integers(-10, 10**6), st.integers(1, 10**6))
def test_size_check_refuses_exactly_impossible_sizes(
    spec: tuple[TensorSpec, ...], total: int, limit: int
) -> None:
    itemsize = {"F32": 4, "F16": 2, "F64": 8, "I32": 4}
    need = sum(math.prod(s.shape) * itemsize[s.dtype] for s in spec)
    bound = need + HEADER_BYTES_FIXED + HEADER_BYTES_PER_TENSOR * len(spec)
    ok = 0 <= total <= limit and (not spec or total <= bound)
    try:
        check_update_size(total, spec, max_update_bytes=limit)
    except FedPromptError as exc:
        assert not ok
        assert exc.status_code.name in ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT")
    else:
        assert ok


@MANY
@given(updates)
def test_an_honest_encoding_fits_the_size_bound(tensors: dict[str, np.ndarray]) -> None:
    from fedprompt.codec import encode_tensors

    payload = encode_tensors(tensors)
    check_update_size(len(payload), spec_of(tensors), max_update_bytes=len(payload))
