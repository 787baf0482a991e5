"""Fairness across clients, shared by the coordinator's round summaries and the bench report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index (Σx)² / (n·Σx²): 1 when all equal, 1/n when one has everything.

    An empty sequence or all zeros gives 1.0 (nobody is treated worse than anybody else).
    """
    if not values:
        return 1.0
    squares = sum(float(v) * float(v) for v in values)
    if squares == 0:
        return 1.0
    return float(sum(float(v) for v in values) ** 2 / (len(values) * squares))


def fairness_summary(accuracies: Sequence[float]) -> dict[str, float]:
    """Mean, worst, std and Jain's fairness index of per-client accuracies (empty: ``{}``)."""
    if not accuracies:
        return {}
    x = np.asarray(accuracies, dtype=np.float64)
    return {
        "accuracy_mean": float(x.mean()),
        "accuracy_worst": float(x.min()),
        "accuracy_std": float(x.std()),
        "jain_index": jain_index(x.tolist()),
    }
