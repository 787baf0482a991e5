"""λ and τ of fpl's contrastive parts: the one check of their values.

The coordinator sends λ (the weight of the client InfoNCE term) and τ (its temperature, also
that of the server's alignment scores) with every TRAIN task
(``TrainingSettings.contrastive_weight`` and ``contrastive_temperature``). The coordinator's
configuration and every client agent check them with :func:`check_contrastive`, so that the
two never disagree on what is acceptable: a value outside the ranges below would make the
InfoNCE loss infinite or NaN (τ near 0 divides the cosines into overflow; λ = inf), which
no silo should train with.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "MAX_CONTRASTIVE_TEMPERATURE",
    "MAX_CONTRASTIVE_WEIGHT",
    "MIN_CONTRASTIVE_TEMPERATURE",
    "check_contrastive_temperature",
    "check_contrastive_weight",
]

#: Largest λ either side accepts (the loss is cross-entropy plus λ · InfoNCE).
MAX_CONTRASTIVE_WEIGHT: Final = 100.0
#: τ's range: the logits are cosines in [-1, 1] divided by τ.
MIN_CONTRASTIVE_TEMPERATURE: Final = 0.01
MAX_CONTRASTIVE_TEMPERATURE: Final = 100.0


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def check_contrastive_weight(value: object) -> float:
    """λ as a float when it is a finite number in ``[0, MAX_CONTRASTIVE_WEIGHT]``.

    Raises
    ------
    ValueError
        For anything else (NaN, infinities, negatives, too large, booleans, non-numbers).
    """
    weight = _number("contrastive_weight (λ)", value)
    if not 0.0 <= weight <= MAX_CONTRASTIVE_WEIGHT:
        raise ValueError(
            f"contrastive_weight (λ) must be in [0, {MAX_CONTRASTIVE_WEIGHT:g}] (0: off), "
            f"got {value!r}"
        )
    return weight


def check_contrastive_temperature(value: object) -> float:
    """τ as a float when it is a finite number in ``[MIN, MAX_CONTRASTIVE_TEMPERATURE]``.

    Raises
    ------
    ValueError
        For anything else (NaN, infinities, 0 or below the minimum, too large, booleans).
    """
    temperature = _number("contrastive_temperature (τ)", value)
    if not MIN_CONTRASTIVE_TEMPERATURE <= temperature <= MAX_CONTRASTIVE_TEMPERATURE:
        raise ValueError(
            f"contrastive_temperature (τ) must be in [{MIN_CONTRASTIVE_TEMPERATURE:g}, "
            f"{MAX_CONTRASTIVE_TEMPERATURE:g}], got {value!r}"
        )
    return temperature
