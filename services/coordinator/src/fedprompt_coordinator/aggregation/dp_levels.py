"""DP-FedAvg of every shared level: per-level clipping, noise and fixed denominators.

For each DP level l (``global``; per cluster k: ``cluster``, the cluster's tensors except its
head, and ``head``), with S_l, z_l from :func:`~fedprompt_coordinator.privacy.level_mechanisms`:

    T' = T + η · (Σ_i clip(ΔT_i, S_l) + N(0, (z_l·S_l)² I)) / m

where each member's delta of the level's tensors is clipped as one vector, and m is the
*expected* number of participants of that aggregate: ``max(1, q·N)`` for the global level,
``m_k = max(1, q·|members of k|)`` for cluster k's two levels. A cluster whose m_k is below
``min_cluster_members`` is not released that round: its DP tensors keep their value and the
round summary says ``dp_cluster_<k>_skipped = 1``; ``last_released`` leaves them out, so a
server optimizer does not step them either. The head and the rest of a cluster are clipped
and noised separately (two mechanisms, each accounted on its own level).

Cluster-level tensors of a level without DP (``privacy.levels`` without ``head``, say) and
the global level without DP go to the wrapped aggregator, with its per-client clipping,
weight caps and rules (issue 12's defences); the DP levels ignore the wrapped aggregator's
weights (contrastive or sample-count): the noise is calibrated to the *unweighted* sum.

Round-summary keys: ``dp_<level>_clipped_fraction``, ``dp_<level>_mean_update_norm`` and
``dp_noise_std_<level>`` over the round, per cluster ``dp_cluster_<k>_expected_participants``
and ``dp_cluster_<k>_<level>_clipped_fraction``; the global level also keeps the keys of the
earlier global-only DP (``dp_clip_norm``, ``dp_clipped_fraction``, ``dp_mean_update_norm``,
``dp_noise_std``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedprompt_coordinator.aggregation.base import ClusterAggregator, Info, Tensors
from fedprompt_coordinator.aggregation.dp_fedavg import dp_fedavg
from fedprompt_coordinator.aggregation.parts import Part, part_of
from fedprompt_coordinator.config import DPLevel
from fedprompt_coordinator.domain import ClientUpdate, FederationModel
from fedprompt_coordinator.privacy import LevelMechanism

#: Round-summary key of a cluster that was not released (too few expected members).
SKIPPED_KEY = "dp_cluster_{cluster}_skipped"


def cluster_dp_level(name: str) -> DPLevel:
    """The DP level of a cluster-level tensor: ``head`` for the head, else ``cluster``."""
    return DPLevel.HEAD if part_of(name) is Part.HEAD else DPLevel.CLUSTER


class DPLevels(ClusterAggregator):
    """DP-FedAvg of each DP level around another aggregator, which keeps the other tensors.

    Parameters
    ----------
    inner
        The aggregator of the levels (or cluster tensors) without DP.
    mechanisms
        (S_l, z_l) by DP level name (``global``, ``cluster``, ``head``); levels not named
        are the wrapped aggregator's.
    expected_global
        Called once per round: m of the global level (at least 1).
    expected_cluster
        Called with a cluster id: m_k, the expected participants of that cluster.
    server_learning_rate
        η.
    rng
        Source of the Gaussian noise.
    min_cluster_members
        Clusters with m_k below this are not released.
    """

    name = "dp-levels"

    def __init__(
        self,
        inner: ClusterAggregator,
        *,
        mechanisms: Mapping[str, LevelMechanism],
        expected_global: Callable[[], float],
        expected_cluster: Callable[[int], float],
        server_learning_rate: float,
        rng: np.random.Generator,
        min_cluster_members: float = 2.0,
    ) -> None:
        super().__init__()
        unknown = set(mechanisms) - {level.value for level in DPLevel}
        if unknown:
            raise ValueError(f"unknown DP levels {sorted(unknown)}")
        self.inner = inner
        self.mechanisms = {DPLevel(k): v for k, v in mechanisms.items()}
        self.expected_global = expected_global
        self.expected_cluster = expected_cluster
        self.server_learning_rate = server_learning_rate
        self.rng = rng
        self.min_cluster_members = min_cluster_members
        self._round: dict[DPLevel, list[np.ndarray]] = {}
        #: Cluster id -> its DP tensors not released this round (too few expected members).
        self._withheld: dict[int, frozenset[str]] = {}

    def prepare_round(self, model: FederationModel, updates: Sequence[ClientUpdate]) -> Info:
        """The wrapped aggregator's preparation; resets the round's DP figures."""
        self._round = {}
        self._withheld = {}
        return self.inner.prepare_round(model, updates)

    def aggregate(self, model: FederationModel, updates: Sequence[ClientUpdate]) -> FederationModel:
        """Every level as :meth:`ClusterAggregator.aggregate`, then round-wide DP figures."""
        out = super().aggregate(model, updates)
        for cluster_id, names in self._withheld.items():
            self.last_released = self.last_released.without(cluster_id, names)
        info = self.last_info
        for level, mech in self.mechanisms.items():
            info[f"dp_clip_norm_{level.value}"] = mech.clip_norm
            info[f"dp_noise_multiplier_{level.value}"] = mech.noise_multiplier
            info[f"dp_noise_std_{level.value}"] = mech.noise_std
            norms = self._round.get(level)
            if norms:
                values = np.concatenate(norms)
                info[f"dp_{level.value}_clipped_fraction"] = float(np.mean(values > mech.clip_norm))
                info[f"dp_{level.value}_mean_update_norm"] = float(np.mean(values))
        return out

    def _release(
        self,
        level: DPLevel,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
        expected: float,
    ) -> tuple[Tensors, float]:
        mech = self.mechanisms[level]
        result = dp_fedavg(
            base,
            [{k: u.tensors[k] for k in base} for u in members],
            clip_norm=mech.clip_norm,
            noise_multiplier=mech.noise_multiplier,
            expected_participants=expected,
            server_lr=self.server_learning_rate,
            rng=self.rng,
        )
        self._round.setdefault(level, []).append(result.norms)
        return result.tensors, result.clipped_fraction

    def aggregate_global(
        self, base: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate]
    ) -> tuple[Tensors, Info]:
        """DP-FedAvg of the global level when it is a DP level, else the wrapped rule."""
        if DPLevel.GLOBAL not in self.mechanisms:
            return self.inner.aggregate_global(base, updates)
        m = max(1.0, float(self.expected_global()))
        tensors, clipped = self._release(DPLevel.GLOBAL, base, updates, m)
        mech = self.mechanisms[DPLevel.GLOBAL]
        norms = self._round[DPLevel.GLOBAL][-1]
        return tensors, {
            "dp_clip_norm": mech.clip_norm,
            "dp_clipped_fraction": clipped,
            "dp_mean_update_norm": float(np.mean(norms)) if norms.size else 0.0,
            "dp_noise_std": mech.noise_std,
            "dp_global_expected_participants": m,
        }

    def aggregate_cluster(
        self,
        model: FederationModel,
        cluster_id: int,
        base: Mapping[str, np.ndarray],
        members: Sequence[ClientUpdate],
    ) -> tuple[Tensors, Info]:
        """Each DP level of the cluster released (or skipped), the rest by the wrapped rule."""
        by_level: dict[DPLevel, dict[str, np.ndarray]] = {}
        plain: dict[str, np.ndarray] = {}
        for name, tensor in base.items():
            level = cluster_dp_level(name)
            if level in self.mechanisms:
                by_level.setdefault(level, {})[name] = tensor
            else:
                plain[name] = tensor
        info: Info = {}
        out: Tensors = {}
        if plain:
            tensors, inner_info = self.inner.aggregate_cluster(model, cluster_id, plain, members)
            out.update(tensors)
            info.update(inner_info)
        if not by_level:
            return out, info
        m_k = max(1.0, float(self.expected_cluster(cluster_id)))
        info[f"dp_cluster_{cluster_id}_expected_participants"] = m_k
        if m_k < self.min_cluster_members:
            info[SKIPPED_KEY.format(cluster=cluster_id)] = 1.0
            for level_tensors in by_level.values():
                out.update({k: np.array(v, copy=True) for k, v in level_tensors.items()})
            self._withheld[cluster_id] = frozenset(k for t in by_level.values() for k in t)
            return out, info
        for level, level_base in by_level.items():
            tensors, clipped = self._release(level, level_base, members, m_k)
            out.update(tensors)
            info[f"dp_cluster_{cluster_id}_{level.value}_clipped_fraction"] = clipped
        return out, info
