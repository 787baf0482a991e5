"""Tests of the durable, atomically written, checksummed model snapshots."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from fedprompt.files import atomic_write as write_file_atomic
from fedprompt_coordinator.domain import FederationModel
from fedprompt_coordinator.model_store import ModelStore, SnapshotIntegrityError


def _model(offset: float = 0.0) -> FederationModel:
    return FederationModel(
        global_tensors={
            "prompt.global": np.arange(6, dtype=np.float32).reshape(2, 3) + offset,
            "prompt.global.bf16": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
        },
        cluster_tensors={
            0: {"prompt.cluster": np.array([[offset, 1.0]], dtype=np.float32)},
            3: {"prompt.cluster": np.array([[7.0, offset]], dtype=np.float32)},
            -1: {"prompt.cluster": np.array([[-1.0, -1.0]], dtype=np.float32)},
        },
        cluster_template={"prompt.cluster": np.array([[0.25, 0.5]], dtype=np.float32)},
    )


def _assert_same(a: FederationModel, b: FederationModel) -> None:
    assert sorted(a.global_tensors) == sorted(b.global_tensors)
    for name, value in a.global_tensors.items():
        assert b.global_tensors[name].dtype == value.dtype
        assert b.global_tensors[name].tobytes() == value.tobytes()
    assert sorted(a.cluster_tensors) == sorted(b.cluster_tensors)
    for cluster, tensors in a.cluster_tensors.items():
        assert sorted(tensors) == sorted(b.cluster_tensors[cluster])
        for name, value in tensors.items():
            np.testing.assert_array_equal(b.cluster_tensors[cluster][name], value)
    assert sorted(a.cluster_template) == sorted(b.cluster_template)
    for name, value in a.cluster_template.items():
        np.testing.assert_array_equal(b.cluster_template[name], value)


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    saved = store.save(2, _model(1.0))
    folder = store.folder(2)
    assert folder.name == "round-000002"
    assert (
        sorted(p.name for p in folder.iterdir())
        == sorted(saved.files)
        == [
            "cluster--1.safetensors",
            "cluster-0.safetensors",
            "cluster-3.safetensors",
            "global.safetensors",
            "template.safetensors",
        ]
    )
    _assert_same(_model(1.0), store.load(2, expected=saved.files))
    assert store.rounds() == [2]


def test_the_recorded_digests_are_the_sha256_of_the_files_on_disk(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    saved = store.save(1, _model(2.0))
    for name, digest in saved.files.items():
        assert hashlib.sha256((store.folder(1) / name).read_bytes()).hexdigest() == digest
    assert store.digests(1) == saved.files


def test_loaded_arrays_are_writable_copies(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    files = store.save(0, _model()).files
    loaded = store.load(0, expected=files)
    loaded.global_tensors["prompt.global"][0, 0] = 42.0
    assert store.load(0, expected=files).global_tensors["prompt.global"][0, 0] == 0.0


def test_a_new_store_over_the_same_folder_reads_what_was_saved(tmp_path: Path) -> None:
    files = ModelStore(tmp_path).save(1, _model(3.0)).files
    _assert_same(_model(3.0), ModelStore(tmp_path).load(1, expected=files))


def test_saving_a_round_again_replaces_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(1, _model(1.0))
    replacement = _model(2.0)
    del replacement.cluster_tensors[3]
    files = store.save(1, replacement).files
    loaded = store.load(1, expected=files)
    _assert_same(replacement, loaded)
    assert 3 not in loaded.cluster_tensors
    assert store.rounds() == [1]


def test_a_prepared_snapshot_is_invisible_until_published(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    prepared = store.prepare(5, _model())
    assert prepared.folder.name.startswith(".tmp-round-000005-")
    assert store.rounds() == [] and store.temporaries(5) == [prepared.folder]
    store.publish(prepared)
    assert store.rounds() == [5] and store.temporaries() == []
    store.discard(store.prepare(6, _model()))
    assert store.rounds() == [5] and store.temporaries() == []


def test_a_failed_write_leaves_no_temporary_folder(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    broken = _model()
    broken.global_tensors["bad"] = np.array(["not", "numbers"])  # no safetensors dtype
    with pytest.raises(Exception):  # noqa: B017 - whatever the codec raises
        store.prepare(1, broken)
    assert list(tmp_path.iterdir()) == []


def test_a_flipped_byte_is_refused_on_load_naming_the_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    files = store.save(1, _model()).files
    target = store.folder(1) / "cluster-3.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01  # a byte of tensor data: the file still parses as safetensors
    target.write_bytes(bytes(data))
    with pytest.raises(SnapshotIntegrityError, match=r"round-000001/cluster-3\.safetensors"):
        store.load(1, expected=files)
    with pytest.raises(SnapshotIntegrityError, match="SHA-256"):
        store.verify(1, files)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_a_missing_or_unrecorded_file_is_refused(tmp_path: Path, change: str) -> None:
    store = ModelStore(tmp_path)
    files = store.save(1, _model()).files
    if change == "missing":
        (store.folder(1) / "cluster-0.safetensors").unlink()
        match = "cluster-0.safetensors recorded with round 1 is missing"
    else:
        (store.folder(1) / "cluster-9.safetensors").write_bytes(b"x")
        match = "cluster-9.safetensors, which was not recorded"
    with pytest.raises(SnapshotIntegrityError, match=match):
        store.verify(1, files)
    with pytest.raises(SnapshotIntegrityError, match=match):
        store.load(1, expected=files)


def test_remove_temporaries_deletes_leftovers_only(tmp_path: Path) -> None:
    root = tmp_path / "models"
    store = ModelStore(root)
    store.save(1, _model())
    stale = root / ".tmp-round-000002-abc"  # a crash between mkdir and rename
    stale.mkdir()
    (stale / "global.safetensors").write_bytes(b"half written")
    assert ModelStore(root).rounds() == [1]
    assert store.remove_temporaries() == [stale]
    assert sorted(p.name for p in root.iterdir()) == ["round-000001"]


def test_no_temporary_folder_is_left_after_save(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(4, _model())
    assert [p.name for p in tmp_path.iterdir()] == ["round-000004"]


def test_load_of_a_missing_round_raises(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    files = store.save(1, _model()).files
    with pytest.raises(FileNotFoundError, match="round 2"):
        store.load(2, expected=files)


def test_rounds_ignores_unrelated_entries(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.save(3, _model())
    store.save(10, _model())
    (tmp_path / "round-7").mkdir()
    (tmp_path / "round-000005").write_text("a file, not a folder")
    (tmp_path / "notes.txt").write_text("x")
    assert store.rounds() == [3, 10]


def test_prune_keeps_recent_rounds_and_the_initial_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    files = {r: store.save(r, _model(float(r))).files for r in range(5)}
    store.prune(keep_from=3)
    assert store.rounds() == [0, 3, 4]
    _assert_same(_model(0.0), store.load(0, expected=files[0]))
    _assert_same(_model(4.0), store.load(4, expected=files[4]))


def test_write_file_atomic(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    write_file_atomic(target, b"first")
    write_file_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]
