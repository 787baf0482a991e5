"""A silo's labelled text data: in-memory types and the on-disk folder format.

A silo folder holds::

    train.jsonl | train.csv     required, at least one row
    val.jsonl   | val.csv       optional
    test.jsonl  | test.csv      optional
    metadata.json               required, the silo's public metadata (a JSON object)
    labels.json                 optional, the ordered list of label names

Each row has a text column and a label column (names configurable). Labels are
names (strings; integers are read as names too). Without ``labels.json`` the
label set is the sorted union of the names found in all splits. Missing
``val``/``test`` files are carved out of ``train`` deterministically and
stratified by label (70/15/15 of the training file when both are missing).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

__all__ = [
    "SPLIT_NAMES",
    "SiloData",
    "TextExample",
    "load_silo_dir",
    "stratified_split",
    "write_silo_dir",
]

logger = logging.getLogger(__name__)

SPLIT_NAMES: Final = ("train", "val", "test")
_SUFFIXES: Final = (".jsonl", ".csv")
_METADATA_FILE: Final = "metadata.json"
_LABELS_FILE: Final = "labels.json"
_DEFAULT_HOLDOUT: Final = {"val": 0.15, "test": 0.15}


@dataclass(frozen=True)
class TextExample:
    """One labelled text.

    Attributes
    ----------
    text : str
        The raw input text; never empty.
    label : int
        Class id, an index into the owning silo's ``labels``.
    """

    text: str
    label: int


@dataclass(frozen=True)
class SiloData:
    """Everything one silo trains and evaluates on, plus its public metadata.

    Attributes
    ----------
    name : str
        Human-readable silo name (e.g. ``clinic-0-psychiatry``).
    labels : tuple of str
        Global label names; position is the class id used by ``TextExample.label``.
    train, val, test : tuple of TextExample
        Disjoint splits; ``train`` is never empty, the others may be.
    metadata : dict
        JSON-serialisable public description of the silo, sent to the clusterer.
    """

    name: str
    labels: tuple[str, ...]
    train: tuple[TextExample, ...]
    val: tuple[TextExample, ...] = ()
    test: tuple[TextExample, ...] = ()
    metadata: dict[str, object] = field(default_factory=dict)

    def split(self, name: str) -> tuple[TextExample, ...]:
        """Return one split by name.

        Parameters
        ----------
        name : str
            ``"train"``, ``"val"`` or ``"test"``.

        Returns
        -------
        tuple of TextExample
            The examples of that split.

        Raises
        ------
        ValueError
            If ``name`` is not a split name.
        """
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLIT_NAMES}")
        split: tuple[TextExample, ...] = getattr(self, name)
        return split

    @property
    def num_labels(self) -> int:
        """Number of classes in the global label set."""
        return len(self.labels)


@dataclass(frozen=True)
class _RawRow:
    """A row as read from disk, before label names are mapped to ids."""

    text: str
    label: str
    where: str


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


def load_silo_dir(
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    split_seed: int = 0,
) -> SiloData:
    """Load a silo folder (see the module docstring for the format).

    Parameters
    ----------
    path : str or Path
        The silo folder. Its name becomes ``SiloData.name``.
    text_column, label_column : str
        Column (CSV) or key (JSONL) names of the text and the label.
    split_seed : int
        Seed for carving missing ``val``/``test`` splits out of ``train``.

    Returns
    -------
    SiloData
        The silo, with labels mapped to ids.

    Raises
    ------
    ValueError
        With the offending file (and line, where there is one) for: a missing or
        ambiguous split file, unreadable or malformed files, missing columns,
        empty text, an unknown label, or no training rows.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    files = {split: _find_split_file(root, split) for split in SPLIT_NAMES}
    train_file = files["train"]
    if train_file is None:
        raise ValueError(f"{root}: no train.jsonl or train.csv")
    raw = {
        split: list(_read_rows(file, text_column=text_column, label_column=label_column))
        for split, file in files.items()
        if file is not None
    }
    if not raw["train"]:
        raise ValueError(f"{train_file}: no training rows")
    metadata = _read_metadata(root / _METADATA_FILE)
    labels = _resolve_labels(root / _LABELS_FILE, raw)
    index = {name: i for i, name in enumerate(labels)}
    splits = {name: _to_examples(rows, index) for name, rows in raw.items()}
    splits = _fill_missing_splits(splits, seed=split_seed)
    silo = SiloData(
        name=root.resolve().name,
        labels=labels,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        metadata=metadata,
    )
    logger.info(
        "loaded silo %s: %d labels, %d/%d/%d train/val/test examples",
        silo.name,
        len(labels),
        len(silo.train),
        len(silo.val),
        len(silo.test),
    )
    return silo


def write_silo_dir(silo: SiloData, path: str | Path) -> Path:
    """Write a silo in the folder format that ``load_silo_dir`` reads.

    Splits are written as JSONL with ``text`` and ``label`` (the label name)
    keys; ``labels.json`` keeps the label order, so loading gives back an equal
    ``SiloData`` (the name comes from the folder name).

    Parameters
    ----------
    silo : SiloData
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
        If the metadata is not JSON-serialisable or a label id is out of range.
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    try:
        metadata_text = json.dumps(silo.metadata, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"silo {silo.name}: metadata is not JSON-serialisable: {exc}") from exc
    for split in SPLIT_NAMES:
        for stale in _SUFFIXES:
            (root / f"{split}{stale}").unlink(missing_ok=True)
        lines = [_example_to_json(ex, silo.labels) for ex in silo.split(split)]
        (root / f"{split}.jsonl").write_text(
            "".join(line + "\n" for line in lines), encoding="utf-8"
        )
    (root / _METADATA_FILE).write_text(metadata_text + "\n", encoding="utf-8")
    (root / _LABELS_FILE).write_text(
        json.dumps(list(silo.labels), indent=2) + "\n", encoding="utf-8"
    )
    return root


def _example_to_json(example: TextExample, labels: Sequence[str]) -> str:
    """Serialise one example as a JSONL line with its label name."""
    if not 0 <= example.label < len(labels):
        raise ValueError(f"label id {example.label} out of range for {len(labels)} labels")
    return json.dumps({"text": example.text, "label": labels[example.label]}, ensure_ascii=False)


def _find_split_file(root: Path, split: str) -> Path | None:
    """Return the single data file for a split, or None when there is none."""
    found = [
        root / f"{split}{suffix}" for suffix in _SUFFIXES if (root / f"{split}{suffix}").is_file()
    ]
    if len(found) > 1:
        raise ValueError(f"{root}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _read_rows(file: Path, *, text_column: str, label_column: str) -> Iterator[_RawRow]:
    """Read and validate the rows of one JSONL or CSV file."""
    try:
        content = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: cannot read file: {exc}") from exc
    required = (text_column, label_column)
    records = (
        _jsonl_records(file, content)
        if file.suffix == ".jsonl"
        else _csv_records(file, content, required=required)
    )
    for where, record in records:
        yield _validate_record(
            record, where=where, text_column=text_column, label_column=label_column
        )


def _jsonl_records(file: Path, content: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield ``(location, object)`` for each non-blank JSONL line."""
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def _csv_records(
    file: Path, content: str, *, required: Sequence[str]
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield ``(location, row)`` for each CSV data row after checking the header (line 1)."""
    reader = csv.DictReader(content.splitlines(keepends=True))
    try:
        header = reader.fieldnames
        if not header:
            raise ValueError(f"{file}:1: missing CSV header")
        missing = [col for col in required if col not in header]
        if missing:
            raise ValueError(f"{file}:1: missing column(s) {missing} in header {list(header)}")
        for row in reader:
            if None in row:
                raise ValueError(f"{file}:{reader.line_num}: more fields than the header has")
            yield f"{file}:{reader.line_num}", row
    except csv.Error as exc:
        raise ValueError(f"{file}:{reader.line_num}: malformed CSV: {exc}") from exc


def _validate_record(
    record: Mapping[str, Any], *, where: str, text_column: str, label_column: str
) -> _RawRow:
    """Check one record's columns and types and return it as a raw row."""
    missing = [col for col in (text_column, label_column) if col not in record]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; found {sorted(record)}")
    text, label = record[text_column], record[label_column]
    if text is None or label is None:
        raise ValueError(f"{where}: missing value for {text_column!r} or {label_column!r}")
    if not isinstance(text, str):
        raise ValueError(f"{where}: {text_column!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"{where}: empty text in column {text_column!r}")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise ValueError(f"{where}: label must be a string or an integer, got {label!r}")
    label_name = str(label).strip()
    if not label_name:
        raise ValueError(f"{where}: empty label in column {label_column!r}")
    return _RawRow(text=text, label=label_name, where=where)


def _read_metadata(file: Path) -> dict[str, object]:
    """Read the silo's public metadata, which must be a JSON object."""
    if not file.is_file():
        raise ValueError(f"{file}: missing; every silo publishes a metadata JSON object")
    value = _read_json(file)
    if not isinstance(value, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(value).__name__}")
    return value


def _resolve_labels(file: Path, raw: Mapping[str, Sequence[_RawRow]]) -> tuple[str, ...]:
    """Return the label names from labels.json, or the sorted union of the data's labels."""
    if not file.is_file():
        return tuple(sorted({row.label for rows in raw.values() for row in rows}))
    value = _read_json(file)
    if not isinstance(value, list) or not value:
        raise ValueError(f"{file}: expected a non-empty JSON list of label names")
    names: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (str, int)) or not str(item).strip():
            raise ValueError(
                f"{file}: label names must be non-empty strings or integers, got {item!r}"
            )
        names.append(str(item).strip())
    if len(set(names)) != len(names):
        raise ValueError(f"{file}: duplicate label names")
    return tuple(names)


def _read_json(file: Path) -> Any:
    """Parse a whole JSON file, turning every failure into a ValueError naming it."""
    try:
        return json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: cannot read file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}:{exc.lineno}: invalid JSON: {exc.msg}") from exc


def _to_examples(rows: Sequence[_RawRow], index: Mapping[str, int]) -> tuple[TextExample, ...]:
    """Map label names to ids, rejecting names outside the label set."""
    examples = []
    for row in rows:
        label = index.get(row.label)
        if label is None:
            raise ValueError(
                f"{row.where}: unknown label {row.label!r}; known labels: {sorted(index)}"
            )
        examples.append(TextExample(text=row.text, label=label))
    return tuple(examples)


def _fill_missing_splits(
    splits: dict[str, tuple[TextExample, ...]], *, seed: int
) -> dict[str, tuple[TextExample, ...]]:
    """Carve missing val/test splits out of train (fractions of the train file)."""
    missing = {name: frac for name, frac in _DEFAULT_HOLDOUT.items() if name not in splits}
    if not missing:
        return splits
    train = splits["train"]
    parts = stratified_split(
        [ex.label for ex in train], fractions=missing, rng=np.random.default_rng(seed)
    )
    result = dict(splits)
    for name, positions in parts.items():
        result[name] = tuple(train[i] for i in positions)
    logger.info("carved %s out of train (seed %d)", sorted(missing), seed)
    return result
