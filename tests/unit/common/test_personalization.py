"""The one check of the personalization pass's step count (coordinator and every client)."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.personalization import MAX_PERSONALIZE_STEPS, check_personalize_steps


@pytest.mark.parametrize("steps", [0, 1, 50, MAX_PERSONALIZE_STEPS, np.int64(7)])
def test_integers_in_range_pass_as_ints(steps: int) -> None:
    got = check_personalize_steps(steps)
    assert got == steps and type(got) is int


@pytest.mark.parametrize("steps", [-1, MAX_PERSONALIZE_STEPS + 1, 2**32 - 1, 10**18])
def test_negatives_and_huge_values_are_refused(steps: int) -> None:
    with pytest.raises(ValueError, match=r"personalize_steps must be in \[0, 10000\]"):
        check_personalize_steps(steps)


@pytest.mark.parametrize("steps", [True, False, 5.0, float("nan"), "5", None, [5]])
def test_booleans_floats_and_non_numbers_are_refused(steps: object) -> None:
    with pytest.raises(ValueError, match="personalize_steps must be an integer"):
        check_personalize_steps(steps)  # type: ignore[arg-type]
