"""The models of one round as its clients receive them, each encoded once.

A round has two models per cluster: the round-start model (the cluster's tensors plus the
strategy's read-only extras, e.g. fpl's centroids) that TRAIN tasks carry, and the
aggregate that EVALUATE tasks carry. :class:`RoundModels` encodes each (stage, cluster)
once, off the event loop, as the serialized ``FetchModel`` messages every reader gets
(:mod:`fedprompt_coordinator.encoded_model`; large models in a file, so that a round holds
the old and the new model in memory and nothing more), with the safetensors payload of
small models for the tasks that carry them inline. :meth:`RoundModels.close` drops them all
when the round ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedprompt.errors import InvalidArgumentError, WrongRoundError
from fedprompt_coordinator.domain import FederationModel, InlineModel, ModelStage
from fedprompt_coordinator.encoded_model import EncodedModel, encode_model
from fedprompt_coordinator.round_progress import RoundInProgress

#: Models whose data is over this many bytes keep their download messages in a file.
SPILL_BYTES = 8 * 1024 * 1024


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
    spill_dir
        Folder of the message files of models over ``spill_bytes`` (None: all in memory).
    spill_bytes
        Size of a model's data above which its messages go to a file
        (default :data:`SPILL_BYTES`).
    """

    def __init__(
        self,
        current: RoundInProgress,
        start: FederationModel,
        *,
        extras: Mapping[str, np.ndarray],
        inline_limit: int,
        spill_dir: Path | None = None,
        spill_bytes: int | None = None,
    ) -> None:
        self._current = current
        self._start = start
        self._extras = dict(extras)
        self._inline_limit = inline_limit
        self._spill_dir = spill_dir
        self._spill_bytes = SPILL_BYTES if spill_bytes is None else spill_bytes
        self._encoded: dict[tuple[ModelStage, int], EncodedModel] = {}
        self._closed = False

    def _tensors(self, stage: ModelStage, cluster: int) -> Mapping[str, np.ndarray]:
        if stage is ModelStage.ROUND_START:
            return {**self._start.for_cluster(cluster), **self._extras}
        if stage is ModelStage.AGGREGATED:
            aggregated = self._current.aggregated
            if aggregated is None:
                raise WrongRoundError(f"round {self._current.round} has not been aggregated yet")
            return aggregated.for_cluster(cluster)
        raise InvalidArgumentError("model stage must be ROUND_START or AGGREGATED")

    def _encode(self, stage: ModelStage, cluster: int) -> EncodedModel:
        return encode_model(
            self._tensors(stage, cluster),
            keep_payload_bytes=self._inline_limit,
            spill_bytes=self._spill_bytes,
            spill_dir=self._spill_dir,
        )

    async def _encode_stage(self, stage: ModelStage) -> None:
        clusters = sorted(set(self._current.participants.values()))
        todo = [c for c in clusters if (stage, c) not in self._encoded]

        def encode_all() -> dict[int, EncodedModel]:
            return {c: self._encode(stage, c) for c in todo}

        encoded = await asyncio.to_thread(encode_all)
        for cluster, model in encoded.items():
            # the round ended while the thread ran, or a reader had it encoded meanwhile
            if self._closed or (stage, cluster) in self._encoded:
                model.close()
            else:
                self._encoded[(stage, cluster)] = model

    async def encode_round_start(self) -> None:
        """Encode the round-start model of every participating cluster, off the event loop."""
        await self._encode_stage(ModelStage.ROUND_START)

    async def encode_aggregated(self) -> None:
        """Encode the aggregate of every participating cluster, off the event loop.

        Raises
        ------
        WrongRoundError
            Before the round was aggregated.
        """
        await self._encode_stage(ModelStage.AGGREGATED)

    def encoded(self, stage: ModelStage, cluster: int) -> EncodedModel:
        """The download of a stage's model for one cluster (encoded here if not yet).

        Raises
        ------
        WrongRoundError
            For the aggregated model before the round was aggregated, or once closed.
        InvalidArgumentError
            For another stage.
        """
        if self._closed:
            raise WrongRoundError(f"round {self._current.round} has moved on")
        key = (stage, cluster)
        cached = self._encoded.get(key)
        if cached is None:
            cached = self._encoded[key] = self._encode(stage, cluster)
        return cached

    def inline(self, stage: ModelStage, cluster: int) -> InlineModel | None:
        """The model a task carries inline, or None when it is over the inline limit."""
        if self._inline_limit <= 0:
            return None
        encoded = self.encoded(stage, cluster)
        payload = encoded.payload
        if payload is None or len(payload) > self._inline_limit:
            return None
        return InlineModel(data=payload, sha256=encoded.info.sha256)

    def close(self) -> None:
        """Drop every encoding (and its file); later reads raise ``WrongRoundError``."""
        self._closed = True
        for model in self._encoded.values():
            model.close()
        self._encoded.clear()
