"""Tests of the start-up check of a state dir: the database against the snapshot folders."""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fedprompt_coordinator.domain import FederationModel, RoundRecord
from fedprompt_coordinator.model_store import ModelStore
from fedprompt_coordinator.state_check import StateIntegrityError, verify_state
from fedprompt_coordinator.state_store import STATE_FORMAT, STATE_FORMAT_KEY, SqliteStateStore


def _model(offset: float) -> FederationModel:
    return FederationModel(
        global_tensors={"prompt.global": np.arange(4, dtype=np.float32) + offset},
        cluster_tensors={0: {"prompt.cluster": np.full(2, offset, np.float32)}},
        cluster_template={"prompt.cluster": np.zeros(2, np.float32)},
    )


def _completed(round_id: int) -> RoundRecord:
    return RoundRecord(round_id, "completed", 1.0, 2.0, 1, (), {})


def _run_rounds(state: SqliteStateStore, models: ModelStore, rounds: int) -> None:
    """What the federation writes: round 0, then each round's files, commit, rename."""
    verify_state(state, models)
    prepared = models.prepare(0, _model(0.0))
    state.record_snapshot(0, prepared.files, settings={"tensor_spec": "[]"})
    models.publish(prepared)
    for r in range(1, rounds + 1):
        models.prune(keep_from=r - 1)
        prepared = models.prepare(r, _model(float(r)))
        state.record_round(_completed(r), snapshot=prepared.files)
        models.publish(prepared)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def _open(state_dir: Path) -> tuple[SqliteStateStore, ModelStore]:
    state_dir.mkdir(parents=True, exist_ok=True)
    return SqliteStateStore(state_dir / "state.sqlite3"), ModelStore(state_dir / "models")


def test_a_new_state_dir_is_a_fresh_start_and_gets_the_format_mark(state_dir: Path) -> None:
    state, models = _open(state_dir)
    verified = verify_state(state, models)
    assert (verified.completed, verified.snapshots) == (0, {})
    assert state.get_setting(STATE_FORMAT_KEY) == STATE_FORMAT
    state.close()


def test_a_consistent_state_dir_passes_and_reports_its_digests(state_dir: Path) -> None:
    state, models = _open(state_dir)
    _run_rounds(state, models, 3)
    verified = verify_state(state, models)
    assert verified.completed == 3
    assert models.rounds() == [0, 2, 3]  # the initial, round-start and last model
    for r in (0, 2, 3):
        assert verified.snapshots[r] == models.digests(r)
    state.close()


def test_a_flipped_byte_in_a_snapshot_is_a_start_up_error_naming_the_file(
    state_dir: Path,
) -> None:
    state, models = _open(state_dir)
    _run_rounds(state, models, 2)
    target = models.folder(2) / "global.safetensors"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x40  # inside the tensor data: the safetensors structure is intact
    target.write_bytes(bytes(data))
    with pytest.raises(StateIntegrityError) as info:
        verify_state(state, models)
    message = str(info.value)
    assert str(target) in message and "SHA-256" in message and "restore" in message
    state.close()


def test_a_lost_wal_is_a_start_up_error_not_a_fresh_start(state_dir: Path, tmp_path: Path) -> None:
    """Copy the database file without its -wal, as a crash that lost the WAL leaves it."""
    state, models = _open(state_dir)
    _run_rounds(state, models, 2)
    lost = tmp_path / "lost"
    lost.mkdir()
    shutil.copy(state_dir / "state.sqlite3", lost / "state.sqlite3")  # no -wal, no -shm
    shutil.copytree(state_dir / "models", lost / "models")
    state.close()
    state, models = _open(lost)
    assert state.last_completed_round() == 0  # what a silent fresh start would have used
    with pytest.raises(StateIntegrityError) as info:
        verify_state(state, models)
    message = str(info.value)
    assert "round-000000" in message and "round-000002" in message
    assert "lost" in message and "state.sqlite3-wal" in message and "restore" in message
    assert state.get_setting(STATE_FORMAT_KEY) is None  # nothing was written
    assert models.rounds() == [0, 1, 2]  # nothing was removed
    state.close()


def test_a_database_behind_its_snapshots_is_an_error(state_dir: Path, tmp_path: Path) -> None:
    """An older copy of the database put back: folders of later rounds have no record."""
    state, models = _open(state_dir)
    _run_rounds(state, models, 1)
    state.close()
    backup = tmp_path / "old.sqlite3"
    with (
        contextlib.closing(sqlite3.connect(state_dir / "state.sqlite3")) as src,
        contextlib.closing(sqlite3.connect(backup)) as dst,
    ):
        src.backup(dst)
    state, models = _open(state_dir)
    prepared = models.prepare(2, _model(2.0))
    state.record_round(_completed(2), snapshot=prepared.files)
    models.publish(prepared)
    state.close()
    shutil.copy(backup, state_dir / "state.sqlite3")
    state, models = _open(state_dir)
    with pytest.raises(StateIntegrityError, match=r"round-000002 .* have no record"):
        verify_state(state, models)
    state.close()


def test_a_missing_snapshot_of_the_last_completed_round_is_an_error(state_dir: Path) -> None:
    state, models = _open(state_dir)
    _run_rounds(state, models, 2)
    shutil.rmtree(models.folder(2))
    with pytest.raises(StateIntegrityError, match=r"snapshot of round 2 .* is missing"):
        verify_state(state, models)
    state.close()


def test_a_committed_snapshot_not_yet_renamed_is_put_in_place(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash between the commit of round 2 and the rename of its folder."""
    state, models = _open(state_dir)
    _run_rounds(state, models, 1)
    prepared = models.prepare(2, _model(2.0))
    state.record_round(_completed(2), snapshot=prepared.files)
    caplog.set_level(logging.WARNING)
    verified = verify_state(state, models)
    assert verified.completed == 2 and models.rounds() == [0, 1, 2]
    assert models.temporaries() == []
    assert models.load(2, expected=verified.snapshots[2]).global_tensors["prompt.global"][0] == 2
    assert "was not yet in place" in caplog.text
    state.close()


def test_an_uncommitted_snapshot_write_is_removed(state_dir: Path) -> None:
    """A crash after the files of round 2 were written but before their commit."""
    state, models = _open(state_dir)
    _run_rounds(state, models, 1)
    models.prepare(2, _model(2.0))
    (models.root / ".tmp-round-000002-torn").mkdir()  # one torn by the crash as well
    verified = verify_state(state, models)
    assert verified.completed == 1 and models.rounds() == [0, 1]
    assert models.temporaries() == []
    state.close()


def test_a_state_dir_of_an_earlier_version_is_migrated_once(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No digests, no format mark; an earlier version renamed round 3's folder before its
    commit, so a crash left it behind."""
    state, models = _open(state_dir)
    state.upsert_client(client_id="a", metadata_json="{}", num_train_examples=1, device="cpu")
    state.set_setting("tensor_spec", "[]")
    for r in range(3):
        models.save(r, _model(float(r)))
        if r:
            state.record_round(_completed(r))
    models.prune(keep_from=1)
    models.save(3, _model(3.0))  # never committed
    caplog.set_level(logging.WARNING)
    verified = verify_state(state, models)
    assert verified.completed == 2 and models.rounds() == [0, 1, 2]
    assert sorted(verified.snapshots) == [0, 1, 2]
    assert state.get_setting(STATE_FORMAT_KEY) == STATE_FORMAT
    assert "earlier version migrated" in caplog.text and "round-000003" in caplog.text
    # from now on the snapshots are checked
    target = models.folder(2) / "cluster-0.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(StateIntegrityError, match=r"cluster-0\.safetensors"):
        verify_state(state, models)
    state.close()


def test_an_earlier_version_dir_with_folders_ahead_of_its_database_is_an_error(
    state_dir: Path,
) -> None:
    state, models = _open(state_dir)
    state.set_setting("tensor_spec", "[]")
    for r in (0, 1, 2, 3):
        models.save(r, _model(float(r)))
    state.record_round(_completed(1))
    with pytest.raises(StateIntegrityError, match=r"round-000003 .* ahead of the state database"):
        verify_state(state, models)
    assert models.rounds() == [0, 1, 2, 3]
    state.close()


def test_a_database_of_another_format_is_refused(state_dir: Path) -> None:
    state, models = _open(state_dir)
    state.set_setting(STATE_FORMAT_KEY, "99")
    with pytest.raises(StateIntegrityError, match="format '99'"):
        verify_state(state, models)
    state.close()
