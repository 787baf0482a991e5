"""The one check of FedProx's μ that the coordinator and every client apply."""

from __future__ import annotations

import pytest

from fedprompt.proximal import MAX_PROXIMAL_MU, check_proximal_mu


@pytest.mark.parametrize("mu", [0, 0.0, 1e-300, 0.01, 1, MAX_PROXIMAL_MU])
def test_finite_values_in_range_pass_as_floats(mu: float) -> None:
    got = check_proximal_mu(mu)
    assert got == mu and type(got) is float


@pytest.mark.parametrize(
    "mu", [float("nan"), float("inf"), float("-inf"), -1.0, -5e-324, 100.00000000000001, 1e9]
)
def test_nan_infinities_negatives_and_huge_values_are_refused(mu: float) -> None:
    with pytest.raises(ValueError, match=r"proximal_mu .* finite number in \[0, 100\]"):
        check_proximal_mu(mu)


@pytest.mark.parametrize("mu", [True, False, "0.1", None, [0.1]])
def test_booleans_and_non_numbers_are_refused(mu: object) -> None:
    with pytest.raises(ValueError, match="proximal_mu must be a number"):
        check_proximal_mu(mu)  # type: ignore[arg-type]
