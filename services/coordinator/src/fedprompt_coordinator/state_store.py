"""Durable federation state behind one interface: clients, assignments, rounds, settings.

:class:`StateStore` is the contract; :class:`SqliteStateStore` keeps everything in one
SQLite file (WAL, synchronous=FULL) so a killed coordinator resumes from the last
completed round. ``make_state_store(":memory:")`` gives a throw-away store for tests.

The SHA-256 of every snapshot file is recorded with its round (in the transaction that
marks the round completed; for the initial model, with the tensor spec), so that the
snapshot folders can be checked against the database at start-up
(:mod:`~fedprompt_coordinator.state_check`).
"""

from __future__ import annotations

import abc
import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from fedprompt_coordinator.domain import ClientRoundRecord, RoundRecord

#: Setting that marks a state database of this format (snapshot digests recorded). A
#: database without it is either new (empty) or from an earlier version (see
#: :mod:`~fedprompt_coordinator.state_check`).
STATE_FORMAT_KEY = "state_format"
#: The current state format.
STATE_FORMAT = "2"


class StateStore(abc.ABC):
    """What the coordinator must keep across restarts."""

    @abc.abstractmethod
    def get_setting(self, key: str) -> str | None:
        """Return a stored setting (model fingerprint, tensor spec, ...) or None."""

    @abc.abstractmethod
    def set_setting(self, key: str, value: str) -> None:
        """Store a setting durably."""

    @abc.abstractmethod
    def upsert_client(
        self, *, client_id: str, metadata_json: str, num_train_examples: int, device: str
    ) -> None:
        """Insert or update a client's registration."""

    @abc.abstractmethod
    def clients(self) -> dict[str, tuple[str, int, str]]:
        """client id -> (metadata JSON, number of training examples, device)."""

    @abc.abstractmethod
    def set_assignment(self, assignment: dict[str, int]) -> None:
        """Replace the current cluster assignment."""

    @abc.abstractmethod
    def assignment(self) -> dict[str, int]:
        """The current cluster assignment."""

    @abc.abstractmethod
    def record_round(
        self,
        record: RoundRecord,
        *,
        snapshot: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Store a finished round; a completed one also becomes the last completed round.

        ``snapshot`` (file name -> SHA-256 hex of the round's model snapshot) and
        ``settings`` are recorded in the same transaction.
        """

    @abc.abstractmethod
    def record_snapshot(
        self,
        round_id: int,
        files: Mapping[str, str],
        *,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Record (or replace) the digests of a round's snapshot, with settings, atomically."""

    @abc.abstractmethod
    def snapshots(self) -> dict[int, dict[str, str]]:
        """round -> (file name -> SHA-256 hex) of every recorded snapshot."""

    @abc.abstractmethod
    def is_empty(self) -> bool:
        """True when the store holds nothing at all (a new, or a lost, database)."""

    @abc.abstractmethod
    def rounds(self) -> list[RoundRecord]:
        """Every stored round, ascending."""

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release the store's resources; the default holds none."""

    def last_completed_round(self) -> int:
        """The highest completed round, 0 when none."""
        done = [r.round for r in self.rounds() if r.status == "completed"]
        return max(done, default=0)


class SqliteStateStore(StateStore):
    """:class:`StateStore` on SQLite; safe to call from several threads."""

    _SCHEMA = """
    CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS clients (
        client_id TEXT PRIMARY KEY, metadata_json TEXT NOT NULL,
        num_train_examples INTEGER NOT NULL, device TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS assignment (client_id TEXT PRIMARY KEY, cluster_id INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS rounds (
        round INTEGER NOT NULL, attempt INTEGER NOT NULL, status TEXT NOT NULL,
        started_unix REAL NOT NULL, finished_unix REAL NOT NULL, num_clusters INTEGER NOT NULL,
        summary_json TEXT NOT NULL, PRIMARY KEY (round, attempt));
    CREATE TABLE IF NOT EXISTS client_rounds (
        round INTEGER NOT NULL, attempt INTEGER NOT NULL, client_id TEXT NOT NULL,
        cluster_id INTEGER NOT NULL, num_examples INTEGER NOT NULL, update_accepted INTEGER NOT NULL,
        bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL,
        train_metrics_json TEXT NOT NULL, eval_metrics_json TEXT NOT NULL,
        PRIMARY KEY (round, attempt, client_id));
    CREATE TABLE IF NOT EXISTS snapshot_files (
        round INTEGER NOT NULL, file TEXT NOT NULL, sha256 TEXT NOT NULL,
        PRIMARY KEY (round, file));
    """
    _TABLES = ("settings", "clients", "assignment", "rounds", "client_rounds", "snapshot_files")

    def __init__(self, path: str | Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(self._SCHEMA)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (the caller holds the lock): committed, or rolled back.

        SQLite rolls a transaction back by itself when its COMMIT fails (a full disk:
        ``SQLITE_FULL``); the original error is then raised, not a failed ROLLBACK.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def get_setting(self, key: str) -> str | None:
        """Return a stored setting or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        """Store a setting durably."""
        with self._lock:
            self._db.execute(
                "INSERT INTO settings(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def upsert_client(
        self, *, client_id: str, metadata_json: str, num_train_examples: int, device: str
    ) -> None:
        """Insert or update a client's registration."""
        with self._lock:
            self._db.execute(
                "INSERT INTO clients VALUES(?, ?, ?, ?) ON CONFLICT(client_id) DO UPDATE SET "
                "metadata_json=excluded.metadata_json, "
                "num_train_examples=excluded.num_train_examples, device=excluded.device",
                (client_id, metadata_json, num_train_examples, device),
            )

    def clients(self) -> dict[str, tuple[str, int, str]]:
        """client id -> (metadata JSON, number of training examples, device)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM clients ORDER BY client_id").fetchall()
        return {r[0]: (r[1], int(r[2]), r[3]) for r in rows}

    def set_assignment(self, assignment: dict[str, int]) -> None:
        """Replace the current cluster assignment in one transaction."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM assignment")
            self._db.executemany("INSERT INTO assignment VALUES(?, ?)", sorted(assignment.items()))

    def assignment(self) -> dict[str, int]:
        """The current cluster assignment."""
        with self._lock:
            rows = self._db.execute("SELECT client_id, cluster_id FROM assignment").fetchall()
        return {r[0]: int(r[1]) for r in rows}

    def record_round(
        self,
        record: RoundRecord,
        *,
        snapshot: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Store a round, its client records, snapshot digests and settings in one transaction."""
        with self._lock, self._transaction():
            if snapshot is not None:
                self._put_snapshot(record.round, snapshot)
            self._put_settings(settings or {})
            (attempt,) = self._db.execute(
                "SELECT COALESCE(MAX(attempt), 0) + 1 FROM rounds WHERE round=?",
                (record.round,),
            ).fetchone()
            self._db.execute(
                "INSERT INTO rounds VALUES(?, ?, ?, ?, ?, ?, ?)",
                (
                    record.round,
                    attempt,
                    record.status,
                    record.started_unix,
                    record.finished_unix,
                    record.num_clusters,
                    json.dumps(record.summary),
                ),
            )
            self._db.executemany(
                "INSERT INTO client_rounds VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        record.round,
                        attempt,
                        c.client_id,
                        c.cluster_id,
                        c.num_examples,
                        int(c.update_accepted),
                        c.bytes_up,
                        c.bytes_down,
                        json.dumps(c.train_metrics),
                        json.dumps(c.eval_metrics),
                    )
                    for c in record.clients
                ],
            )

    def _put_snapshot(self, round_id: int, files: Mapping[str, str]) -> None:
        """Replace the digests of ``round_id`` (inside the caller's transaction)."""
        self._db.execute("DELETE FROM snapshot_files WHERE round=?", (round_id,))
        self._db.executemany(
            "INSERT INTO snapshot_files VALUES(?, ?, ?)",
            [(round_id, name, digest) for name, digest in sorted(files.items())],
        )

    def record_snapshot(
        self,
        round_id: int,
        files: Mapping[str, str],
        *,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """Record the digests of a round's snapshot and some settings in one transaction."""
        with self._lock, self._transaction():
            self._put_snapshot(round_id, files)
            self._put_settings(settings or {})

    def _put_settings(self, settings: Mapping[str, str]) -> None:
        """Insert or replace settings (inside the caller's transaction)."""
        self._db.executemany(
            "INSERT INTO settings(key, value) VALUES(?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            sorted(settings.items()),
        )

    def snapshots(self) -> dict[int, dict[str, str]]:
        """round -> (file name -> SHA-256 hex) of every recorded snapshot."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round, file, sha256 FROM snapshot_files ORDER BY round, file"
            ).fetchall()
        out: dict[int, dict[str, str]] = {}
        for round_id, name, digest in rows:
            out.setdefault(int(round_id), {})[str(name)] = str(digest)
        return out

    def is_empty(self) -> bool:
        """True when no table holds a row."""
        with self._lock:
            # the table names are constants of this class, never input
            return not any(
                self._db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                for table in self._TABLES
            )

    def rounds(self) -> list[RoundRecord]:
        """Every stored round attempt, ascending by round then attempt."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM rounds ORDER BY round, attempt").fetchall()
            crow = self._db.execute(
                "SELECT * FROM client_rounds ORDER BY round, attempt, client_id"
            ).fetchall()
        by_key: dict[tuple[int, int], list[ClientRoundRecord]] = {}
        for c in crow:
            by_key.setdefault((c[0], c[1]), []).append(
                ClientRoundRecord(
                    client_id=c[2],
                    cluster_id=int(c[3]),
                    num_examples=int(c[4]),
                    update_accepted=bool(c[5]),
                    bytes_up=int(c[6]),
                    bytes_down=int(c[7]),
                    train_metrics=json.loads(c[8]),
                    eval_metrics=json.loads(c[9]),
                )
            )
        return [
            RoundRecord(
                round=int(r[0]),
                status=r[2],
                started_unix=float(r[3]),
                finished_unix=float(r[4]),
                num_clusters=int(r[5]),
                clients=tuple(by_key.get((r[0], r[1]), [])),
                summary=json.loads(r[6]),
            )
            for r in rows
        ]


def make_state_store(path: str | Path) -> StateStore:
    """Open the store at ``path`` (``":memory:"`` for a throw-away one)."""
    return SqliteStateStore(path)
