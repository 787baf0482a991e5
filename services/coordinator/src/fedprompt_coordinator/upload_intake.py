"""Upload intake: everything between an upload's header and an accepted update.

The servicer drives one upload through four calls and never sees how its bytes are kept::

    upload = intake.begin(...)        # header checks, before any chunk is read
    await upload.add(chunk)           # per chunk: in memory, or spooled to a file
    await intake.finish(upload)       # decode, decompress, validate, duplicate check, accept
    await intake.discard(upload)      # the stream failed or was cut off

Payloads over :data:`SPOOL_THRESHOLD_BYTES` stream into a spool file (bounded memory) whose
chunks are checked, hashed and written in a worker thread while the next chunk is received;
the accepted update's tensors then stay memory-mapped from that file until the round's
spool is dropped. Smaller payloads are assembled and decoded in memory.

Resources are bounded at :meth:`UploadIntake.begin`, before any chunk is read
(:class:`UploadLimits`): a client has at most one open upload (a second one is refused
``ABORTED`` while the first goes on); open uploads reserve their announced size, in memory
up to ``max_buffered_bytes`` together (beyond that they spool), on disk up to
``max_spool_bytes`` together (beyond that ``RESOURCE_EXHAUSTED``); the reservation ends
with the upload. Initial models come only from clients the coordinator asked (Join's
``initial_model_requested``), at most ``max_initial_model_bytes``, and only before the
federation's model exists; after that an asked client may send one late, idempotent
duplicate, bounded by the model's own size.

In a secure round (:class:`~fedprompt_coordinator.secure_round.SecureRound`) deltas are
refused and masked inputs (``UpdateKind.MASKED``) accepted from the members that expect to
send one: uint64 tensors of the group's layout, checked for names, shapes and dtype only
(masked values look uniformly random: there is no norm to check; the bound is checked on
the unmasked sum).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedprompt.chunking import ChunkAssembler, ChunkData, PayloadInfo
from fedprompt.client_input import DEFAULT_MAX_EXAMPLES, check_count, check_metrics
from fedprompt.codec import DecodedPayload, decode_payload, decode_payload_file
from fedprompt.compression import decompress_tensors
from fedprompt.errors import (
    BusyError,
    ConflictError,
    InvalidArgumentError,
    NotParticipantError,
    OverCapacityError,
    WrongRoundError,
)
from fedprompt_coordinator.domain import ClientUpdate, Phase, TensorSpec, UpdateKind
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.round_progress import UPLOAD_UPDATE, RoundProgress
from fedprompt_coordinator.secure_round import SecureRound
from fedprompt_coordinator.sessions import ClientSessions
from fedprompt_coordinator.validation import check_update_size, validate_update

logger = logging.getLogger(__name__)

#: Uploads larger than this stream to a file instead of memory (then are memory-mapped).
SPOOL_THRESHOLD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on uploads, each checked at the header (see ``limits`` in the coordinator config).

    Parameters
    ----------
    max_update_bytes
        Largest payload a delta may announce.
    max_initial_model_bytes
        Largest initial model a client may announce.
    max_spool_bytes
        Announced bytes that open spooled uploads may reserve together.
    max_buffered_bytes
        Announced bytes that open in-memory uploads may reserve together.
    """

    max_update_bytes: int
    max_initial_model_bytes: int
    max_spool_bytes: int
    max_buffered_bytes: int


@dataclass
class Upload:
    """An upload between its header and its last chunk.

    Payloads over :data:`SPOOL_THRESHOLD_BYTES` stream into ``spool_path`` (bounded
    memory); smaller ones are assembled in memory.
    """

    client_id: str
    round: int
    kind: UpdateKind
    num_examples: int
    info: PayloadInfo
    assembler: ChunkAssembler
    spool_path: Path | None = None
    spool_file: BinaryIO | None = None
    #: Training metrics sent in the upload's header, stored when the update is accepted.
    train_metrics: dict[str, float] = field(default_factory=dict)
    #: Announced bytes this upload reserves of the spool (or of upload memory) while open.
    reserved_bytes: int = 0
    #: The spooled chunk being checked and written by the worker thread, if any.
    _in_flight: asyncio.Future[None] | None = field(default=None, init=False, repr=False)

    @property
    def received_bytes(self) -> int:
        """Payload bytes accepted so far."""
        return self.assembler.received_bytes

    async def add(self, chunk: ChunkData) -> None:
        """Feed the next chunk, or raise the coded error of what is wrong with it.

        In memory the chunk is checked on the event loop. Spooled, it is checked, hashed and
        written in a worker thread (CRC-32, SHA-256 and file writes release the GIL) while
        the next one is received: at most one chunk is in flight and chunks are added in
        order, so this first waits for the previous chunk and raises its error, if any.
        """
        if self.spool_path is None:
            self.assembler.add(chunk)
            return
        await self.written()
        self._in_flight = asyncio.get_running_loop().run_in_executor(
            None, self.assembler.add, chunk
        )

    async def written(self) -> None:
        """Wait until the chunk in flight is written; raises its coded error, if any."""
        if self._in_flight is not None:
            # shielded: a cancelled upload leaves the worker to finish before its file goes
            await asyncio.shield(self._in_flight)

    async def settle(self) -> None:
        """Wait until the worker is done with the chunk in flight, whatever its outcome."""
        in_flight = self._in_flight
        if in_flight is None:
            return
        if not in_flight.done():
            await asyncio.shield(asyncio.wait([in_flight]))
        if not in_flight.cancelled():
            in_flight.exception()  # retrieved: the error that matters is being raised

    def close_spool(self, *, delete: bool) -> None:
        """Close the spool file (if any) and optionally delete it."""
        if self.spool_file is not None:
            self.spool_file.close()
            self.spool_file = None
        if delete and self.spool_path is not None:
            self.spool_path.unlink(missing_ok=True)

    def delete_spool_when_written(self) -> None:
        """Delete the spool file now, or as soon as the worker is done with its chunk."""
        in_flight = self._in_flight
        if in_flight is None or in_flight.done():
            self.close_spool(delete=True)
        else:
            in_flight.add_done_callback(lambda _: self.close_spool(delete=True))


class UploadIntake:
    """Checks, assembles, decodes and validates uploads, and accepts them into the round.

    Parameters
    ----------
    sessions
        The joined clients (uploads of anyone else are refused).
    progress
        Where the round state machine stands: deltas are accepted into its round in
        progress, in the training phase only.
    models
        Where spool files are made.
    limits
        Per-upload sizes and the budgets open uploads share.
    max_update_l2_norm
        Bound on the L2 norm of each tensor of a delta (None: no bound).
    spec
        The round's tensor spec (empty until the initial model is accepted).
    has_model
        Whether the federation's model exists (initial uploads are then late duplicates).
    accept_initial
        Takes a decoded initial model; returns True when one was already there (an
        idempotent duplicate). Raises a coded error for a model that does not fit.
    notify
        Called (and awaited) after a delta is accepted, to wake the round state machine.
    max_examples
        Largest example count a header may declare (``max_client_examples``).
    secure
        The secure round in progress, if any (None: deltas as usual).
    """

    def __init__(
        self,
        *,
        sessions: ClientSessions,
        progress: RoundProgress,
        models: ModelStore,
        limits: UploadLimits,
        max_update_l2_norm: float | None,
        spec: Callable[[], tuple[TensorSpec, ...]],
        has_model: Callable[[], bool],
        accept_initial: Callable[[str, dict[str, np.ndarray]], Awaitable[bool]],
        notify: Callable[[], Awaitable[None]],
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        secure: Callable[[], SecureRound | None] = lambda: None,
    ) -> None:
        self._secure = secure
        self._sessions = sessions
        self._progress = progress
        self._models = models
        self._limits = limits
        self._max_update_l2_norm = max_update_l2_norm
        self._max_examples = max_examples
        self._spec = spec
        self._has_model = has_model
        self._accept_initial = accept_initial
        self._notify = notify
        #: The open upload of each client (at most one).
        self._open: dict[str, Upload] = {}
        self._spooled_bytes = 0
        self._buffered_bytes = 0

    @property
    def open_uploads(self) -> int:
        """Uploads between their header and their end."""
        return len(self._open)

    @property
    def open_clients(self) -> frozenset[str]:
        """The clients with an open upload."""
        return frozenset(self._open)

    @property
    def reserved_spool_bytes(self) -> int:
        """Announced bytes the open spooled uploads reserve."""
        return self._spooled_bytes

    @property
    def reserved_memory_bytes(self) -> int:
        """Announced bytes the open in-memory uploads reserve."""
        return self._buffered_bytes

    def begin(
        self,
        *,
        client_id: str,
        round_id: int,
        kind: UpdateKind,
        num_examples: int,
        info: PayloadInfo,
        train_metrics: Mapping[str, float] | None = None,
    ) -> Upload:
        """Check an upload header before any chunk is read, and reserve what it announces.

        Every refusal here costs the coordinator nothing but the header: a second open
        upload of the client (``ABORTED``), an initial model it was not asked for or that
        comes after the model exists (``FAILED_PRECONDITION``), an announced size over its
        limit or over what the spool has left (``RESOURCE_EXHAUSTED``).
        """
        session = self._sessions.require(client_id)
        if client_id in self._open:
            raise BusyError(
                f"client {client_id!r} already has an upload open; one upload at a time "
                "(retry when it has ended)"
            )
        metrics = check_metrics(train_metrics or {}, field="train_metrics")
        if kind is UpdateKind.INITIAL:
            # the initial model carries no weight: its count may be 0, never out of range
            check_count(num_examples, field="num_examples", maximum=self._max_examples, minimum=0)
            if round_id != 0:
                raise WrongRoundError("initial models are uploaded for round 0")
            self._check_initial(client_id, session.initial_model_asked, info.total_bytes)
            max_bytes = self._limits.max_initial_model_bytes
        elif kind is UpdateKind.DELTA:
            self._progress.require_participant(client_id, round_id, UPLOAD_UPDATE)
            if self._secure() is not None:
                raise WrongRoundError(
                    f"round {round_id} aggregates securely: deltas travel masked "
                    "(UPDATE_KIND_MASKED)"
                )
            check_count(num_examples, field="num_examples", maximum=self._max_examples)
            max_bytes = self._limits.max_update_bytes
            check_update_size(info.total_bytes, self._spec(), max_update_bytes=max_bytes)
        elif kind is UpdateKind.MASKED:
            self._progress.require_participant(client_id, round_id, UPLOAD_UPDATE)
            secure = self._secure()
            if secure is None or secure.round != round_id:
                raise WrongRoundError(f"round {round_id} does not aggregate securely")
            if not secure.expects_masked(client_id):
                raise NotParticipantError(
                    f"client {client_id!r} has no masked input to send in round {round_id}"
                )
            check_count(num_examples, field="num_examples", maximum=self._max_examples, minimum=0)
            max_bytes = self._limits.max_update_bytes
            check_update_size(info.total_bytes, secure.masked_spec, max_update_bytes=max_bytes)
        else:
            raise InvalidArgumentError("update kind must be INITIAL, DELTA or MASKED")
        assembler, path, sink = self._assembler(client_id, round_id, info, max_bytes=max_bytes)
        upload = Upload(
            client_id,
            round_id,
            kind,
            num_examples,
            info,
            assembler,
            path,
            sink,
            metrics,
            reserved_bytes=max(info.total_bytes, 0),
        )
        self._open[client_id] = upload
        if upload.spool_path is None:
            self._buffered_bytes += upload.reserved_bytes
        else:
            self._spooled_bytes += upload.reserved_bytes
        return upload

    def _check_initial(self, client_id: str, asked: bool, total_bytes: int) -> None:
        """Refuse an initial model the coordinator did not ask for, or too large a one."""
        if self._has_model():
            # the federation model exists: only a client asked before that may still send
            # its (late, idempotent) copy, once, and no larger than the model itself
            if not self._sessions.take_initial_model_ask(client_id):
                raise WrongRoundError(
                    "the federation's model exists: initial models are no longer accepted"
                )
            check_update_size(
                total_bytes, self._spec(), max_update_bytes=self._limits.max_initial_model_bytes
            )
            return
        if not asked:
            raise NotParticipantError(
                f"the coordinator did not ask client {client_id!r} for the initial model "
                "(only a Join answer with initial_model_requested does)"
            )
        check_update_size(total_bytes, (), max_update_bytes=self._limits.max_initial_model_bytes)

    def _assembler(
        self, client_id: str, round_id: int, info: PayloadInfo, *, max_bytes: int
    ) -> tuple[ChunkAssembler, Path | None, BinaryIO | None]:
        """Assemble in memory when small and memory allows, else spool (when the spool can).

        Returns the assembler and, for a spooled upload, its file's path and open file.
        """
        total = max(info.total_bytes, 0)
        limits = self._limits
        if (
            total <= SPOOL_THRESHOLD_BYTES
            and self._buffered_bytes + total <= limits.max_buffered_bytes
        ):
            return ChunkAssembler(info, max_total_bytes=max_bytes), None, None
        if self._spooled_bytes + total > limits.max_spool_bytes:
            raise OverCapacityError(
                f"the coordinator's upload spool is full ({self._spooled_bytes} of "
                f"{limits.max_spool_bytes} bytes reserved by open uploads; this one announces "
                f"{total}); retry later"
            )
        path = self._models.spool_file(round_id, client_id)
        sink = open(path, "wb")  # noqa: SIM115 - closed by finish / discard
        try:
            return ChunkAssembler(info, max_total_bytes=max_bytes, sink=sink), path, sink
        except BaseException:
            sink.close()
            path.unlink(missing_ok=True)
            raise

    def _release(self, upload: Upload) -> None:
        """End an upload's registration and reservation (idempotent)."""
        if self._open.get(upload.client_id) is not upload:
            return
        del self._open[upload.client_id]
        if upload.spool_path is None:
            self._buffered_bytes -= upload.reserved_bytes
        else:
            self._spooled_bytes -= upload.reserved_bytes

    async def discard(self, upload: Upload) -> None:
        """Forget an upload that failed or was cut off (deletes its spooled bytes).

        A chunk still being written is waited for first, so the file is never deleted
        under the worker (if this wait is cancelled, the file goes when the chunk is done).
        """
        try:
            await upload.settle()
        finally:
            upload.delete_spool_when_written()
            self._release(upload)

    async def finish(self, upload: Upload) -> bool:
        """Validate and store a complete upload; returns True for an idempotent duplicate.

        On any error the upload is discarded before the error is raised. Either way the
        upload's reservation ends (an accepted spooled update keeps its file, outside the
        spool budget, until its round ends).
        """
        try:
            await upload.written()
            return await self._finish(upload)
        except BaseException:
            await self.discard(upload)
            raise
        finally:
            self._release(upload)

    async def _finish(self, upload: Upload) -> bool:
        payload = upload.assembler.finish()
        decoded: DecodedPayload
        if upload.spool_path is not None:
            upload.close_spool(delete=False)
            # memory-mapped, read-only views of the spooled file: never a copy in memory
            decoded = await asyncio.to_thread(decode_payload_file, upload.spool_path)
        else:
            decoded = decode_payload(payload)  # zero-copy header parse: no thread hop needed
        # fp16 / int8 uploads (a client option) become the float32 tensors of the round here,
        # before validation and aggregation see them
        tensors = decompress_tensors(decoded.tensors, decoded.metadata)
        if upload.kind is UpdateKind.INITIAL:
            try:
                duplicate = await self._accept_initial(upload.client_id, tensors)
            finally:
                upload.close_spool(delete=True)  # the model holds its own copies
            # used up once accepted; a refused model (NaN, say) may be sent again
            self._sessions.take_initial_model_ask(upload.client_id)
            return duplicate
        current = self._progress.current
        if (
            current is None
            or current.round != upload.round
            or self._progress.phase is not Phase.TRAINING
        ):
            raise WrongRoundError(f"round {upload.round} closed while the update was uploading")
        digest = upload.info.sha256
        previous = current.digests.get(upload.client_id)
        if previous is not None:
            if previous == digest:
                return True
            raise ConflictError(
                f"client {upload.client_id!r} already submitted a different update for round "
                f"{upload.round}"
            )
        if upload.kind is UpdateKind.MASKED:
            return await self._accept_masked(upload, tensors)
        spec = self._spec()
        if upload.spool_path is None:
            validate_update(tensors, spec, max_l2_norm=self._max_update_l2_norm)
        else:  # reading a large file: off the event loop, then re-check what may have moved
            await asyncio.to_thread(
                validate_update, tensors, spec, max_l2_norm=self._max_update_l2_norm
            )
            if self._progress.current is not current or self._progress.phase is not Phase.TRAINING:
                raise WrongRoundError(f"round {upload.round} closed while the update was checked")
            if upload.client_id in current.digests:
                if current.digests[upload.client_id] == digest:
                    upload.close_spool(delete=True)
                    return True
                raise ConflictError(
                    f"client {upload.client_id!r} already submitted a different update for "
                    f"round {upload.round}"
                )
        current.updates[upload.client_id] = ClientUpdate(
            client_id=upload.client_id,
            cluster_id=current.participants[upload.client_id],
            # the weight counts only what the client declared both at Join and in the upload
            num_examples=min(
                upload.num_examples, self._sessions.require(upload.client_id).num_train_examples
            ),
            # small payloads: own copies; spooled ones stay mapped from their file
            tensors=(
                tensors
                if upload.spool_path is not None
                else {k: np.array(v, copy=True) for k, v in tensors.items()}
            ),
        )
        current.digests[upload.client_id] = digest
        if upload.train_metrics:
            current.train_metrics[upload.client_id] = upload.train_metrics
        logger.info(
            "round %d: update from %s accepted (%d/%d)",
            upload.round,
            upload.client_id,
            len(current.updates),
            len(current.participants),
        )
        await self._notify()
        return False

    async def _accept_masked(self, upload: Upload, tensors: Mapping[str, np.ndarray]) -> bool:
        """Hand a masked input to the secure round (layout checked there, no norm check)."""
        current = self._progress.current
        secure = self._secure()
        assert current is not None  # checked by the caller
        if secure is None or secure.round != upload.round:
            raise WrongRoundError(f"round {upload.round} does not aggregate securely")
        try:
            secure.add_masked(
                upload.client_id, {k: np.array(v, copy=True) for k, v in tensors.items()}
            )
        finally:
            upload.close_spool(delete=True)  # the group's server holds its own copies
        current.updates[upload.client_id] = ClientUpdate(
            client_id=upload.client_id,
            cluster_id=current.participants[upload.client_id],
            num_examples=min(
                upload.num_examples, self._sessions.require(upload.client_id).num_train_examples
            ),
            tensors={},
        )
        current.digests[upload.client_id] = upload.info.sha256
        if upload.train_metrics:
            current.train_metrics[upload.client_id] = upload.train_metrics
        logger.info("round %d: masked input from %s accepted", upload.round, upload.client_id)
        await self._notify()
        return False
