"""A silo's labelled images: in-memory types and the on-disk folder format.

The image counterpart of :mod:`fedprompt_client_agent.data.text_silos`. An image silo
folder holds::

    train.npz        required: ``images`` uint8 [N, H, W] (or [N, H, W, 3]), ``labels`` int [N]
    val.npz          optional, same arrays
    test.npz         optional, same arrays
    metadata.json    required, the silo's public metadata (a flat JSON object)
    labels.json      required, the ordered list of label names (label id = position)

Missing ``val``/``test`` files are carved out of ``train`` deterministically,
stratified by label (70/15/15 of the training file when both are missing). The bundled
digit silos are made by :mod:`fedprompt_client_agent.tools.digit_silos`.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np
from numpy.lib.npyio import NpzFile

from fedprompt_client_agent.data.silo_files import (
    LABELS_FILE,
    METADATA_FILE,
    SPLIT_NAMES,
    fill_missing_splits,
    metadata_json,
    read_label_names,
    read_metadata,
    write_metadata_and_labels,
)

__all__ = [
    "IMAGE_SPLIT_SUFFIX",
    "ImageSiloData",
    "ImageSplit",
    "load_image_silo_dir",
    "read_image_labels",
    "read_image_split",
    "write_image_silo_dir",
]

logger = logging.getLogger(__name__)

#: The file type of an image split.
IMAGE_SPLIT_SUFFIX: Final = ".npz"


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
        with (root / f"{name}{IMAGE_SPLIT_SUFFIX}").open("wb") as handle:
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
    train_file = root / f"train{IMAGE_SPLIT_SUFFIX}"
    if not train_file.is_file():
        raise ValueError(f"{train_file}: missing; every image silo needs train{IMAGE_SPLIT_SUFFIX}")
    metadata = read_metadata(root / METADATA_FILE, flat=True)
    labels = read_image_labels(root / LABELS_FILE)
    splits: dict[str, ImageSplit] = {}
    for name in SPLIT_NAMES:
        file = root / f"{name}{IMAGE_SPLIT_SUFFIX}"
        if file.is_file():
            splits[name] = read_image_split(file, num_labels=len(labels))
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


def read_image_split(file: Path, *, num_labels: int) -> ImageSplit:
    """Read and validate one ``.npz`` split file (label ids below ``num_labels``)."""
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


def read_image_labels(file: Path) -> tuple[str, ...]:
    """Read the ordered label names from labels.json, which image silos must have."""
    if not file.is_file():
        raise ValueError(f"{file}: missing; image silos name their labels in {LABELS_FILE}")
    return read_label_names(file)


def _subset(split: ImageSplit, positions: list[int]) -> ImageSplit:
    """The images and labels of a split at the given positions."""
    index = np.array(positions, dtype=np.int64)
    return ImageSplit(images=split.images[index], labels=split.labels[index])
