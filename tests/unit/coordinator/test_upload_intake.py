"""Upload intake on its own: header checks, chunks in memory or spooled, finish, discard."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable
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
    BusyError,
    CorruptPayloadError,
    InvalidArgumentError,
    NotParticipantError,
    OverCapacityError,
    TooLargeError,
    UnknownClientError,
    WrongRoundError,
)
from fedprompt_coordinator.domain import Phase, UpdateKind
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.round_progress import RoundInProgress, RoundProgress
from fedprompt_coordinator.sessions import ClientSessions
from fedprompt_coordinator.upload_intake import Upload, UploadIntake, UploadLimits
from fedprompt_coordinator.validation import spec_of

DELTA = {
    "prompt.global": np.array([1.0, -2.0], np.float32),
    "prompt.cluster": np.array([0.5], np.float32),
}
TIMEOUT_S = 10.0


#: Limits of the default harness: roomy next to the tiny payloads of these tests.
ROOMY = UploadLimits(
    max_update_bytes=1024 * 1024,
    max_initial_model_bytes=1024 * 1024,
    max_spool_bytes=4 * 1024 * 1024,
    max_buffered_bytes=4 * 1024 * 1024,
)


@dataclass
class Intake:
    intake: UploadIntake
    progress: RoundProgress
    models: ModelStore
    sessions: ClientSessions
    initial: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    notified: int = 0
    #: What the intake's ``has_model`` answers.
    model_exists: bool = False
    #: Raised by ``accept_initial`` when set (a model the federation refuses).
    refuse_initial: Exception | None = None

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


#: Builds an intake harness with the given limits.
MakeIntake = Callable[[UploadLimits], Awaitable[Intake]]


@pytest_asyncio.fixture
async def make_intake(tmp_path: Path, join_clients: Any) -> MakeIntake:
    async def make(limits: UploadLimits) -> Intake:
        sessions = await join_clients({"a": 5, "b": 1, "late": 1})
        for cid in ("a", "b"):  # as Federation.join records it before the model exists
            sessions.record_initial_model_ask(cid, asked=True)
        current = RoundInProgress(round=1, started_unix=0.0, participants={"a": 0, "b": 1})
        progress = RoundProgress(phase=Phase.TRAINING, completed=0, current=current)
        models = ModelStore(tmp_path / "models")
        harness: Intake

        async def accept_initial(client_id: str, tensors: dict[str, np.ndarray]) -> bool:
            if harness.refuse_initial is not None:
                raise harness.refuse_initial
            harness.initial.append((client_id, tensors))
            duplicate = harness.model_exists
            harness.model_exists = True
            return duplicate

        async def notify() -> None:
            harness.notified += 1

        harness = Intake(
            UploadIntake(
                sessions=sessions,
                progress=progress,
                models=models,
                limits=limits,
                max_update_l2_norm=100.0,
                spec=lambda: spec_of(DELTA),
                has_model=lambda: harness.model_exists,
                accept_initial=accept_initial,
                notify=notify,
            ),
            progress,
            models,
            sessions,
        )
        return harness

    return make


@pytest_asyncio.fixture
async def intake(make_intake: MakeIntake) -> Intake:
    return await make_intake(ROOMY)


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


# ------------------------------------------------------------------ resource limits


def _roomy(**changes: int) -> UploadLimits:
    return dataclasses.replace(ROOMY, **changes)


@pytest.mark.asyncio
async def test_a_client_has_one_open_upload_and_a_second_is_refused_before_any_buffer(
    intake: Intake, spooled: bool
) -> None:
    payload = encode_tensors(DELTA)
    first = intake.begin(payload)
    reserved = (intake.intake.reserved_memory_bytes, intake.intake.reserved_spool_bytes)
    files = _spooled_files(intake.models)
    with pytest.raises(BusyError, match="already has an upload open") as info:
        intake.begin(payload)
    assert info.value.status_code is grpc.StatusCode.ABORTED
    # the refusal reserved, buffered and spooled nothing
    assert (intake.intake.reserved_memory_bytes, intake.intake.reserved_spool_bytes) == reserved
    assert _spooled_files(intake.models) == files and intake.intake.open_uploads == 1
    # another client is not affected, and the first upload goes on
    other = intake.begin(payload, client_id="b")
    assert not await intake.send(first, payload)
    assert not await intake.send(other, payload)
    # ended uploads free their slot and their reservation
    assert intake.intake.open_uploads == 0
    assert (intake.intake.reserved_memory_bytes, intake.intake.reserved_spool_bytes) == (0, 0)
    assert await intake.send(intake.begin(payload), payload)  # a duplicate, but admitted


@pytest.mark.asyncio
async def test_a_discarded_upload_frees_its_slot_and_reservation(
    intake: Intake, spooled: bool
) -> None:
    payload = encode_tensors(DELTA)
    upload = intake.begin(payload)
    await upload.add(next(split_payload(payload, chunk_size=8)))
    await intake.intake.discard(upload)
    await intake.intake.discard(upload)  # idempotent
    assert intake.intake.open_uploads == 0
    assert (intake.intake.reserved_memory_bytes, intake.intake.reserved_spool_bytes) == (0, 0)
    assert _spooled_files(intake.models) == []
    assert not await intake.send(intake.begin(payload), payload)


@pytest.mark.asyncio
async def test_initial_models_come_only_from_asked_clients(intake: Intake) -> None:
    payload = encode_tensors(DELTA)
    with pytest.raises(NotParticipantError, match="did not ask client 'late'") as info:
        intake.begin(payload, client_id="late", kind=UpdateKind.INITIAL)
    assert info.value.status_code is grpc.StatusCode.FAILED_PRECONDITION
    assert intake.intake.open_uploads == 0


@pytest.mark.asyncio
async def test_an_initial_model_is_size_checked_at_its_header(make_intake: MakeIntake) -> None:
    payload = encode_tensors(DELTA)
    h = await make_intake(_roomy(max_initial_model_bytes=len(payload) - 1))
    with pytest.raises(TooLargeError, match="exceeds the limit") as info:
        h.begin(payload, kind=UpdateKind.INITIAL)
    assert info.value.status_code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert h.intake.open_uploads == 0 and _spooled_files(h.models) == []


@pytest.mark.asyncio
async def test_after_the_model_exists_an_asked_client_may_send_one_bounded_duplicate(
    intake: Intake,
) -> None:
    payload = encode_tensors(DELTA)
    assert not await intake.send(intake.begin(payload, kind=UpdateKind.INITIAL), payload)
    assert intake.model_exists
    # "a" provided the model: its ask is used up
    with pytest.raises(WrongRoundError, match="model exists"):
        intake.begin(payload, kind=UpdateKind.INITIAL)
    # "b" was asked too: one late copy, bounded by the model's size, before any chunk...
    too_big = encode_tensors({**DELTA, "extra": np.zeros(4096, np.float32)})
    with pytest.raises(TooLargeError, match="larger than the round's tensors"):
        intake.begin(too_big, client_id="b", kind=UpdateKind.INITIAL)
    # ...and that refusal used the ask up as well
    with pytest.raises(WrongRoundError, match="model exists"):
        intake.begin(payload, client_id="b", kind=UpdateKind.INITIAL)
    # a client that was never asked is refused whatever it sends
    with pytest.raises(WrongRoundError, match="model exists"):
        intake.begin(payload, client_id="late", kind=UpdateKind.INITIAL)


@pytest.mark.asyncio
async def test_a_late_duplicate_of_the_same_layout_is_idempotent(intake: Intake) -> None:
    payload = encode_tensors(DELTA)
    assert not await intake.send(intake.begin(payload, kind=UpdateKind.INITIAL), payload)
    assert await intake.send(intake.begin(payload, client_id="b", kind=UpdateKind.INITIAL), payload)


@pytest.mark.asyncio
async def test_a_refused_initial_model_keeps_the_ask(intake: Intake) -> None:
    payload = encode_tensors(DELTA)
    intake.refuse_initial = InvalidArgumentError("the initial model holds NaN")
    with pytest.raises(InvalidArgumentError, match="NaN"):
        await intake.send(intake.begin(payload, kind=UpdateKind.INITIAL), payload)
    intake.refuse_initial = None
    assert not await intake.send(intake.begin(payload, kind=UpdateKind.INITIAL), payload)


@pytest.mark.asyncio
async def test_open_uploads_share_a_spool_budget(make_intake: MakeIntake) -> None:
    payload = encode_tensors(DELTA)
    # no upload memory: everything spools; room for one payload only
    h = await make_intake(_roomy(max_buffered_bytes=0, max_spool_bytes=len(payload)))
    first = h.begin(payload)
    assert first.spool_path is not None
    assert h.intake.reserved_spool_bytes == len(payload)
    with pytest.raises(OverCapacityError, match="spool is full") as info:
        h.begin(payload, client_id="b")
    assert info.value.status_code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _spooled_files(h.models) == [first.spool_path]  # nothing made for the refused one
    assert not await h.send(first, payload)
    assert h.intake.reserved_spool_bytes == 0  # the accepted update left the budget
    assert not await h.send(h.begin(payload, client_id="b"), payload)


@pytest.mark.asyncio
async def test_upload_memory_is_bounded_and_the_overflow_spools(make_intake: MakeIntake) -> None:
    payload = encode_tensors(DELTA)
    h = await make_intake(_roomy(max_buffered_bytes=len(payload), max_spool_bytes=len(payload)))
    in_memory = h.begin(payload)
    spilled = h.begin(payload, client_id="b")
    assert in_memory.spool_path is None and spilled.spool_path is not None
    assert h.intake.reserved_memory_bytes == len(payload)
    assert h.intake.reserved_spool_bytes == len(payload)
    h.sessions.record_initial_model_ask("late", asked=True)
    with pytest.raises(OverCapacityError):  # memory and spool are both taken
        h.begin(payload, client_id="late", kind=UpdateKind.INITIAL)
    await h.intake.discard(in_memory)
    late = h.begin(payload, client_id="late", kind=UpdateKind.INITIAL)  # memory is free again
    assert late.spool_path is None
    assert not await h.send(spilled, payload)
    assert not await h.send(late, payload)
    assert (h.intake.reserved_memory_bytes, h.intake.reserved_spool_bytes) == (0, 0)
