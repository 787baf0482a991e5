"""Durable tensor files of the federation model, one folder per completed round, checksummed.

A round's snapshot is written in two steps around the database commit that records it:

1. :meth:`ModelStore.prepare` writes every file into a temporary folder
   (``.tmp-round-<round>-*``), fsyncs it and returns the SHA-256 of every file;
2. the caller records those digests with the round in the state store (one transaction);
3. :meth:`ModelStore.publish` renames the folder into place (``round-<round>``) in one
   atomic step.

So a final folder exists only for a round whose digests are committed: a crash leaves a
temporary folder (removed at the next start, or renamed into place when its round was
committed; see :mod:`~fedprompt_coordinator.state_check`), never a torn final folder. Every
load checks each file against the recorded digests and refuses a file that differs
(:class:`SnapshotIntegrityError`, naming the file).

A snapshot also holds the server optimizer's moments, when it keeps any
(:mod:`~fedprompt_coordinator.moment_files`): written, hashed, committed and renamed with the
model's files, read by :meth:`ModelStore.load_moments`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedprompt.codec import decode_payload_file, decode_tensors_file, write_tensors
from fedprompt.errors import InvalidArgumentError
from fedprompt.files import fsync_dir
from fedprompt_coordinator.domain import FederationModel, ServerMoments
from fedprompt_coordinator.moment_files import (
    MomentFileError,
    is_moment_file,
    moment_files,
    read_moment_files,
)

logger = logging.getLogger(__name__)

_ROUND_DIR = re.compile(r"^round-(\d{6})$")
_TMP_PREFIX = ".tmp-round-"
#: Bytes read at a time when a snapshot file is hashed.
_READ_BYTES = 4 * 1024 * 1024

#: File name -> SHA-256 (hex) of every file of one snapshot.
SnapshotDigests = Mapping[str, str]


class SnapshotIntegrityError(Exception):
    """A snapshot file is missing, unexpected, or differs from its recorded SHA-256."""


@dataclass(frozen=True)
class PreparedSnapshot:
    """A snapshot written and fsynced under a temporary name, not yet in place.

    Attributes
    ----------
    round
        The round whose model it holds (0 = initial model).
    folder
        The temporary folder.
    files
        SHA-256 (hex) of every file, by file name: what the state store records.
    """

    round: int
    folder: Path
    files: dict[str, str]


class _HashingWriter:
    """A binary file that hashes what is written through it."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.sha256.update(data)
        return self._sink.write(data)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's content, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


class ModelStore:
    """Reads and writes :class:`FederationModel` snapshots under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        #: Large uploads of the round in progress stream here (not durable: a restarted
        #: coordinator reruns the round, so leftovers are deleted at start).
        self.spool_dir = self.root / ".uploads"
        shutil.rmtree(self.spool_dir, ignore_errors=True)
        #: The download messages of large models of the round in progress (see
        #: :mod:`fedprompt_coordinator.encoded_model`; deleted with the round, and at start).
        self.download_dir = self.root / ".downloads"
        shutil.rmtree(self.download_dir, ignore_errors=True)

    def spool_file(self, round_id: int, client_id: str) -> Path:
        """A fresh file for an upload of ``client_id`` in ``round_id`` (round 0: initial)."""
        folder = self.spool_dir / f"round-{round_id:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{client_id}-", suffix=".safetensors", dir=folder)
        os.close(fd)
        return Path(name)

    def drop_spool(self, round_id: int) -> None:
        """Delete the spooled uploads of ``round_id`` (after its checkpoint or failure)."""
        shutil.rmtree(self.spool_dir / f"round-{round_id:06d}", ignore_errors=True)

    def folder(self, round_id: int) -> Path:
        """Where the snapshot of ``round_id`` lives once published."""
        return self.root / f"round-{round_id:06d}"

    # ------------------------------------------------------------------ writing

    def prepare(
        self, round_id: int, model: FederationModel, *, moments: ServerMoments | None = None
    ) -> PreparedSnapshot:
        """Write ``model`` (the state after ``round_id``) and the server optimizer's
        ``moments`` (None: none) into a fsynced temporary folder.

        The folder is removed again when writing fails (a full disk, say), so a failed
        write leaves nothing behind.
        """
        files: dict[str, tuple[Mapping[str, np.ndarray], Mapping[str, str] | None]] = {
            "global.safetensors": (model.global_tensors, None),
            "template.safetensors": (model.cluster_template, None),
        }
        files.update(
            {f"cluster-{c}.safetensors": (t, None) for c, t in model.cluster_tensors.items()}
        )
        files.update(moment_files(moments) if moments is not None else {})
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{round_id:06d}-", dir=self.root))
        digests: dict[str, str] = {}
        try:
            for name, (tensors, metadata) in files.items():
                with open(tmp / name, "wb") as fh:
                    writer = _HashingWriter(fh)
                    # streams the arrays
                    write_tensors(writer, tensors, metadata=metadata)  # type: ignore[arg-type]
                    fh.flush()
                    os.fsync(fh.fileno())
                digests[name] = writer.sha256.hexdigest()
            fsync_dir(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return PreparedSnapshot(round=round_id, folder=tmp, files=digests)

    def publish(self, prepared: PreparedSnapshot) -> Path:
        """Rename a prepared snapshot into place (replacing an older one of the same round)."""
        final = self.folder(prepared.round)
        if final.exists():
            shutil.rmtree(final)
        os.replace(prepared.folder, final)
        fsync_dir(self.root)
        return final

    def discard(self, prepared: PreparedSnapshot) -> None:
        """Remove a prepared snapshot that will not be published."""
        shutil.rmtree(prepared.folder, ignore_errors=True)

    def save(
        self, round_id: int, model: FederationModel, *, moments: ServerMoments | None = None
    ) -> PreparedSnapshot:
        """Prepare and publish at once (no state store involved); returns the digests.

        The returned :class:`PreparedSnapshot`'s ``folder`` is the temporary name it had.
        """
        prepared = self.prepare(round_id, model, moments=moments)
        self.publish(prepared)
        return prepared

    # ------------------------------------------------------------------ reading

    def load(self, round_id: int, *, expected: SnapshotDigests) -> FederationModel:
        """Load the model saved after ``round_id``, checking every file against ``expected``.

        Raises
        ------
        FileNotFoundError
            When no snapshot of that round exists.
        SnapshotIntegrityError
            When a file is missing, unexpected or differs from its recorded SHA-256.
        """
        folder = self.folder(round_id)
        if not folder.is_dir():
            raise FileNotFoundError(f"no model snapshot for round {round_id} in {self.root}")
        self._check_names(round_id, expected)

        def read(name: str) -> dict[str, np.ndarray]:
            path = folder / name
            found = file_sha256(path)  # streamed, then memory-mapped: one copy in memory
            if found != expected[name]:
                raise SnapshotIntegrityError(_mismatch(path, round_id, expected[name], found))
            return {k: v.copy() for k, v in decode_tensors_file(path).items()}

        clusters = {
            int(name.removesuffix(".safetensors").split("-", 1)[1]): read(name)
            for name in sorted(expected)
            if name.startswith("cluster-")
        }
        return FederationModel(
            global_tensors=read("global.safetensors"),
            cluster_tensors=clusters,
            cluster_template=read("template.safetensors"),
        )

    def load_moments(self, round_id: int, *, expected: SnapshotDigests) -> ServerMoments:
        """The server optimizer's moments saved with ``round_id`` (empty when it has none),
        every moment file checked against ``expected`` and for its structure.

        Raises
        ------
        FileNotFoundError
            When no snapshot of that round exists.
        SnapshotIntegrityError
            When a moment file is missing, unexpected, differs from its recorded SHA-256 or
            is not a moment file this store writes (naming the file and what is wrong).
        """
        folder = self.folder(round_id)
        if not folder.is_dir():
            raise FileNotFoundError(f"no model snapshot for round {round_id} in {self.root}")
        self._check_names(round_id, expected)
        payloads = {}
        for name in sorted(n for n in expected if is_moment_file(n)):
            path = folder / name
            found = file_sha256(path)
            if found != expected[name]:
                raise SnapshotIntegrityError(_mismatch(path, round_id, expected[name], found))
            try:
                payloads[path] = decode_payload_file(path)
            except InvalidArgumentError as exc:
                raise SnapshotIntegrityError(
                    f"moment file {path} is not a safetensors file: {exc.message}"
                ) from exc
        try:
            return read_moment_files(payloads)
        except MomentFileError as exc:
            raise SnapshotIntegrityError(
                f"{exc}: the coordinator will not resume from moments it did not write"
            ) from exc

    def verify(self, round_id: int, expected: SnapshotDigests) -> None:
        """Check every file of a published snapshot against its recorded SHA-256.

        Raises
        ------
        SnapshotIntegrityError
            Naming the first file that is missing, unexpected or differs.
        """
        self._check_names(round_id, expected)
        folder = self.folder(round_id)
        for name in sorted(expected):
            found = file_sha256(folder / name)
            if found != expected[name]:
                raise SnapshotIntegrityError(
                    _mismatch(folder / name, round_id, expected[name], found)
                )

    def digests(self, round_id: int) -> dict[str, str]:
        """SHA-256 of every file of a published snapshot as it is on disk now."""
        folder = self.folder(round_id)
        return {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}

    def _check_names(self, round_id: int, expected: SnapshotDigests) -> None:
        folder = self.folder(round_id)
        present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        for name in sorted(set(expected) - present):
            raise SnapshotIntegrityError(
                f"snapshot file {folder / name} recorded with round {round_id} is missing"
            )
        for name in sorted(present - set(expected)):
            raise SnapshotIntegrityError(
                f"snapshot folder {folder} holds {name}, which was not recorded with round "
                f"{round_id}"
            )
        for required in ("global.safetensors", "template.safetensors"):
            if required not in expected:
                raise SnapshotIntegrityError(
                    f"the record of round {round_id} names no {required} (in {folder})"
                )

    # ------------------------------------------------------------------ listing, cleaning

    def rounds(self) -> list[int]:
        """Rounds with a published snapshot, ascending."""
        out = []
        for p in self.root.iterdir():
            m = _ROUND_DIR.match(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    def temporaries(self, round_id: int | None = None) -> list[Path]:
        """Temporary snapshot folders (of ``round_id`` only, when given), by name."""
        prefix = _TMP_PREFIX if round_id is None else f"{_TMP_PREFIX}{round_id:06d}-"
        return sorted(p for p in self.root.glob(f"{prefix}*") if p.is_dir())

    def adopt(self, folder: Path, round_id: int) -> Path:
        """Rename a temporary folder into place as the snapshot of ``round_id``."""
        return self.publish(PreparedSnapshot(round=round_id, folder=folder, files={}))

    def remove_temporaries(self) -> list[Path]:
        """Delete every temporary snapshot folder; returns what was removed."""
        removed = self.temporaries()
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return removed

    def discard_folder(self, round_id: int) -> None:
        """Delete the published snapshot of ``round_id`` (a leftover that was never committed)."""
        shutil.rmtree(self.folder(round_id), ignore_errors=True)

    def prune(self, *, keep_from: int) -> None:
        """Delete snapshots of rounds before ``keep_from``, except the initial model (round 0)."""
        for r in self.rounds():
            if 0 < r < keep_from:
                self.discard_folder(r)


def _mismatch(path: Path, round_id: int, expected: str, found: str) -> str:
    return (
        f"snapshot file {path} does not match the SHA-256 recorded with round {round_id} "
        f"(recorded {expected[:16]}..., found {found[:16]}...): the file was changed or "
        "corrupted on disk, and the coordinator will not train from it"
    )
