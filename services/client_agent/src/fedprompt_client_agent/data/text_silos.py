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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

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
    "SPLIT_SUFFIXES",
    "RawRow",
    "SiloData",
    "TextExample",
    "load_silo_dir",
    "resolve_labels",
    "scan_rows",
    "split_file_candidates",
    "write_silo_dir",
]

logger = logging.getLogger(__name__)

#: The file types of a text split, in the order they are looked for.
SPLIT_SUFFIXES: Final = (".jsonl", ".csv")

#: A record as parsed from one line, or the error of that line.
_Record = Mapping[str, Any] | ValueError


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
class RawRow:
    """A row as read from disk, before label names are mapped to ids."""

    text: str
    label: str
    where: str


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
    metadata = read_metadata(root / METADATA_FILE)
    labels = resolve_labels(root / LABELS_FILE, raw)
    index = {name: i for i, name in enumerate(labels)}
    splits = {name: _to_examples(rows, index) for name, rows in raw.items()}
    splits = fill_missing_splits(
        splits,
        seed=split_seed,
        labels_of=lambda examples: [ex.label for ex in examples],
        subset=lambda examples, positions: tuple(examples[i] for i in positions),
    )
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
    metadata_text = metadata_json(silo.name, silo.metadata)
    for split in SPLIT_NAMES:
        for stale in SPLIT_SUFFIXES:
            (root / f"{split}{stale}").unlink(missing_ok=True)
        lines = [_example_to_json(ex, silo.labels) for ex in silo.split(split)]
        (root / f"{split}.jsonl").write_text(
            "".join(line + "\n" for line in lines), encoding="utf-8"
        )
    write_metadata_and_labels(root, metadata_text, silo.labels)
    return root


def _example_to_json(example: TextExample, labels: Sequence[str]) -> str:
    """Serialise one example as a JSONL line with its label name."""
    if not 0 <= example.label < len(labels):
        raise ValueError(f"label id {example.label} out of range for {len(labels)} labels")
    return json.dumps({"text": example.text, "label": labels[example.label]}, ensure_ascii=False)


def split_file_candidates(root: Path, split: str) -> list[Path]:
    """Every data file of one split in a silo folder (``.jsonl`` then ``.csv``).

    More than one is an error of the folder (see :func:`load_silo_dir`); the silo-folder
    check (:mod:`fedprompt_client_agent.data.silo_check`) reports it with the others.
    """
    return [
        root / f"{split}{suffix}"
        for suffix in SPLIT_SUFFIXES
        if (root / f"{split}{suffix}").is_file()
    ]


def _find_split_file(root: Path, split: str) -> Path | None:
    """Return the single data file for a split, or None when there is none."""
    found = split_file_candidates(root, split)
    if len(found) > 1:
        raise ValueError(f"{root}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def scan_rows(file: Path, *, text_column: str, label_column: str) -> Iterator[RawRow | ValueError]:
    """Read one JSONL or CSV split file, row by row, without stopping at a bad row.

    Yields a :class:`RawRow` per valid row and a ``ValueError`` (naming the file and line)
    per malformed one, in file order. The loader raises the first error; the silo-folder
    check lists them all.

    Raises
    ------
    ValueError
        For a problem of the whole file: unreadable, not UTF-8, a CSV header without the
        columns, or CSV that cannot be parsed past some line.
    """
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
        if isinstance(record, ValueError):
            yield record
            continue
        try:
            yield _validate_record(
                record, where=where, text_column=text_column, label_column=label_column
            )
        except ValueError as exc:
            yield exc


def _read_rows(file: Path, *, text_column: str, label_column: str) -> Iterator[RawRow]:
    """Read and validate the rows of one JSONL or CSV file; the first bad row raises."""
    for row in scan_rows(file, text_column=text_column, label_column=label_column):
        if isinstance(row, ValueError):
            raise row
        yield row


def _jsonl_records(file: Path, content: str) -> Iterator[tuple[str, _Record]]:
    """Yield ``(location, object or error)`` for each non-blank JSONL line."""
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, ValueError(f"{where}: invalid JSON: {exc.msg}")
            continue
        if not isinstance(record, dict):
            yield where, ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            continue
        yield where, record


def _csv_records(
    file: Path, content: str, *, required: Sequence[str]
) -> Iterator[tuple[str, _Record]]:
    """Yield ``(location, row or error)`` for each CSV data row after checking the header."""
    reader = csv.DictReader(content.splitlines(keepends=True))
    try:
        header = reader.fieldnames
        if not header:
            raise ValueError(f"{file}:1: missing CSV header")
        missing = [col for col in required if col not in header]
        if missing:
            raise ValueError(f"{file}:1: missing column(s) {missing} in header {list(header)}")
        for row in reader:
            where = f"{file}:{reader.line_num}"
            if None in row:
                yield where, ValueError(f"{where}: more fields than the header has")
                continue
            yield where, row
    except csv.Error as exc:
        raise ValueError(f"{file}:{reader.line_num}: malformed CSV: {exc}") from exc


def _validate_record(
    record: Mapping[str, Any], *, where: str, text_column: str, label_column: str
) -> RawRow:
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
    return RawRow(text=text, label=label_name, where=where)


def resolve_labels(file: Path, raw: Mapping[str, Sequence[RawRow]]) -> tuple[str, ...]:
    """Return the label names from labels.json, or the sorted union of the data's labels."""
    if not file.is_file():
        return tuple(sorted({row.label for rows in raw.values() for row in rows}))
    return read_label_names(file)


def _to_examples(rows: Sequence[RawRow], index: Mapping[str, int]) -> tuple[TextExample, ...]:
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
