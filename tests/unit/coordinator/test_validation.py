"""Tests of the checks an update must pass before aggregation."""

from __future__ import annotations

import grpc
import ml_dtypes
import numpy as np
import pytest

from fedprompt.errors import InvalidArgumentError, NonFiniteError, ShapeMismatchError
from fedprompt_coordinator.domain import TensorSpec
from fedprompt_coordinator.validation import spec_of, validate_update

SPEC = (
    TensorSpec("head.weight", "F32", (2, 3)),
    TensorSpec("prompt.cluster", "F32", (1, 3)),
    TensorSpec("prompt.global", "BF16", (2, 3)),
)


def _good() -> dict[str, np.ndarray]:
    return {
        "prompt.global": np.ones((2, 3), dtype=ml_dtypes.bfloat16),
        "prompt.cluster": np.zeros((1, 3), dtype=np.float32),
        "head.weight": np.full((2, 3), 0.5, dtype=np.float32),
    }


def test_spec_of_is_sorted_and_uses_safetensors_dtype_names() -> None:
    assert spec_of(_good()) == SPEC
    assert spec_of({"s": np.array(1, dtype=np.int64)}) == (TensorSpec("s", "I64", ()),)


def test_spec_of_refuses_dtypes_that_cannot_travel() -> None:
    with pytest.raises(InvalidArgumentError):
        spec_of({"c": np.zeros(1, dtype=np.complex128)})


def test_matching_update_passes() -> None:
    validate_update(_good(), SPEC)
    validate_update(_good(), SPEC, max_l2_norm=10.0)


def test_missing_tensor_is_a_shape_mismatch() -> None:
    tensors = _good()
    del tensors["prompt.cluster"]
    with pytest.raises(ShapeMismatchError, match=r"missing \['prompt.cluster'\]") as info:
        validate_update(tensors, SPEC)
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


def test_unexpected_tensor_is_a_shape_mismatch() -> None:
    tensors = {**_good(), "secret.extra": np.zeros(1, dtype=np.float32)}
    with pytest.raises(ShapeMismatchError, match=r"unexpected \['secret.extra'\]"):
        validate_update(tensors, SPEC)


def test_wrong_dtype_is_a_shape_mismatch() -> None:
    tensors = {**_good(), "prompt.global": np.ones((2, 3), dtype=np.float32)}
    with pytest.raises(ShapeMismatchError, match="dtype F32, expected BF16") as info:
        validate_update(tensors, SPEC)
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("shape", [(3, 2), (2, 3, 1), (6,), ()])
def test_wrong_shape_is_a_shape_mismatch(shape: tuple[int, ...]) -> None:
    tensors = {**_good(), "head.weight": np.zeros(shape, dtype=np.float32)}
    with pytest.raises(ShapeMismatchError, match=r"'head\.weight' has shape"):
        validate_update(tensors, SPEC)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    tensors = _good()
    tensors["head.weight"][1, 2] = bad
    with pytest.raises(NonFiniteError, match=r"'head\.weight' contains NaN or infinity") as info:
        validate_update(tensors, SPEC)
    assert info.value.status_code is grpc.StatusCode.INVALID_ARGUMENT


def test_non_finite_bfloat16_is_refused() -> None:
    tensors = _good()
    tensors["prompt.global"][0, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"prompt\.global"):
        validate_update(tensors, SPEC)


def test_l2_norm_bound() -> None:
    tensors = _good()
    tensors["head.weight"][:] = 10.0  # norm sqrt(6 * 100) ~ 24.5
    with pytest.raises(ShapeMismatchError, match="L2 norm"):
        validate_update(tensors, SPEC, max_l2_norm=20.0)
    validate_update(tensors, SPEC, max_l2_norm=25.0)


def test_empty_spec_accepts_only_an_empty_update() -> None:
    validate_update({}, ())
    with pytest.raises(ShapeMismatchError):
        validate_update({"x": np.zeros(1, dtype=np.float32)}, ())
