"""Tests for image silos: bundled digits, rotated label-skewed splits, the folder format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from fedprompt_client_agent.vision_data import (
    DIGIT_LABELS,
    ImageSiloData,
    ImageSplit,
    load_image_silo_dir,
    load_mnist,
    load_sklearn_digits,
    make_digit_silos,
    rotate_images,
    write_image_silo_dir,
)


@pytest.fixture(scope="module")
def mnist_silos() -> list[ImageSiloData]:
    """The 4-site MNIST split used throughout."""
    return make_digit_silos(4, source="mnist", seed=0)


def _unrotate(images: np.ndarray, degrees: float) -> np.ndarray:
    return np.rot90(images, -round(degrees / 90) % 4, axes=(1, 2))


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


# ----------------------------------------------------------------------------- sources


def test_mnist_loader_shapes_and_balance() -> None:
    images, labels = load_mnist()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.max() == 255 and images.min() == 0
    assert not images.flags.writeable


def test_sklearn_digits_are_upsampled() -> None:
    images, labels = load_sklearn_digits(size=28)
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (1797,) and set(labels.tolist()) == set(range(10))
    assert images.max() > 200
    original, _ = load_sklearn_digits(size=8)
    assert original.shape == (1797, 8, 8)
    with pytest.raises(ValueError):
        load_sklearn_digits(size=0)


def test_rotations_are_exact_for_quarter_turns_and_consistent_otherwise() -> None:
    images = load_mnist()[0][:6]
    assert np.array_equal(rotate_images(images, 90), np.rot90(images, 1, axes=(1, 2)))
    assert np.array_equal(rotate_images(images, -90), rotate_images(images, 270))
    assert np.array_equal(rotate_images(images, 360), images)
    # The resampling path turns the same way as rot90.
    assert np.array_equal(rotate_images(images, 90.001), np.rot90(images, 1, axes=(1, 2)))
    tilted = rotate_images(images, 30)
    assert tilted.shape == images.shape and tilted.dtype == np.uint8
    assert not np.array_equal(tilted, images)
    rgb = np.repeat(images[..., None], 3, axis=-1)
    assert rotate_images(rgb, 30).shape == rgb.shape
    with pytest.raises(ValueError):
        rotate_images(images, float("inf"))


# ----------------------------------------------------------------------------- silos


def test_silos_are_deterministic(mnist_silos: list[ImageSiloData]) -> None:
    again = make_digit_silos(4, source="mnist", seed=0)
    other = make_digit_silos(4, source="mnist", seed=1)
    for a, b in zip(mnist_silos, again, strict=True):
        assert a.name == b.name and a.metadata == b.metadata
        for split in ("train", "val", "test"):
            assert np.array_equal(a.split(split).images, b.split(split).images)
            assert np.array_equal(a.split(split).labels, b.split(split).labels)
    assert not np.array_equal(mnist_silos[0].train.labels, other[0].train.labels)


def test_every_image_lands_in_exactly_one_split_of_one_silo(
    mnist_silos: list[ImageSiloData],
) -> None:
    source_images, source_labels = load_mnist()
    index = {img.tobytes(): i for i, img in enumerate(source_images)}
    assert len(index) == len(source_images)  # no duplicate images in the source
    seen: list[int] = []
    for silo in mnist_silos:
        angle = float(silo.metadata["scanner_orientation_deg"])  # type: ignore[arg-type]
        for split in ("train", "val", "test"):
            part = silo.split(split)
            for image, label in zip(_unrotate(part.images, angle), part.labels, strict=True):
                position = index[image.tobytes()]  # an image equals its rotated source
                assert source_labels[position] == label
                seen.append(position)
    assert len(seen) == len(set(seen)) == 5000


def test_silos_are_rotated_per_group(mnist_silos: list[ImageSiloData]) -> None:
    assert [s.name for s in mnist_silos] == [
        "site-0-rot0",
        "site-1-rot90",
        "site-2-rot0",
        "site-3-rot90",
    ]
    source_images = load_mnist()[0]
    rotated_silo = mnist_silos[1]
    first = rotated_silo.train.images[0]
    matches = [
        i
        for i, img in enumerate(source_images)
        if np.array_equal(np.rot90(img, 1), first)  # counter-clockwise quarter turn
    ]
    assert len(matches) == 1
    assert not any(np.array_equal(img, first) for img in source_images)


def test_silos_are_label_skewed(mnist_silos: list[ImageSiloData]) -> None:
    for silo in mnist_silos:
        dominant = {int(d) for d in str(silo.metadata["dominant_digits"]).split(",")}
        labels = np.concatenate([silo.split(s).labels for s in ("train", "val", "test")])
        share = float(np.isin(labels, list(dominant)).mean())
        assert 0.75 <= share <= 0.85
        counts = np.bincount(silo.train.labels, minlength=10)
        assert counts.min() > 0  # every digit present, the dominant ones ~4x as often
        assert counts[sorted(dominant)].min() > 3 * counts[sorted(set(range(10)) - dominant)].max()
    assert mnist_silos[0].metadata["dominant_digits"] == "0,1,2,3,4"
    assert mnist_silos[1].metadata["dominant_digits"] == "5,6,7,8,9"


def test_metadata_is_flat_truthful_json(mnist_silos: list[ImageSiloData]) -> None:
    for silo in mnist_silos:
        meta = silo.metadata
        assert all(isinstance(v, str | int | float) for v in meta.values())
        assert json.loads(json.dumps(meta)) == meta
        assert meta["num_records"] == len(silo.train)
        assert meta["image_size"] == 28
        assert silo.labels == DIGIT_LABELS
    groups = [
        (
            s.metadata["scanner_orientation_deg"],
            s.metadata["institution_type"],
            s.metadata["region"],
        )
        for s in mnist_silos
    ]
    assert groups[0] == groups[2] and groups[1] == groups[3] and groups[0] != groups[1]
    assert [g[0] for g in groups] == [0, 90, 0, 90]


def test_split_sizes_follow_the_fractions(mnist_silos: list[ImageSiloData]) -> None:
    for silo in mnist_silos:
        total = len(silo.train) + len(silo.val) + len(silo.test)
        assert abs(len(silo.test) / total - 0.2) < 0.02
        assert abs(len(silo.val) / total - 0.15) < 0.02


def test_options_digits_source_rotations_and_subset() -> None:
    silos = make_digit_silos(
        6, source="digits", seed=3, rotations=(0, 45, 180), classes_per_silo=2, max_images=600
    )
    assert [s.metadata["scanner_orientation_deg"] for s in silos] == [0, 45, 180, 0, 45, 180]
    assert [s.metadata["dominant_digits"] for s in silos[:3]] == ["0,1", "2,3", "4,5"]
    assert sum(len(s.train) + len(s.val) + len(s.test) for s in silos) == 600
    assert silos[0].train.image_shape == (28, 28)
    single = make_digit_silos(1, source="digits", max_images=200)
    assert single[0].metadata["dominant_digits"] == "0,1,2,3,4,5,6,7,8,9"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_silos": 0},
        {"num_silos": 2, "skew": 1.5},
        {"num_silos": 2, "val_fraction": 0.5, "test_fraction": 0.5},
        {"num_silos": 2, "source": "cifar"},
        {"num_silos": 2, "rotations": ()},
        {"num_silos": 2, "classes_per_silo": 11},
        {"num_silos": 4, "max_images": 3},
    ],
)
def test_bad_silo_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        make_digit_silos(**kwargs)  # type: ignore[arg-type]


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
