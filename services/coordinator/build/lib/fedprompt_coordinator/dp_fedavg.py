"""DP-FedAvg of the global level (McMahan et al., ICLR 2018): clip, sum, noise, fixed denominator.

``G' = G + η · (Σ_i clip(ΔG_i, S) + N(0, (z·S)² I)) / m`` where clipping is to L2 norm S
over all of a client's global tensors together, m is the *expected* number of participants
(a fixed denominator keeps the sensitivity of the average at S/m) and η the server learning
rate. Each client's contribution is unweighted: weighting by sample counts would let one
client's influence exceed S/m.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DPFedAvgResult:
    """The new global tensors and what the mechanism did."""

    tensors: dict[str, np.ndarray]
    clipped_fraction: float
    mean_update_norm: float
    noise_std: float


def global_l2_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """L2 norm of several tensors taken as one vector."""
    return float(
        np.sqrt(sum(float(np.sum(np.square(t, dtype=np.float64))) for t in tensors.values()))
    )


def clip_update(
    tensors: Mapping[str, np.ndarray], max_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale ``tensors`` (as one vector) to L2 norm at most ``max_norm``; returns (clipped, norm)."""
    norm = global_l2_norm(tensors)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * factor for k, v in tensors.items()}, norm


def dp_fedavg(
    base: Mapping[str, np.ndarray],
    deltas: Sequence[Mapping[str, np.ndarray]],
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_participants: float,
    server_lr: float,
    rng: np.random.Generator,
) -> DPFedAvgResult:
    """Apply one round of DP-FedAvg to the global tensors ``base``.

    Parameters
    ----------
    base
        Current global tensors.
    deltas
        One mapping per participant with the same names as ``base``.
    clip_norm
        S, the per-client L2 bound.
    noise_multiplier
        z; the Gaussian noise on the sum has standard deviation z·S per coordinate.
    expected_participants
        m, the fixed denominator.
    server_lr
        η, the server learning rate.
    rng
        Source of the Gaussian noise.
    """
    if clip_norm <= 0 or expected_participants <= 0:
        raise ValueError("clip_norm and expected_participants must be positive")
    total = {k: np.zeros(np.shape(v), dtype=np.float64) for k, v in base.items()}
    norms = []
    for delta in deltas:
        clipped, norm = clip_update({k: delta[k] for k in base}, clip_norm)
        norms.append(norm)
        for k in total:
            total[k] += clipped[k]
    std = noise_multiplier * clip_norm
    out = {}
    for k, v in base.items():
        noisy = total[k] + (rng.normal(0.0, std, size=total[k].shape) if std > 0 else 0.0)
        out[k] = (
            np.asarray(v, dtype=np.float64) + server_lr * noisy / expected_participants
        ).astype(np.asarray(v).dtype)
    return DPFedAvgResult(
        tensors=out,
        clipped_fraction=float(np.mean([n > clip_norm for n in norms])) if norms else 0.0,
        mean_update_norm=float(np.mean(norms)) if norms else 0.0,
        noise_std=std,
    )
