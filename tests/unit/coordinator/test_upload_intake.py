"""Upload intake on its own: header checks, chunks in memory or spooled, finish, discard."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio

import fedprompt_coordinator.upload_intake as upload_intake_module
from fedprompt.chunking import ChunkData, PayloadInfo, describe_payload, split_payload
from fedprompt.codec import encode_tensors
from fedprompt.compression import compress_tensors
from fedprompt.errors import (
    CorruptPayloadError,
    InvalidArgumentError,
    NotParticipantError,
    UnknownClientError,
    WrongRoundError,
)
from fedprompt_coordinator.domain import Phase, UpdateKind
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.round_progress import RoundInProgress, RoundProgress
from fedprompt_coordinator.upload_intake import Upload, UploadIntake
from fedprompt_coordinator.validation import spec_of

DELTA = {
    "prompt.global": np.array([1.0, -2.0], np.float32),
    "prompt.cluster": np.array([0.5], np.float32),
}
TIMEOUT_S = 10.0


@dataclass
class Intake:
    intake: UploadIntake
    progress: RoundProgress
    models: ModelStore
    initial: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    notified: int = 0

    def begin(
        self,
        payload: bytes,
        *,
        client_id: str = "a",
        kind: UpdateKind = UpdateKind.DELTA,
        round_id: int | None = None,
        num_examples: int = 3,
    ) -> Upload:
        if round_id is None:
            round_id = 0 if kind is UpdateKind.INITIAL else 1
        return self.intake.begin(
            client_id=client_id,
            round_id=round_id,
            kind=kind,
            num_examples=num_examples,
            info=describe_payload(payload, chunk_size=8),
            train_metrics={"loss": 0.5},
        )

    async def send(self, upload: Upload, payload: bytes) -> bool:
        for chunk in split_payload(payload, chunk_size=8):
            await upload.add(chunk)
        return await self.intake.finish(upload)


@pytest_asyncio.fixture
async def intake(tmp_path: Path, join_clients: Any) -> Intake:
    sessions = await join_clients({"a": 5, "b": 1, "late": 1})
    current = RoundInProgress(round=1, started_unix=0.0, participants={"a": 0, "b": 1})
    progress = RoundProgress(phase=Phase.TRAINING, completed=0, current=current)
    models = ModelStore(tmp_path / "models")
    harness: Intake

    async def accept_initial(client_id: str, tensors: dict[str, np.ndarray]) -> bool:
        harness.initial.append((client_id, tensors))
        return False

    async def notify() -> None:
        harness.notified += 1

    harness = Intake(
        UploadIntake(
            sessions=sessions,
            progress=progress,
            models=models,
            max_update_bytes=1024 * 1024,
            max_update_l2_norm=100.0,
            spec=lambda: spec_of(DELTA),
            accept_initial=accept_initial,
            notify=notify,
        ),
        progress,
        models,
    )
    return harness


@pytest.fixture(params=[False, True], ids=["in-memory", "spooled"])
def spooled(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Runs a test with small uploads in memory, then with every upload spooled."""
    if request.param:
        monkeypatch.setattr(upload_intake_module, "SPOOL_THRESHOLD_BYTES", 0)
    return bool(request.param)


@pytest.fixture
def spool_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every upload spools to a file, however small."""
    monkeypatch.setattr(upload_intake_module, "SPOOL_THRESHOLD_BYTES", 0)


def _spooled_files(models: ModelStore) -> list[Path]:
    return [p for p in models.spool_dir.rglob("*") if p.is_file()]


@pytest.mark.asyncio
async def test_headers_are_checked_before_any_chunk(intake: Intake) -> None:
    payload = encode_tensors(DELTA)
    with pytest.raises(UnknownClientError):
        intake.begin(payload, client_id="ghost")
    with pytest.raises(NotParticipantError) as info:
        intake.begin(payload, client_id="late")
    assert info.value.status_code is grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(WrongRoundError, match="initial models are uploaded for round 0"):
        intake.begin(payload, kind=UpdateKind.INITIAL, round_id=1)
    with pytest.raises(InvalidArgumentError, match="num_examples"):
        intake.begin(payload, num_examples=0)
    intake.progress.phase = Phase.EVALUATION
    with pytest.raises(WrongRoundError, match="not accepting updates"):
        intake.begin(payload)


@pytest.mark.asyncio
async def test_a_delta_is_accepted_into_the_round_in_progress(
    intake: Intake, spooled: bool
) -> None:
    payload = encode_tensors(DELTA)
    upload = intake.begin(payload)
    assert (upload.spool_path is not None) is spooled
    assert not await intake.send(upload, payload)
    assert upload.received_bytes == len(payload)
    current = intake.progress.current
    assert current is not None
    update = current.updates["a"]
    assert (update.cluster_id, update.num_examples) == (0, 3)  # under the Join count of 5
    for name, value in DELTA.items():
        np.testing.assert_array_equal(update.tensors[name], value)
    assert current.train_metrics == {"a": {"loss": 0.5}}
    assert intake.notified == 1
    # the same bytes again: an idempotent duplicate, nothing new is stored
    assert await intake.send(intake.begin(payload), payload)
    assert intake.notified == 1


@pytest.mark.asyncio
async def test_an_updates_weight_is_at_most_the_count_declared_at_join(intake: Intake) -> None:
    payload = encode_tensors(DELTA)
    assert not await intake.send(intake.begin(payload, num_examples=10**9), payload)
    current = intake.progress.current
    assert current is not None
    assert current.updates["a"].num_examples == 5  # min(upload 10^9, Join 5)


@pytest.mark.asyncio
@pytest.mark.parametrize("method", ["fp16", "int8"])
async def test_compressed_payloads_become_float32_from_one_header_parse(
    intake: Intake, spooled: bool, method: str
) -> None:
    packed, meta = compress_tensors(DELTA, method)
    payload = encode_tensors(packed, metadata=meta)
    assert not await intake.send(intake.begin(payload), payload)
    current = intake.progress.current
    assert current is not None
    got = current.updates["a"].tensors
    assert sorted(got) == sorted(DELTA) and got["prompt.global"].dtype == np.float32
    np.testing.assert_allclose(got["prompt.global"], DELTA["prompt.global"], atol=2.0 / 127)


@pytest.mark.asyncio
async def test_an_initial_model_is_handed_over_and_leaves_no_file(
    intake: Intake, spooled: bool
) -> None:
    payload = encode_tensors(DELTA)
    assert not await intake.send(intake.begin(payload, kind=UpdateKind.INITIAL), payload)
    ((client_id, tensors),) = intake.initial
    assert client_id == "a" and sorted(tensors) == sorted(DELTA)
    assert _spooled_files(intake.models) == []


@pytest.mark.asyncio
@pytest.mark.usefixtures("spool_everything")
async def test_a_bad_spooled_chunk_fails_the_next_call_and_the_file_is_deleted(
    intake: Intake,
) -> None:
    payload = encode_tensors(DELTA)
    upload = intake.begin(payload)
    first, *rest = split_payload(payload, chunk_size=8)
    await upload.add(ChunkData(first.seq, first.data, first.crc32 ^ 1))  # written in a worker
    with pytest.raises(CorruptPayloadError, match="CRC-32"):
        await upload.add(rest[0])  # waits for the previous chunk and raises its error
    await intake.intake.discard(upload)
    assert _spooled_files(intake.models) == []
    current = intake.progress.current
    assert current is not None and current.updates == {}


@pytest.mark.asyncio
@pytest.mark.usefixtures("spool_everything")
async def test_discard_waits_for_the_chunk_in_flight_before_deleting_the_file(
    intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = encode_tensors(DELTA)
    upload = intake.begin(payload)
    assert upload.spool_path is not None
    release = threading.Event()
    writes: list[bool] = []
    real_add = upload.assembler.add

    def slow_add(chunk: ChunkData) -> None:
        release.wait(TIMEOUT_S)
        real_add(chunk)
        writes.append(upload.spool_path is not None and upload.spool_path.exists())

    monkeypatch.setattr(upload.assembler, "add", slow_add)
    await upload.add(next(split_payload(payload, chunk_size=8)))
    discard = asyncio.ensure_future(intake.intake.discard(upload))
    await asyncio.sleep(0.05)
    assert not discard.done() and upload.spool_path.exists()  # the worker still writes
    release.set()
    await asyncio.wait_for(discard, TIMEOUT_S)
    assert writes == [True] and not upload.spool_path.exists()


@pytest.mark.asyncio
@pytest.mark.usefixtures("spool_everything")
async def test_a_failed_finish_discards_the_upload(intake: Intake) -> None:
    payload = encode_tensors(DELTA)
    info = describe_payload(payload, chunk_size=8)
    upload = intake.intake.begin(
        client_id="b",
        round_id=1,
        kind=UpdateKind.DELTA,
        num_examples=1,
        info=PayloadInfo(info.total_bytes, info.num_chunks, b"\0" * 32),  # wrong SHA-256
    )
    with pytest.raises(CorruptPayloadError, match="SHA-256"):
        await intake.send(upload, payload)
    assert _spooled_files(intake.models) == []
