"""The models of one round as its clients receive them, each encoded once.

A round has two models per cluster: the round-start model (the cluster's tensors plus the
strategy's read-only extras, e.g. fpl's centroids) that TRAIN tasks carry, and the
aggregate that EVALUATE tasks carry. :class:`RoundModels` encodes each (stage, cluster)
once as safetensors bytes, for ``FetchModel`` and for the tasks that carry small models
inline, and forgets them with the round.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping

import numpy as np

from fedprompt.codec import encode_tensors
from fedprompt.errors import InvalidArgumentError, WrongRoundError
from fedprompt_coordinator.domain import FederationModel, InlineModel, ModelStage
from fedprompt_coordinator.round_progress import RoundInProgress


class RoundModels:
    """The round-start and aggregated models of one round, per cluster, encoded once.

    Parameters
    ----------
    current
        The round; its participants name the clusters, its ``aggregated`` model (set after
        aggregation) is the EVALUATE stage.
    start
        The model the round starts from.
    extras
        Read-only tensors every round-start model carries (the strategy's, computed once).
    inline_limit
        Payloads of at most this many bytes travel inline in their task (0: never).
    """

    def __init__(
        self,
        current: RoundInProgress,
        start: FederationModel,
        *,
        extras: Mapping[str, np.ndarray],
        inline_limit: int,
    ) -> None:
        self._current = current
        self._start = start
        self._extras = dict(extras)
        self._inline_limit = inline_limit
        self._payloads: dict[tuple[ModelStage, int], bytes] = {}
        self._inline: dict[tuple[ModelStage, int], InlineModel | None] = {}

    def _encode(self, stage: ModelStage, cluster: int) -> bytes:
        if stage is ModelStage.ROUND_START:
            return encode_tensors({**self._start.for_cluster(cluster), **self._extras})
        if stage is ModelStage.AGGREGATED:
            aggregated = self._current.aggregated
            if aggregated is None:
                raise WrongRoundError(f"round {self._current.round} has not been aggregated yet")
            return encode_tensors(aggregated.for_cluster(cluster))
        raise InvalidArgumentError("model stage must be ROUND_START or AGGREGATED")

    async def encode_round_start(self) -> None:
        """Encode the round-start model of every participating cluster, off the event loop."""
        clusters = sorted(set(self._current.participants.values()))

        def encode_all() -> dict[int, bytes]:
            return {c: self._encode(ModelStage.ROUND_START, c) for c in clusters}

        for cluster, payload in (await asyncio.to_thread(encode_all)).items():
            self._payloads[(ModelStage.ROUND_START, cluster)] = payload

    def payload(self, stage: ModelStage, cluster: int) -> bytes:
        """The safetensors bytes of a stage's model for one cluster.

        Raises
        ------
        WrongRoundError
            For the aggregated model before the round was aggregated.
        InvalidArgumentError
            For another stage.
        """
        key = (stage, cluster)
        cached = self._payloads.get(key)
        if cached is None:
            cached = self._payloads[key] = self._encode(stage, cluster)
        return cached

    def inline(self, stage: ModelStage, cluster: int) -> InlineModel | None:
        """The model a task carries inline, or None when it is over the inline limit."""
        if self._inline_limit <= 0:
            return None
        key = (stage, cluster)
        if key not in self._inline:
            payload = self.payload(stage, cluster)
            self._inline[key] = (
                InlineModel(data=payload, sha256=hashlib.sha256(payload).digest())
                if len(payload) <= self._inline_limit
                else None
            )
        return self._inline[key]
