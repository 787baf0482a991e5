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
from fedprompt.codec import DecodedPayload, decode_payload, decode_payload_file
from fedprompt.compression import decompress_tensors
from fedprompt.errors import ConflictError, InvalidArgumentError, WrongRoundError
from fedprompt_coordinator.domain import ClientUpdate, Phase, TensorSpec, UpdateKind
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.round_progress import UPLOAD_UPDATE, RoundProgress
from fedprompt_coordinator.sessions import ClientSessions
from fedprompt_coordinator.validation import check_metrics, check_update_size, validate_update

logger = logging.getLogger(__name__)

#: Uploads larger than this stream to a file instead of memory (then are memory-mapped).
SPOOL_THRESHOLD_BYTES = 8 * 1024 * 1024


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
    max_update_bytes
        Largest payload any upload may announce.
    max_update_l2_norm
        Bound on the L2 norm of each tensor of a delta (None: no bound).
    spec
        The round's tensor spec (empty until the initial model is accepted).
    accept_initial
        Takes a decoded initial model; returns True when one was already there (an
        idempotent duplicate). Raises a coded error for a model that does not fit.
    notify
        Called (and awaited) after a delta is accepted, to wake the round state machine.
    """

    def __init__(
        self,
        *,
        sessions: ClientSessions,
        progress: RoundProgress,
        models: ModelStore,
        max_update_bytes: int,
        max_update_l2_norm: float | None,
        spec: Callable[[], tuple[TensorSpec, ...]],
        accept_initial: Callable[[str, dict[str, np.ndarray]], Awaitable[bool]],
        notify: Callable[[], Awaitable[None]],
    ) -> None:
        self._sessions = sessions
        self._progress = progress
        self._models = models
        self._max_update_bytes = max_update_bytes
        self._max_update_l2_norm = max_update_l2_norm
        self._spec = spec
        self._accept_initial = accept_initial
        self._notify = notify

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
        """Check an upload header before any chunk is read."""
        self._sessions.require(client_id)
        metrics = check_metrics(train_metrics or {})
        if kind is UpdateKind.INITIAL:
            if round_id != 0:
                raise WrongRoundError("initial models are uploaded for round 0")
        elif kind is UpdateKind.DELTA:
            self._progress.require_participant(client_id, round_id, UPLOAD_UPDATE)
            if num_examples <= 0:
                raise InvalidArgumentError("num_examples must be positive for a delta update")
            check_update_size(
                info.total_bytes, self._spec(), max_update_bytes=self._max_update_bytes
            )
        else:
            raise InvalidArgumentError("update kind must be INITIAL or DELTA")
        max_bytes = self._max_update_bytes
        if info.total_bytes <= SPOOL_THRESHOLD_BYTES or info.total_bytes > max_bytes:
            assembler = ChunkAssembler(info, max_total_bytes=max_bytes)
            return Upload(
                client_id, round_id, kind, num_examples, info, assembler, train_metrics=metrics
            )
        path = self._models.spool_file(round_id, client_id)
        sink = open(path, "wb")  # noqa: SIM115 - closed by finish / discard
        try:
            assembler = ChunkAssembler(info, max_total_bytes=max_bytes, sink=sink)
        except BaseException:
            sink.close()
            path.unlink(missing_ok=True)
            raise
        return Upload(client_id, round_id, kind, num_examples, info, assembler, path, sink, metrics)

    async def discard(self, upload: Upload) -> None:
        """Forget an upload that failed or was cut off (deletes its spooled bytes).

        A chunk still being written is waited for first, so the file is never deleted
        under the worker.
        """
        await upload.settle()
        upload.close_spool(delete=True)

    async def finish(self, upload: Upload) -> bool:
        """Validate and store a complete upload; returns True for an idempotent duplicate.

        On any error the upload is discarded before the error is raised.
        """
        try:
            await upload.written()
            return await self._finish(upload)
        except BaseException:
            await self.discard(upload)
            raise

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
                return await self._accept_initial(upload.client_id, tensors)
            finally:
                upload.close_spool(delete=True)  # the model holds its own copies
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
