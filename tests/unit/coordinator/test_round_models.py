"""The models of one round: each (stage, cluster) encoded once, inline when small."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedprompt.codec import decode_tensors
from fedprompt.errors import WrongRoundError
from fedprompt_coordinator.domain import FederationModel, ModelStage
from fedprompt_coordinator.round_models import RoundModels
from fedprompt_coordinator.round_progress import RoundInProgress

START = FederationModel(
    global_tensors={"prompt.global": np.ones((2, 3), np.float32)},
    cluster_tensors={0: {"prompt.cluster": np.zeros((1, 3), np.float32)}},
    cluster_template={"prompt.cluster": np.full((1, 3), 5.0, np.float32)},
)
EXTRAS = {"centroid.0": np.zeros(3, np.float32), "centroid.1": np.full(3, 5.0, np.float32)}


def _models(inline_limit: int = 1 << 20) -> tuple[RoundModels, RoundInProgress]:
    current = RoundInProgress(round=3, started_unix=0.0, participants={"a": 0, "b": 1})
    return RoundModels(current, START, extras=EXTRAS, inline_limit=inline_limit), current


@pytest.mark.asyncio
async def test_round_start_models_carry_their_cluster_and_the_extras_once_encoded() -> None:
    models, _ = _models()
    await models.encode_round_start()
    first = models.payload(ModelStage.ROUND_START, 1)
    assert models.payload(ModelStage.ROUND_START, 1) is first  # encoded once
    tensors = decode_tensors(first)
    assert sorted(tensors) == ["centroid.0", "centroid.1", "prompt.cluster", "prompt.global"]
    np.testing.assert_array_equal(tensors["prompt.cluster"], [[5.0, 5.0, 5.0]])  # a new cluster


def test_the_aggregate_exists_only_after_aggregation() -> None:
    models, current = _models()
    with pytest.raises(WrongRoundError, match="round 3 has not been aggregated yet"):
        models.payload(ModelStage.AGGREGATED, 0)
    current.aggregated = START
    assert "centroid.0" not in decode_tensors(models.payload(ModelStage.AGGREGATED, 0))


def test_small_models_travel_inline_with_their_sha256_and_large_ones_do_not() -> None:
    models, _ = _models()
    inline = models.inline(ModelStage.ROUND_START, 0)
    assert inline is not None and inline.sha256 == hashlib.sha256(inline.data).digest()
    assert models.inline(ModelStage.ROUND_START, 0) is inline
    tiny, _ = _models(inline_limit=10)
    assert tiny.inline(ModelStage.ROUND_START, 0) is None
    never, _ = _models(inline_limit=0)
    assert never.inline(ModelStage.ROUND_START, 0) is None
