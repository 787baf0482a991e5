"""Tests for torch <-> numpy conversions, bfloat16 and float8 included."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from fedprompt_client_agent.tensors import numpy_to_torch, supported_torch_dtypes, torch_to_numpy


def _sample(dtype: torch.dtype) -> torch.Tensor:
    """A small 2-D tensor of the given dtype with varied values."""
    gen = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(3, 5, generator=gen) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        return (torch.randn(3, 5, generator=gen) * 4).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -1000), min(info.max, 1000)
    return torch.randint(low, high, (3, 5), generator=gen).to(dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes, for bit-exact comparisons."""
    return t.contiguous().view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)


@pytest.mark.parametrize("dtype", supported_torch_dtypes(), ids=str)
def test_round_trip_is_bit_exact(dtype: torch.dtype) -> None:
    tensor = _sample(dtype)
    array = torch_to_numpy(tensor)
    back = numpy_to_torch(array)
    assert array.shape == (3, 5)
    assert back.dtype == dtype
    assert torch.equal(_bits(back), _bits(tensor))


def test_expected_numpy_dtypes() -> None:
    assert torch_to_numpy(torch.zeros(2, dtype=torch.bfloat16)).dtype == ml_dtypes.bfloat16
    assert torch_to_numpy(torch.zeros(2, dtype=torch.float16)).dtype == np.float16
    assert torch_to_numpy(torch.zeros(2, dtype=torch.int8)).dtype == np.int8
    assert torch_to_numpy(torch.zeros(2, dtype=torch.bool)).dtype == np.bool_


def test_bfloat16_every_bit_pattern_survives() -> None:
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    tensor = patterns.view(torch.bfloat16)  # includes NaN payloads, infinities, subnormals, -0
    array = torch_to_numpy(tensor)
    assert np.array_equal(array.view(np.int16), patterns.numpy())
    assert torch.equal(numpy_to_torch(array).view(torch.int16), patterns)


def test_bfloat16_values_match_ml_dtypes() -> None:
    values = np.array([1.5, -2.25, 3.0e-3, 65504.0], dtype=np.float32)
    array = values.astype(ml_dtypes.bfloat16)
    tensor = numpy_to_torch(array)
    assert torch.equal(tensor.float(), torch.from_numpy(array.astype(np.float32)))


def test_results_do_not_alias_inputs() -> None:
    tensor = torch.zeros(4)
    array = torch_to_numpy(tensor)
    array[0] = 7.0
    assert tensor[0] == 0.0
    source = np.zeros(4, dtype=np.float32)
    back = numpy_to_torch(source)
    back[0] = 7.0
    assert source[0] == 0.0


def test_non_contiguous_read_only_and_scalar_inputs() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = base.T
    view.flags.writeable = False
    assert torch.equal(numpy_to_torch(view), torch.from_numpy(base.T.copy()))
    transposed = torch.arange(12.0).reshape(3, 4).T.to(torch.bfloat16)
    assert np.array_equal(torch_to_numpy(transposed).astype(np.float32), base.T)
    scalar = numpy_to_torch(np.array(2.5, dtype=ml_dtypes.bfloat16))
    assert scalar.shape == () and scalar.item() == 2.5


def test_unsupported_dtypes_raise_type_error() -> None:
    with pytest.raises(TypeError, match="numpy dtype"):
        numpy_to_torch(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="numpy dtype"):
        numpy_to_torch(np.array([object()], dtype=object))
    with pytest.raises(TypeError, match="torch dtype"):
        torch_to_numpy(torch.empty(2, dtype=torch.float4_e2m1fn_x2))
