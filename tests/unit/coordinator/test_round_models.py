"""The models of one round: each (stage, cluster) encoded once as FetchModel messages,
inline when small, in a file when large, dropped with the round."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedprompt.codec import decode_tensors, encode_tensors
from fedprompt.errors import WrongRoundError
from fedprompt.v1 import coordinator_pb2
from fedprompt_coordinator import round_models as round_models_module
from fedprompt_coordinator.domain import FederationModel, ModelStage
from fedprompt_coordinator.encoded_model import assemble, encode_model
from fedprompt_coordinator.round_models import RoundModels
from fedprompt_coordinator.round_progress import RoundInProgress

START = FederationModel(
    global_tensors={"prompt.global": np.ones((2, 3), np.float32)},
    cluster_tensors={0: {"prompt.cluster": np.zeros((1, 3), np.float32)}},
    cluster_template={"prompt.cluster": np.full((1, 3), 5.0, np.float32)},
)
EXTRAS = {"centroid.0": np.zeros(3, np.float32), "centroid.1": np.full(3, 5.0, np.float32)}


def _models(
    inline_limit: int = 1 << 20, start: FederationModel = START, **kwargs: Any
) -> tuple[RoundModels, RoundInProgress]:
    current = RoundInProgress(round=3, started_unix=0.0, participants={"a": 0, "b": 1})
    return RoundModels(current, start, extras=EXTRAS, inline_limit=inline_limit, **kwargs), current


def _payload(models: RoundModels, stage: ModelStage, cluster: int) -> bytes:
    return assemble(models.encoded(stage, cluster).messages())


def _big_start(rows: int) -> FederationModel:
    """A model of ``rows`` x 1000 float32 (4000 bytes a row), values all different."""
    rng = np.random.default_rng(rows)
    return FederationModel(
        global_tensors={"prompt.global": rng.standard_normal((rows, 1000)).astype(np.float32)},
        cluster_tensors={0: {"prompt.cluster": rng.standard_normal((7, 3)).astype(np.float32)}},
        cluster_template={"prompt.cluster": np.full((7, 3), 5.0, np.float32)},
    )


@pytest.mark.asyncio
async def test_round_start_models_carry_their_cluster_and_the_extras_once_encoded() -> None:
    models, _ = _models()
    await models.encode_round_start()
    first = models.encoded(ModelStage.ROUND_START, 1)
    assert models.encoded(ModelStage.ROUND_START, 1) is first  # encoded once
    tensors = decode_tensors(assemble(first.messages()))
    assert sorted(tensors) == ["centroid.0", "centroid.1", "prompt.cluster", "prompt.global"]
    np.testing.assert_array_equal(tensors["prompt.cluster"], [[5.0, 5.0, 5.0]])  # a new cluster


@pytest.mark.asyncio
async def test_the_aggregate_exists_only_after_aggregation() -> None:
    models, current = _models()
    with pytest.raises(WrongRoundError, match="round 3 has not been aggregated yet"):
        models.encoded(ModelStage.AGGREGATED, 0)
    with pytest.raises(WrongRoundError, match="round 3 has not been aggregated yet"):
        await models.encode_aggregated()
    current.aggregated = START
    await models.encode_aggregated()
    assert "centroid.0" not in decode_tensors(_payload(models, ModelStage.AGGREGATED, 0))


def test_small_models_travel_inline_with_their_sha256_and_large_ones_do_not() -> None:
    models, _ = _models()
    inline = models.inline(ModelStage.ROUND_START, 0)
    assert inline is not None and inline.sha256 == hashlib.sha256(inline.data).digest()
    assert inline.data == _payload(models, ModelStage.ROUND_START, 0)
    tiny, _ = _models(inline_limit=10)
    assert tiny.inline(ModelStage.ROUND_START, 0) is None
    never, _ = _models(inline_limit=0)
    assert never.inline(ModelStage.ROUND_START, 0) is None


@pytest.mark.parametrize(
    ("rows", "chunk_size", "backing"),
    [
        (2, 1 << 20, "inline"),  # fits a task: payload kept, one chunk
        (300, 1000, "memory"),  # 1.2 MB in 1000-byte chunks, messages in memory
        (3000, 4096, "file"),  # 12 MB, over the spill size: messages in a file
        (3000, 1 << 20, "file"),  # the real chunk size
    ],
)
def test_a_download_equals_the_model_bit_for_bit(
    tmp_path: Path, rows: int, chunk_size: int, backing: str
) -> None:
    start = _big_start(rows)
    tensors = {**start.for_cluster(0), **EXTRAS}
    expected = hashlib.sha256(encode_tensors(tensors)).digest()
    encoded = encode_model(
        tensors,
        keep_payload_bytes=1 << 20,
        spill_bytes=8 << 20,
        spill_dir=tmp_path,
        chunk_size=chunk_size,
    )
    assert (encoded.payload is not None) == (backing == "inline")
    assert (encoded.path is not None) == (backing == "file")
    assert encoded.info.sha256 == expected
    messages = list(encoded.messages())
    assert len(messages) == 1 + encoded.info.num_chunks > 1
    assert hashlib.sha256(assemble(messages)).digest() == expected
    # every message parses as protobuf's own FetchModelResponse and re-serializes the same
    for raw in messages:
        assert coordinator_pb2.FetchModelResponse.FromString(raw).SerializeToString() == raw
    assert sum(map(len, messages)) == encoded.wire_bytes
    encoded.close()
    assert list(tmp_path.iterdir()) == []


def test_concurrent_readers_of_a_file_backed_model_get_identical_bytes(tmp_path: Path) -> None:
    models, _ = _models(start=_big_start(3000), spill_dir=tmp_path, spill_bytes=1 << 20)
    encoded = models.encoded(ModelStage.ROUND_START, 0)
    assert encoded.path is not None and encoded.path.parent == tmp_path
    digests: list[bytes] = []

    def read() -> None:
        digests.append(hashlib.sha256(assemble(encoded.messages())).digest())

    threads = [threading.Thread(target=read) for _ in range(4)]
    interleaved = [encoded.messages() for _ in range(3)]  # readers a message apart
    for t in threads:
        t.start()
    parts: list[list[bytes]] = [[] for _ in interleaved]
    for step in zip(*interleaved, strict=True):
        for got, message in zip(parts, step, strict=True):
            got.append(message)
    for t in threads:
        t.join()
    digests += [hashlib.sha256(assemble(p)).digest() for p in parts]
    assert digests == [encoded.info.sha256] * 7


@pytest.mark.asyncio
async def test_messages_are_encoded_once_per_round_stage_and_cluster_however_many_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, ...]] = []
    real = round_models_module.encode_model

    def counting(tensors: Any, **kwargs: Any) -> Any:
        calls.append(tuple(sorted(tensors)))
        return real(tensors, **kwargs)

    monkeypatch.setattr(round_models_module, "encode_model", counting)
    models, current = _models(start=_big_start(3000), spill_dir=tmp_path, spill_bytes=1 << 20)
    await models.encode_round_start()
    assert len(calls) == 2  # clusters 0 and 1
    for _ in range(5):
        for cluster in (0, 1):
            for _ in assemble(models.encoded(ModelStage.ROUND_START, cluster).messages()):
                break
    current.aggregated = START
    await models.encode_aggregated()
    for _ in range(5):
        models.encoded(ModelStage.AGGREGATED, 1)
        models.inline(ModelStage.AGGREGATED, 1)
    assert len(calls) == 4


@pytest.mark.asyncio
async def test_the_encodings_are_dropped_when_the_round_ends(tmp_path: Path) -> None:
    models, current = _models(start=_big_start(3000), spill_dir=tmp_path, spill_bytes=1 << 20)
    await models.encode_round_start()
    current.aggregated = _big_start(2999)
    await models.encode_aggregated()
    assert len(list(tmp_path.iterdir())) == 4  # two stages x two clusters
    reading = models.encoded(ModelStage.AGGREGATED, 0).messages()
    next(reading)
    small, _ = _models()
    small_reading = small.encoded(ModelStage.ROUND_START, 0).messages()
    next(small_reading)
    models.close()
    small.close()
    assert list(tmp_path.iterdir()) == []  # no file survives its round
    with pytest.raises(WrongRoundError, match="moved on"):
        next(reading)  # a reader mid-download ends at its next message
    with pytest.raises(WrongRoundError, match="moved on"):
        next(small_reading)
    with pytest.raises(WrongRoundError, match="round 3 has moved on"):
        models.encoded(ModelStage.ROUND_START, 0)


@pytest.mark.asyncio
async def test_an_encoding_made_twice_by_a_race_keeps_one_and_deletes_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models, _ = _models(start=_big_start(3000), spill_dir=tmp_path, spill_bytes=1 << 20)
    real = round_models_module.encode_model

    def reader_meanwhile(tensors: Any, **kwargs: Any) -> Any:
        made = real(tensors, **kwargs)
        if not raced:  # a reader asks on the event loop while the thread encodes
            raced.append(asyncio.run_coroutine_threadsafe(first_reader(), loop).result(5))
        return made

    async def first_reader() -> Any:
        monkeypatch.setattr(round_models_module, "encode_model", real)
        return models.encoded(ModelStage.ROUND_START, 0)

    raced: list[Any] = []
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(round_models_module, "encode_model", reader_meanwhile)
    await models.encode_round_start()
    assert models.encoded(ModelStage.ROUND_START, 0) is raced[0]
    assert len(list(tmp_path.iterdir())) == 2  # cluster 0 once, cluster 1
    models.close()
    assert list(tmp_path.iterdir()) == []
