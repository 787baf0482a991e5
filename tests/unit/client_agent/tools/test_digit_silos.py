"""Tests for the bundled digit silos: sources, rotations, rotated label-skewed disjoint splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedprompt_client_agent.data.image_silos import ImageSiloData
from fedprompt_client_agent.tools.digit_silos import (
    DIGIT_LABELS,
    load_mnist,
    load_sklearn_digits,
    make_digit_silos,
    rotate_images,
)


@pytest.fixture(scope="module")
def mnist_silos() -> list[ImageSiloData]:
    """The 4-site MNIST split used throughout."""
    return make_digit_silos(4, source="mnist", seed=0)


def _unrotate(images: np.ndarray, degrees: float) -> np.ndarray:
    return np.rot90(images, -round(degrees / 90) % 4, axes=(1, 2))


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
