"""The server optimizer's moments in a round's snapshot: round trip, old snapshots without
moments, corrupt and forged moment files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fedprompt.codec import encode_tensors
from fedprompt_coordinator.domain import FederationModel, ServerMoments, TensorMoments
from fedprompt_coordinator.model_store import ModelStore, SnapshotIntegrityError

G, C = "prompt.global", "prompt.cluster"


def _model() -> FederationModel:
    return FederationModel(
        global_tensors={G: np.arange(4, dtype=np.float32).reshape(2, 2)},
        cluster_tensors={
            0: {C: np.array([1.0, 2.0], np.float32)},
            -1: {C: np.array([3.0, 4.0], np.float32)},
        },
        cluster_template={C: np.zeros(2, np.float32)},
    )


def _moments() -> ServerMoments:
    rng = np.random.default_rng(5)

    def tm(shape: tuple[int, ...]) -> TensorMoments:
        return TensorMoments(rng.normal(size=shape), rng.random(size=shape))

    return ServerMoments(
        optimizer="yogi",
        global_moments={G: tm((2, 2))},
        cluster_moments={0: {C: tm((2,))}, -1: {C: tm((2,))}},
    )


def _same(a: ServerMoments, b: ServerMoments) -> None:
    assert a.optimizer == b.optimizer
    levels = [(a.global_moments, b.global_moments)] + [
        (a.cluster_moments[k], b.cluster_moments[k]) for k in a.cluster_moments
    ]
    assert sorted(a.cluster_moments) == sorted(b.cluster_moments)
    for x, y in levels:
        assert sorted(x) == sorted(y)
        for name in x:
            assert x[name].first.tobytes() == y[name].first.tobytes()
            assert x[name].second.tobytes() == y[name].second.tobytes()
            assert y[name].second.dtype == np.float64


def test_moments_are_saved_with_the_snapshot_and_read_back_exactly(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    prepared = store.save(3, _model(), moments=_moments())
    assert sorted(prepared.files) == [
        "cluster--1.safetensors",
        "cluster-0.safetensors",
        "global.safetensors",
        "optimizer-cluster--1.safetensors",
        "optimizer-cluster-0.safetensors",
        "optimizer-global.safetensors",
        "template.safetensors",
    ]
    _same(_moments(), store.load_moments(3, expected=prepared.files))
    # the model reads as before: moment files are not clusters
    model = store.load(3, expected=prepared.files)
    assert sorted(model.cluster_tensors) == [-1, 0]


def test_a_snapshot_without_moment_files_has_no_moments(tmp_path: Path) -> None:
    # what an earlier version (or plain sgd) wrote
    store = ModelStore(tmp_path / "models")
    prepared = store.save(1, _model())
    moments = store.load_moments(1, expected=prepared.files)
    assert moments.empty and moments.optimizer == ""
    # empty moments write no files either
    assert store.save(2, _model(), moments=ServerMoments()).files.keys() == prepared.files.keys()


def test_a_flipped_byte_in_a_moment_file_is_refused_naming_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    prepared = store.save(1, _model(), moments=_moments())
    path = store.folder(1) / "optimizer-cluster-0.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotIntegrityError, match=r"optimizer-cluster-0\.safetensors"):
        store.load_moments(1, expected=prepared.files)


def test_a_missing_moment_file_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    prepared = store.save(1, _model(), moments=_moments())
    (store.folder(1) / "optimizer-global.safetensors").unlink()
    with pytest.raises(SnapshotIntegrityError, match=r"optimizer-global\.safetensors.*missing"):
        store.load_moments(1, expected=prepared.files)


def _forge(store: ModelStore, files: dict[str, str], name: str, payload: bytes) -> dict[str, str]:
    """Replace a moment file and its recorded digest (what a buggy writer could leave)."""
    (store.folder(1) / name).write_bytes(payload)
    return {**files, name: hashlib.sha256(payload).hexdigest()}


GOOD = {"first." + G: np.zeros((2, 2)), "second." + G: np.ones((2, 2))}


@pytest.mark.parametrize(
    ("tensors", "metadata", "match"),
    [
        ({**GOOD, "second." + G: np.full((2, 2), np.nan)}, {"optimizer": "adam"}, "not finite"),
        ({**GOOD, "first." + G: np.full((2, 2), np.inf)}, {"optimizer": "adam"}, "not finite"),
        ({**GOOD, "second." + G: -np.ones((2, 2))}, {"optimizer": "adam"}, "negative"),
        ({"first." + G: np.zeros((2, 2))}, {"optimizer": "adam"}, "lacks a first or second"),
        ({**GOOD, "velocity." + G: np.zeros(1)}, {"optimizer": "adam"}, "unexpected tensors"),
        ({}, {"optimizer": "adam"}, "no tensors"),
        (GOOD, {}, "does not name its optimizer"),
        (
            {**GOOD, "second." + G: np.ones((2, 2), np.float32)},
            {"optimizer": "adam"},
            "two float64 arrays",
        ),
        ({**GOOD, "second." + G: np.ones(4)}, {"optimizer": "adam"}, "of one shape"),
        (GOOD, {"optimizer": "adagrad"}, "different optimizers: adagrad, yogi"),
    ],
)
def test_a_moment_file_it_did_not_write_is_refused_never_zeroed(
    tmp_path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str], match: str
) -> None:
    store = ModelStore(tmp_path / "models")
    prepared = store.save(1, _model(), moments=_moments())
    payload = encode_tensors(tensors, metadata=metadata)
    files = _forge(store, prepared.files, "optimizer-global.safetensors", payload)
    with pytest.raises(SnapshotIntegrityError, match=match):
        store.load_moments(1, expected=files)


def test_a_moment_file_that_is_not_safetensors_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    prepared = store.save(1, _model(), moments=_moments())
    files = _forge(store, prepared.files, "optimizer-global.safetensors", b"\xff" * 40)
    with pytest.raises(SnapshotIntegrityError, match="not a safetensors file"):
        store.load_moments(1, expected=files)


def test_moments_without_their_optimizers_name_are_not_written(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    nameless = ServerMoments(global_moments={G: TensorMoments(np.zeros((2, 2)), np.ones((2, 2)))})
    with pytest.raises(ValueError, match="name of their optimizer"):
        store.save(1, _model(), moments=nameless)
    assert store.temporaries() == [] and store.rounds() == []
