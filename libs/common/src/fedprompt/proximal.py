"""FedProx's proximal coefficient μ (Li et al., MLSys 2020): the one check of its value.

The coordinator sends μ with every TRAIN task (``TrainingSettings.proximal_mu``); a client
adds ``μ/2 · Σ‖θ - θ₀‖²`` to its loss, summed over the tensors it uploads that round, θ₀
their values at the round start. The term keeps a client's update near the model it
received, which bounds how far silos with different data pull the shared tensors apart.

The coordinator's configuration and every client agent check a value with
:func:`check_proximal_mu`, so that the two can never disagree on what is acceptable.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["MAX_PROXIMAL_MU", "check_proximal_mu"]

#: Largest μ either side accepts. The FedProx paper tunes μ over {0.001, 0.01, 0.1, 1}; a
#: value this far above that range pins the shared tensors to the round-start model.
MAX_PROXIMAL_MU: Final = 100.0


def check_proximal_mu(value: float) -> float:
    """Return μ as a float when it is a finite number in ``[0, MAX_PROXIMAL_MU]``.

    Parameters
    ----------
    value : float
        The proposed μ (0 switches the proximal term off).

    Returns
    -------
    float
        ``value``, as a float.

    Raises
    ------
    ValueError
        For anything but a finite number in ``[0, MAX_PROXIMAL_MU]`` (NaN, infinities,
        negative values, values above the maximum, booleans, non-numbers).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"proximal_mu must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or not 0 <= value <= MAX_PROXIMAL_MU:
        raise ValueError(
            f"proximal_mu (FedProx's μ) must be a finite number in [0, {MAX_PROXIMAL_MU:g}] "
            f"(0: off), got {value!r}"
        )
    return float(value)
