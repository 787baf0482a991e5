"""The one check of λ and τ that the coordinator's configuration and every client share."""

from __future__ import annotations

import pytest

from fedprompt.contrastive_settings import (
    check_contrastive_temperature,
    check_contrastive_weight,
)


@pytest.mark.parametrize("value", [0, 0.0, 0.1, 100, 100.0])
def test_weights_in_range_are_taken_as_floats(value: float) -> None:
    got = check_contrastive_weight(value)
    assert got == value and isinstance(got, float)


@pytest.mark.parametrize("value", [0.01, 0.5, 100.0])
def test_temperatures_in_range_are_taken(value: float) -> None:
    assert check_contrastive_temperature(value) == value


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -1e-9, 100.0001, True, "0.1", None, [0.1]]
)
def test_hostile_weights_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="contrastive_weight"):
        check_contrastive_weight(value)


@pytest.mark.parametrize(
    "value", [float("nan"), float("-inf"), 0.0, 0.0099, 1e-300, 100.5, False, "0.5"]
)
def test_hostile_temperatures_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="contrastive_temperature"):
        check_contrastive_temperature(value)
