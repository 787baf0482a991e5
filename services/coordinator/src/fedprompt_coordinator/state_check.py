"""Start-up check of the state dir: the database against the snapshot folders, every file hashed.

A coordinator resumes from its state dir (``state.sqlite3`` and ``models/round-*``). Before it
trusts either, :func:`verify_state` checks that they agree:

* every published snapshot folder has its files' SHA-256 recorded in the database, and every
  file matches its digest (a flipped byte is refused, naming the file);
* the database's last completed round (and the initial model) have their folders;
* a folder the database has no record of means the database lost committed rounds (a lost
  or deleted SQLite WAL after a crash, a database file replaced by an older one): refused,
  never taken as a fresh start;
* a snapshot whose round was committed but whose folder was not yet renamed into place (a
  crash in between) is renamed now; other temporary folders (uncommitted writes) are removed.

Any disagreement raises :class:`StateIntegrityError` with what is inconsistent and how to
recover; the coordinator then exits non-zero without touching the state.

State dirs of earlier versions (no digests recorded, no ``state_format`` setting) are
migrated once: the digests of the snapshot folders as they are found are recorded (they
could not be checked: nothing was recorded before) and a warning says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fedprompt_coordinator.model_store import ModelStore, SnapshotIntegrityError, file_sha256
from fedprompt_coordinator.state_store import STATE_FORMAT, STATE_FORMAT_KEY, StateStore

logger = logging.getLogger(__name__)


class StateIntegrityError(Exception):
    """The state database and the snapshot folders disagree, or a snapshot file is corrupt."""


@dataclass(frozen=True)
class VerifiedState:
    """What the check found consistent.

    Attributes
    ----------
    completed
        The last completed round (0: none).
    snapshots
        round -> (file name -> SHA-256 hex) of every recorded snapshot.
    """

    completed: int
    snapshots: dict[int, dict[str, str]]


def _recovery(state_dir: Path) -> str:
    return (
        "To recover, restore the whole state dir (state.sqlite3 together with its -wal and "
        f"-shm files, and models/) from a backup; to start a new federation on purpose, move "
        f"{state_dir} away."
    )


def _names(models: ModelStore, rounds: list[int]) -> str:
    return ", ".join(models.folder(r).name for r in rounds)


def verify_state(state: StateStore, models: ModelStore) -> VerifiedState:
    """Check the database against the snapshot folders; fix only crash leftovers.

    Parameters
    ----------
    state
        The federation's state database.
    models
        The snapshot folders.

    Returns
    -------
    VerifiedState
        The last completed round and the recorded digests.

    Raises
    ------
    StateIntegrityError
        When the database lost committed rounds, a recorded snapshot is missing, or a
        snapshot file differs from its recorded SHA-256.
    """
    state_dir = models.root.parent
    completed = state.last_completed_round()
    folders = models.rounds()
    fmt = state.get_setting(STATE_FORMAT_KEY)
    if fmt is None:
        if state.is_empty():
            if folders:
                raise StateIntegrityError(
                    f"the state database in {state_dir} is empty, but snapshot folders "
                    f"{_names(models, folders)} exist in {models.root}: the database lost "
                    "its committed rounds (for example its write-ahead log state.sqlite3-wal "
                    "was deleted or lost after a crash). Starting fresh would silently re-run "
                    "those rounds from the initial model, so the coordinator stops. "
                    + _recovery(state_dir)
                )
            state.set_setting(STATE_FORMAT_KEY, STATE_FORMAT)
            _remove_uncommitted(models)
            return VerifiedState(completed=0, snapshots={})
        _migrate(state, models, completed, folders)
        folders = models.rounds()
    elif fmt != STATE_FORMAT:
        raise StateIntegrityError(
            f"the state database in {state_dir} has format {fmt!r}; this coordinator reads "
            f"format {STATE_FORMAT!r} (was it written by a newer version?)"
        )
    snapshots = state.snapshots()
    folders = _roll_forward(models, snapshots, folders)
    unrecorded = [r for r in folders if r not in snapshots]
    if unrecorded:
        raise StateIntegrityError(
            f"snapshot folders {_names(models, unrecorded)} in {models.root} have no record in "
            f"the state database (which records {completed} completed rounds): the database "
            "lost committed rounds (for example its write-ahead log state.sqlite3-wal was "
            "deleted or lost after a crash, or an older copy of state.sqlite3 was put back). "
            "Resuming would silently re-run those rounds, so the coordinator stops. "
            + _recovery(state_dir)
        )
    required = sorted({completed, 0} if completed or 0 in snapshots else set())
    for r in required:
        if r not in snapshots:
            raise StateIntegrityError(
                f"the state database records {completed} completed rounds but no snapshot "
                f"digests of round {r}. " + _recovery(state_dir)
            )
        if r not in folders:
            raise StateIntegrityError(
                f"the snapshot of round {r} recorded in the state database is missing: no "
                f"folder {models.folder(r)}. " + _recovery(state_dir)
            )
    for r in folders:
        try:
            models.verify(r, snapshots[r])
        except (SnapshotIntegrityError, OSError) as exc:
            raise StateIntegrityError(f"{exc}. {_recovery(state_dir)}") from exc
    _remove_uncommitted(models)
    if folders:
        logger.info(
            "state verified: %d completed rounds, snapshots %s match their SHA-256",
            completed,
            _names(models, folders),
        )
    return VerifiedState(completed=completed, snapshots=snapshots)


def _roll_forward(
    models: ModelStore, snapshots: dict[int, dict[str, str]], folders: list[int]
) -> list[int]:
    """Rename committed-but-unpublished snapshots into place; returns the folders now."""
    present = set(folders)
    for r, files in sorted(snapshots.items()):
        if r in present:
            continue
        for candidate in models.temporaries(r):
            found = {p.name: p for p in candidate.iterdir() if p.is_file()}
            if set(found) != set(files):
                continue
            if all(file_sha256(found[name]) == digest for name, digest in files.items()):
                models.adopt(candidate, r)
                present.add(r)
                logger.warning(
                    "round %d was committed but its snapshot folder was not yet in place (a "
                    "crash in between): %s renamed to %s",
                    r,
                    candidate.name,
                    models.folder(r).name,
                )
                break
    return sorted(present)


def _remove_uncommitted(models: ModelStore) -> None:
    for path in models.remove_temporaries():
        logger.warning("removed %s, a snapshot write that was never committed", path)


def _migrate(state: StateStore, models: ModelStore, completed: int, folders: list[int]) -> None:
    """Record digests of the snapshots of a state dir written by an earlier version."""
    state_dir = models.root.parent
    beyond = [r for r in folders if r > completed + 1]
    if beyond:
        raise StateIntegrityError(
            f"snapshot folders {_names(models, beyond)} in {models.root} are ahead of the state "
            f"database, which records {completed} completed rounds: the database lost "
            "committed rounds. " + _recovery(state_dir)
        )
    # An earlier version renamed a round's folder into place before its commit: a folder of
    # the next round is an uncommitted write of a crashed round, not a completed round.
    for r in folders:
        if r == completed + 1 and r > 0:
            models.discard_folder(r)
            logger.warning(
                "removed %s: written by an earlier version for round %d, which never completed",
                models.folder(r).name,
                r,
            )
    kept = [r for r in folders if r <= completed]
    for r in kept:
        state.record_snapshot(r, models.digests(r))
    state.set_setting(STATE_FORMAT_KEY, STATE_FORMAT)
    logger.warning(
        "state dir from an earlier version migrated: the SHA-256 of snapshots %s was recorded "
        "as found (it could not be checked: no digests were recorded before); from now on "
        "every snapshot is checked at start",
        _names(models, kept) or "(none)",
    )
