"""Tests for image silos: the in-memory types and the folder format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from fedprompt_client_agent.data.image_silos import (
    ImageSiloData,
    ImageSplit,
    load_image_silo_dir,
    write_image_silo_dir,
)
from fedprompt_client_agent.tools.digit_silos import make_digit_silos


@pytest.fixture(scope="module")
def mnist_silos() -> list[ImageSiloData]:
    """The 4-site MNIST split used throughout."""
    return make_digit_silos(4, source="mnist", seed=0)


def _small_silo(name: str = "silo", n_train: int = 9) -> ImageSiloData:
    rng = np.random.default_rng(0)
    split = {
        part: ImageSplit(
            images=rng.integers(0, 256, size=(n, 6, 6), dtype=np.uint8),
            labels=np.arange(n) % 3,
        )
        for part, n in (("train", n_train), ("val", 3), ("test", 3))
    }
    return ImageSiloData(name=name, labels=("a", "b", "c"), metadata={"site": "x", "n": 9}, **split)


# ----------------------------------------------------------------------------- in-memory types


def test_image_split_validates_and_freezes() -> None:
    images = np.zeros((2, 4, 4), dtype=np.uint8)
    split = ImageSplit(images=images, labels=np.array([0, 1], dtype=np.int32))
    assert split.labels.dtype == np.int64 and len(split) == 2
    assert images.flags.writeable  # the caller's array is untouched
    with pytest.raises(ValueError, match="read-only"):
        split.images[0, 0, 0] = 1
    with pytest.raises(ValueError, match="uint8"):
        ImageSplit(images=images.astype(np.float32), labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        ImageSplit(images=images, labels=np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=">= 0"):
        ImageSplit(images=images, labels=np.array([0, -1]))
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        ImageSplit(images=np.zeros((2, 4), dtype=np.uint8), labels=np.array([0, 1]))


def test_image_silo_validates() -> None:
    silo = _small_silo()
    assert silo.num_labels == 3 and silo.split("val") is silo.val
    with pytest.raises(ValueError, match="unknown split"):
        silo.split("dev")
    empty = ImageSplit.empty((6, 6))
    with pytest.raises(ValueError, match="training split is empty"):
        ImageSiloData(name="x", labels=("a",), train=empty)
    bad_label = ImageSplit(images=np.zeros((1, 6, 6), np.uint8), labels=np.array([5]))
    with pytest.raises(ValueError, match="out of range"):
        ImageSiloData(name="x", labels=("a", "b"), train=bad_label)
    other_shape = ImageSplit(images=np.zeros((1, 5, 5), np.uint8), labels=np.array([0]))
    with pytest.raises(ValueError, match="images are"):
        ImageSiloData(name="x", labels=("a", "b", "c"), train=silo.train, val=other_shape)


# ----------------------------------------------------------------------------- folder format


def test_write_and_load_round_trip(tmp_path: Path, mnist_silos: list[ImageSiloData]) -> None:
    silo = mnist_silos[1]
    root = write_image_silo_dir(silo, tmp_path / silo.name)
    assert sorted(p.name for p in root.iterdir()) == [
        "labels.json",
        "metadata.json",
        "test.npz",
        "train.npz",
        "val.npz",
    ]
    loaded = load_image_silo_dir(root)
    assert loaded.name == silo.name and loaded.labels == silo.labels
    assert loaded.metadata == silo.metadata
    for split in ("train", "val", "test"):
        assert np.array_equal(loaded.split(split).images, silo.split(split).images)
        assert np.array_equal(loaded.split(split).labels, silo.split(split).labels)


def test_missing_val_and_test_are_carved_out_of_train(tmp_path: Path) -> None:
    root = write_image_silo_dir(_small_silo(n_train=60), tmp_path / "silo")
    (root / "val.npz").unlink()
    (root / "test.npz").unlink()
    loaded = load_image_silo_dir(root)
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (42, 9, 9)
    assert np.bincount(loaded.val.labels).tolist() == [3, 3, 3]
    again = load_image_silo_dir(root)
    assert np.array_equal(loaded.val.images, again.val.images)


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **cast(dict[str, Any], arrays))


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_image_silo_dir(tmp_path / "absent")
    root = write_image_silo_dir(_small_silo(), tmp_path / "silo")
    good = (root / "train.npz").read_bytes()

    def expect(message: str) -> None:
        with pytest.raises(ValueError, match=message):
            load_image_silo_dir(root)

    (root / "train.npz").unlink()
    expect("train.npz: missing")
    (root / "train.npz").write_bytes(b"this is not an archive")
    expect("train.npz: not a readable .npz")
    np.save(root / "single.npy", np.zeros(3))
    (root / "train.npz").write_bytes((root / "single.npy").read_bytes())
    expect("got one array")
    _write_npz(root / "train.npz", images=np.zeros((2, 6, 6), np.uint8))
    expect(r"missing array\(s\) \['labels'\]")
    _write_npz(root / "train.npz", images=np.zeros((2, 6, 6), np.float32), labels=np.zeros(2))
    expect("train.npz: images must be uint8")
    _write_npz(root / "train.npz", images=np.zeros((2, 6, 6), np.uint8), labels=np.array([0, 7]))
    expect("label id 7 out of range")
    _write_npz(root / "train.npz", images=np.zeros((2, 6, 6), np.uint8), labels=np.array([0]))
    expect("2 images but 1 labels")
    _write_npz(root / "train.npz", images=np.zeros((2, 5, 5), np.uint8), labels=np.array([0, 1]))
    expect("image shapes differ")
    _write_npz(root / "train.npz", images=np.zeros((0, 6, 6), np.uint8), labels=np.zeros(0, int))
    expect("no training images")
    (root / "train.npz").write_bytes(good)

    labels_text = (root / "labels.json").read_text()
    (root / "labels.json").write_text('["a", "a", "b"]')
    expect("duplicate label names")
    (root / "labels.json").write_text("{")
    expect(r"labels.json:1: invalid JSON")
    (root / "labels.json").unlink()
    expect("labels.json: missing")
    (root / "labels.json").write_text(labels_text)

    (root / "metadata.json").write_text('{"site": {"nested": 1}}')
    expect("metadata must be flat")
    (root / "metadata.json").write_text("[1, 2]")
    expect("expected a JSON object")
    (root / "metadata.json").unlink()
    expect("metadata.json: missing")


def test_write_rejects_unserialisable_metadata(tmp_path: Path) -> None:
    silo = _small_silo()
    silo.metadata["bad"] = object()
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        write_image_silo_dir(silo, tmp_path / "silo")
