"""The files every silo folder shares, text or image: metadata, label names, held-out splits.

A silo folder (see :mod:`fedprompt_client_agent.data.text_silos` and
:mod:`fedprompt_client_agent.data.image_silos` for the split files) holds::

    metadata.json    the silo's public metadata, a JSON object
    labels.json      the ordered list of label names (label id = position)

and ``train``/``val``/``test`` split files; missing ``val``/``test`` splits are carved
out of ``train`` deterministically, stratified by label (70/15/15 of the training file
when both are missing).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np

__all__ = [
    "DEFAULT_HOLDOUT",
    "LABELS_FILE",
    "METADATA_FILE",
    "SPLIT_NAMES",
    "fill_missing_splits",
    "metadata_json",
    "read_json",
    "read_label_names",
    "read_metadata",
    "silo_folders_below",
    "stratified_split",
    "write_metadata_and_labels",
]

logger = logging.getLogger(__name__)

SPLIT_NAMES: Final = ("train", "val", "test")
METADATA_FILE: Final = "metadata.json"
LABELS_FILE: Final = "labels.json"
#: Fractions of the training file that become ``val`` and ``test`` when those files are missing.
DEFAULT_HOLDOUT: Final[Mapping[str, float]] = {"val": 0.15, "test": 0.15}

#: The training files that make a folder a silo (text: JSONL or CSV; images: NPZ).
TRAIN_FILES: Final = ("train.jsonl", "train.csv", "train.npz")

SplitT = TypeVar("SplitT")


def silo_folders_below(root: Path) -> list[Path]:
    """The silo folders directly below ``root``: sub-folders with a training file, by name.

    Parameters
    ----------
    root : Path
        A folder of silo folders (hidden sub-folders are skipped).

    Returns
    -------
    list of Path
        Sorted by name; empty when ``root`` holds no silo.

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder of silo folders")
    return sorted(
        folder
        for folder in root.iterdir()
        if folder.is_dir()
        and not folder.name.startswith(".")
        and any((folder / name).is_file() for name in TRAIN_FILES)
    )


def stratified_split(
    labels: Sequence[int],
    *,
    fractions: Mapping[str, float],
    rng: np.random.Generator,
) -> dict[str, list[int]]:
    """Split positions into named parts, stratified by label.

    Parameters
    ----------
    labels : sequence of int
        The label of each item; the returned lists index into this sequence.
    fractions : mapping of str to float
        Target fraction per held-out part (e.g. ``{"val": 0.15, "test": 0.2}``);
        whatever remains goes to ``"train"``. Fractions must be >= 0 and sum to < 1.
    rng : numpy.random.Generator
        Source of the shuffles; the result is a pure function of its state.

    Returns
    -------
    dict of str to list of int
        ``"train"`` plus one key per entry of ``fractions``; each position appears
        in exactly one list. Within each label, part sizes are rounded to the
        nearest integer and at least one item per label stays in ``"train"``.

    Raises
    ------
    ValueError
        If a fraction is negative or the fractions sum to 1 or more.
    """
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) >= 1.0:
        raise ValueError(f"fractions must be >= 0 and sum to < 1, got {dict(fractions)}")
    parts: dict[str, list[int]] = {"train": [], **{name: [] for name in fractions}}
    by_label: dict[int, list[int]] = {}
    for pos, label in enumerate(labels):
        by_label.setdefault(label, []).append(pos)
    for label in sorted(by_label):
        positions = by_label[label]
        order = rng.permutation(len(positions))
        shuffled = [positions[i] for i in order]
        start = 0
        for name, frac in fractions.items():
            take = min(math.floor(len(shuffled) * frac + 0.5), len(shuffled) - start - 1)
            take = max(take, 0)
            parts[name].extend(shuffled[start : start + take])
            start += take
        parts["train"].extend(shuffled[start:])
    return {name: sorted(positions) for name, positions in parts.items()}


def fill_missing_splits(
    splits: dict[str, SplitT],
    *,
    seed: int,
    labels_of: Callable[[SplitT], Sequence[int]],
    subset: Callable[[SplitT, list[int]], SplitT],
) -> dict[str, SplitT]:
    """Carve missing val/test splits out of train (``DEFAULT_HOLDOUT`` of the train file).

    Parameters
    ----------
    splits : dict of str to split
        The splits read from disk; ``"train"`` is required.
    seed : int
        Seed of the stratified carving.
    labels_of : callable
        The label ids of a split, in order.
    subset : callable
        ``subset(split, positions)``: the items of a split at the given positions.

    Returns
    -------
    dict of str to split
        ``splits`` itself when nothing is missing, else a copy with ``train`` reduced
        and the missing splits added.
    """
    missing = {name: frac for name, frac in DEFAULT_HOLDOUT.items() if name not in splits}
    if not missing:
        return splits
    train = splits["train"]
    parts = stratified_split(labels_of(train), fractions=missing, rng=np.random.default_rng(seed))
    result = dict(splits)
    for name, positions in parts.items():
        result[name] = subset(train, positions)
    logger.info("carved %s out of train (seed %d)", sorted(missing), seed)
    return result


def read_json(file: Path) -> Any:
    """Parse a whole JSON file, turning every failure into a ValueError naming it.

    Parameters
    ----------
    file : Path
        The file (UTF-8, optionally with a BOM).

    Returns
    -------
    Any
        The parsed value.

    Raises
    ------
    ValueError
        If the file cannot be read or is not valid JSON.
    """
    try:
        return json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: cannot read file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def read_metadata(file: Path, *, flat: bool = False) -> dict[str, object]:
    """Read the silo's public metadata, which must be a JSON object.

    Parameters
    ----------
    file : Path
        ``metadata.json``.
    flat : bool
        Also reject nested objects and lists as values.

    Returns
    -------
    dict of str to object
        The metadata.

    Raises
    ------
    ValueError
        If the file is missing, unreadable, not an object, or (``flat``) nested.
    """
    if not file.is_file():
        raise ValueError(f"{file}: missing; every silo publishes a metadata JSON object")
    value = read_json(file)
    if not isinstance(value, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(value).__name__}")
    if flat:
        nested = sorted(key for key, item in value.items() if isinstance(item, dict | list))
        if nested:
            raise ValueError(f"{file}: metadata must be flat; nested values under {nested}")
    return value


def read_label_names(file: Path) -> tuple[str, ...]:
    """Read the ordered label names from an existing ``labels.json``.

    Parameters
    ----------
    file : Path
        The file.

    Returns
    -------
    tuple of str
        The names, stripped; integers are read as names.

    Raises
    ------
    ValueError
        If the file is unreadable, not a non-empty list, has an empty or non-string
        name, or repeats a name.
    """
    value = read_json(file)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{file}: expected a non-empty JSON list of label names")
    names: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int) or not str(item).strip():
            raise ValueError(
                f"{file}: label names must be non-empty strings or integers, got {item!r}"
            )
        names.append(str(item).strip())
    if len(set(names)) != len(names):
        raise ValueError(f"{file}: duplicate label names")
    return tuple(names)


def metadata_json(silo_name: str, metadata: Mapping[str, object]) -> str:
    """Serialise a silo's metadata as ``metadata.json`` holds it (sorted keys, no NaN).

    Parameters
    ----------
    silo_name : str
        For the error message.
    metadata : mapping
        The metadata.

    Returns
    -------
    str
        Indented JSON text, without a final newline.

    Raises
    ------
    ValueError
        If the metadata is not JSON-serialisable.
    """
    try:
        return json.dumps(metadata, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"silo {silo_name}: metadata is not JSON-serialisable: {exc}") from exc


def write_metadata_and_labels(root: Path, metadata_text: str, labels: Sequence[str]) -> None:
    """Write ``metadata.json`` (from ``metadata_json``) and ``labels.json`` into a silo folder.

    Parameters
    ----------
    root : Path
        The silo folder, which exists.
    metadata_text : str
        The serialised metadata.
    labels : sequence of str
        The label names in id order.
    """
    (root / METADATA_FILE).write_text(metadata_text + "\n", encoding="utf-8")
    (root / LABELS_FILE).write_text(json.dumps(list(labels), indent=2) + "\n", encoding="utf-8")
