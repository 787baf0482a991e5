"""The final personalization pass of an evaluation: the one check of its step count.

With ``evaluation.personalize_steps`` > 0 the coordinator asks every evaluating client for a
personalization pass (``Task.personalize_steps`` of the EVALUATE task, with the
federation's ``TrainingSettings``): on a copy of the evaluated model the client fine-tunes
only its own local prompt segment and the task head on its own training split for that many
optimizer steps (the shared segments frozen), then reports the copy's metrics under the
usual keys and the evaluated model's under :data:`UNPERSONALIZED_PREFIX`. Nothing of the
pass is uploaded or kept.

The coordinator's configuration and every client agent check a step count with
:func:`check_personalize_steps`, so that the two can never disagree on what is acceptable.
"""

from __future__ import annotations

import numbers
from typing import Final

__all__ = ["MAX_PERSONALIZE_STEPS", "UNPERSONALIZED_PREFIX", "check_personalize_steps"]

#: Most optimizer steps of one pass either side accepts: far above a useful pass (tens to a
#: few hundred steps), low enough that a hostile value cannot keep a silo busy for days.
MAX_PERSONALIZE_STEPS: Final = 10_000

#: Prefix of the metrics of the evaluated (not personalized) model in an evaluation report
#: that ran the pass: ``unpersonalized_accuracy``, ``unpersonalized_val_accuracy``, ...
UNPERSONALIZED_PREFIX: Final = "unpersonalized_"


def check_personalize_steps(value: int) -> int:
    """Return the step count as an int when it is an integer in ``[0, MAX_PERSONALIZE_STEPS]``.

    Parameters
    ----------
    value : int
        The proposed number of optimizer steps of the pass (0 switches the pass off).

    Returns
    -------
    int
        ``value``, as an int.

    Raises
    ------
    ValueError
        For anything but an integer in ``[0, MAX_PERSONALIZE_STEPS]`` (negative or larger
        values, booleans, floats, strings, None); numpy integers pass.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"personalize_steps must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_PERSONALIZE_STEPS:
        raise ValueError(
            f"personalize_steps must be in [0, {MAX_PERSONALIZE_STEPS}] (0: no personalization "
            f"pass), got {value!r}"
        )
    return int(value)
