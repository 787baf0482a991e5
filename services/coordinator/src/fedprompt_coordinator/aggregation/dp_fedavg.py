"""DP-FedAvg of the global level (McMahan et al., ICLR 2018): clip, sum, noise, fixed denominator.

``G' = G + η · (Σ_i clip(ΔG_i, S) + N(0, (z·S)² I)) / m`` where clipping is to L2 norm S
over all of a client's global tensors together, m is the *expected* number of participants
(a fixed denominator keeps the sensitivity of the average at S/m) and η the server learning
rate. Each client's contribution is unweighted: weighting by sample counts would let one
client's influence exceed S/m.

:class:`DPFedAvgGlobal` wraps any aggregator (as Flower's
``DifferentialPrivacyServerSideFixedClipping`` wraps a strategy): it replaces the global
level's aggregation by this mechanism and leaves the cluster level to the wrapped one.
The coordinator now uses :class:`~fedprompt_coordinator.aggregation.dp_levels.DPLevels`,
which applies :func:`dp_fedavg` to every DP level (global, cluster, head); with
``privacy.levels: [global]`` it is this wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedprompt_coordinator.aggregation.base import (
    ClusterAggregator,
    Info,
    LevelAggregate,
    LevelWrapper,
    Tensors,
)
from fedprompt_coordinator.aggregation.levels import Level
from fedprompt_coordinator.aggregation.weighted_sum import squared_norms, weighted_sum
from fedprompt_coordinator.domain import ClientUpdate


@dataclass(frozen=True)
class DPFedAvgResult:
    """The new global tensors and what the mechanism did."""

    tensors: dict[str, np.ndarray]
    clipped_fraction: float
    mean_update_norm: float
    noise_std: float
    #: Each participant's L2 norm of its delta (before clipping).
    norms: np.ndarray = field(default_factory=lambda: np.zeros(0))


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
    names = list(base)
    # one vectorised pass per tensor: norms over all of a client's tensors, then Σ_i f_i Δ_i
    squares = np.zeros(len(deltas), dtype=np.float64)
    for k in names:
        squares += squared_norms([np.asarray(d[k]) for d in deltas])
    norms = np.sqrt(squares)
    factors = np.minimum(1.0, clip_norm / np.where(norms > 0, norms, np.inf))
    total = (
        {k: weighted_sum([np.asarray(d[k]) for d in deltas], factors) for k in names}
        if deltas
        else {k: np.zeros(np.shape(v), dtype=np.float64) for k, v in base.items()}
    )
    std = noise_multiplier * clip_norm
    out = {}
    for k, v in base.items():
        noisy = total[k] + (rng.normal(0.0, std, size=total[k].shape) if std > 0 else 0.0)
        out[k] = (
            np.asarray(v, dtype=np.float64) + server_lr * noisy / expected_participants
        ).astype(np.asarray(v).dtype)
    return DPFedAvgResult(
        tensors=out,
        clipped_fraction=float(np.mean(norms > clip_norm)) if len(norms) else 0.0,
        mean_update_norm=float(np.mean(norms)) if len(norms) else 0.0,
        noise_std=std,
        norms=norms,
    )


class DPFedAvgGlobal(LevelWrapper):
    """DP-FedAvg of the global level around another aggregator, which keeps the cluster level.

    Its own clipping to S replaces any other clipping of the global level, and the noise is
    calibrated to the *unweighted* sum of clipped deltas, so the wrapped aggregator's rule
    and weights of the global level are not used (the configuration refuses robust global
    rules with DP).

    Parameters
    ----------
    inner
        The aggregator whose cluster level is kept.
    clip_norm
        S, the per-client L2 bound of the global delta.
    noise_multiplier
        z; the noise on the sum of clipped deltas has standard deviation z·S.
    expected_participants
        Called once per aggregation: m, the fixed denominator (the expected number of
        participants of the round, at least 1).
    server_learning_rate
        η.
    rng
        Source of the Gaussian noise.
    """

    name = "dp-fedavg"

    def __init__(
        self,
        inner: ClusterAggregator,
        *,
        clip_norm: float,
        noise_multiplier: float,
        expected_participants: Callable[[], float],
        server_learning_rate: float,
        rng: np.random.Generator,
    ) -> None:
        super().__init__(inner, level=Level.GLOBAL)
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.expected_participants = expected_participants
        self.server_learning_rate = server_learning_rate
        self.rng = rng

    def aggregate_level(
        self,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
        *,
        inner: LevelAggregate,
        label: str,
    ) -> tuple[Tensors, Info]:
        """Clip each member's global delta, sum, add noise, divide by m, apply with η."""
        result = dp_fedavg(
            base,
            [{k: u.tensors[k] for k in base} for u in members],
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            expected_participants=self.expected_participants(),
            server_lr=self.server_learning_rate,
            rng=self.rng,
        )
        return result.tensors, {
            "dp_clip_norm": self.clip_norm,
            "dp_clipped_fraction": result.clipped_fraction,
            "dp_mean_update_norm": result.mean_update_norm,
            "dp_noise_std": result.noise_std,
        }
