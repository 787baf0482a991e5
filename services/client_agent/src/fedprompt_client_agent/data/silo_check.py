"""Check a folder of silo folders before a federation starts: every problem, with its fix.

``fedprompt up --data-root`` and ``fedprompt bench --data-root`` call
:func:`check_data_root` before they start any process. A silo the client agent could not
load would otherwise stop a federation after it started (a client process exits); here
every silo is read with the loaders' own functions (:mod:`.text_silos`, :mod:`.image_silos`,
:mod:`.silo_files`), nothing stops at the first problem, and each problem comes with the
fix in words.

What is checked, per silo folder (every non-hidden sub-folder of the data root):

- the split files: a text silo has ``train.jsonl`` or ``train.csv`` (never both, nor both
  for ``val``/``test``), an image silo ``train.npz``; a folder with both kinds is refused;
- every row of every text split (unreadable file, invalid JSON, CSV header without the
  text or label column, missing or empty text or label, extra fields), every array of
  every image split (missing arrays, dtypes, shapes, label ids out of range);
- empty splits, labels outside ``labels.json``, a bad ``labels.json`` (missing for
  images), ``metadata.json`` (missing, invalid, not an object, or refused by the
  coordinator: nested values, too large, too many fields);
- too few examples: fewer than ``min_train_examples`` training examples, or no test or
  validation example after the missing splits are carved out of ``train`` (the loader's
  carving, seed 0);
- the folder name, which becomes the client id and the certificate's name.

And across silos: fewer than ``min_silos``, a silo whose modality (text or image) differs
from the others', label sets that differ (the model's head has one size), and names equal
up to case (certificate names are case-insensitive).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from fedprompt.client_input import check_client_id, parse_metadata
from fedprompt.errors import FedPromptError
from fedprompt_client_agent.data.image_silos import (
    IMAGE_SPLIT_SUFFIX,
    ImageSplit,
    read_image_labels,
    read_image_split,
)
from fedprompt_client_agent.data.silo_files import (
    DEFAULT_HOLDOUT,
    LABELS_FILE,
    METADATA_FILE,
    SPLIT_NAMES,
    fill_missing_splits,
    read_label_names,
    read_metadata,
)
from fedprompt_client_agent.data.text_silos import (
    RawRow,
    resolve_labels,
    scan_rows,
    split_file_candidates,
)

__all__ = [
    "MAX_ROW_PROBLEMS",
    "MIN_SILOS",
    "MIN_TRAIN_EXAMPLES",
    "SiloCheck",
    "SiloProblem",
    "check_data_root",
]

#: Fewest silos a federation of one data root needs.
MIN_SILOS: Final = 2
#: Fewest training examples a silo needs (after ``val``/``test`` are carved out of it).
MIN_TRAIN_EXAMPLES: Final = 8
#: Row problems listed per file; the rest are counted in one more line.
MAX_ROW_PROBLEMS: Final = 5

TEXT: Final = "text"
IMAGE: Final = "image"
#: The bench task of each modality.
TASK_OF_MODALITY: Final = {TEXT: "text", IMAGE: "vision"}

_ROW_FIX: Final = (
    "correct or delete these rows: every row needs a non-empty {text!r} and a {label!r} "
    "(a label name, or an integer read as a name)"
)


@dataclass(frozen=True)
class SiloProblem:
    """One problem of one silo folder (or of the data root), with what to do about it.

    Attributes
    ----------
    silo : str
        The silo folder's name; ``""`` for a problem of the data root as a whole.
    where : str
        The file (and line), relative to the silo folder; ``""`` for the whole folder.
    problem : str
        What is wrong.
    fix : str
        What to do, in words.
    """

    silo: str
    where: str
    problem: str
    fix: str

    def line(self) -> str:
        """The problem as one plain line: ``silo/where: problem -> fix``."""
        place = "/".join(p for p in (self.silo, self.where) if p) or "data root"
        return f"{place}: {self.problem} -> fix: {self.fix}"


@dataclass(frozen=True)
class SiloCheck:
    """The result of :func:`check_data_root`.

    Attributes
    ----------
    root : Path
        The data root.
    silos : tuple of Path
        The silo folders, sorted by name (those with problems included).
    modality : str or None
        ``"text"`` or ``"image"``: the modality of most silos (None: no silo).
    labels : tuple of str
        The label set most silos share (empty when unknown).
    problems : tuple of SiloProblem
        Every problem found; empty when the folders are ready.
    """

    root: Path
    silos: tuple[Path, ...]
    modality: str | None
    labels: tuple[str, ...] = ()
    problems: tuple[SiloProblem, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems

    @property
    def task(self) -> str | None:
        """The bench task of the silos' modality (``text`` or ``vision``)."""
        return None if self.modality is None else TASK_OF_MODALITY[self.modality]

    def lines(self) -> list[str]:
        """Every problem as one plain line."""
        return [p.line() for p in self.problems]


@dataclass
class _Silo:
    """What one silo folder's check found."""

    path: Path
    modality: str | None = None
    labels: tuple[str, ...] | None = None
    problems: list[SiloProblem] = field(default_factory=list)

    def add(self, where: str | Path, problem: str, fix: str) -> None:
        """Record a problem; paths inside the folder are shown relative to it."""
        shown = where.name if isinstance(where, Path) else where
        prefix = f"{self.path}/"
        self.problems.append(
            SiloProblem(self.path.name, shown, problem.replace(prefix, "").strip(), fix)
        )

    def error(self, where: str | Path, exc: ValueError, fix: str) -> None:
        """Record a loader's error; its message names the file, which ``where`` shows."""
        message = str(exc)
        for prefix in (f"{self.path}/{Path(where).name}", f"{self.path}"):
            message = message.removeprefix(prefix).lstrip(":").strip()
        message = re.sub(r"^(\d+): ", r"line \1: ", message)
        self.add(where, message or str(exc), fix)


def check_data_root(
    root: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    min_silos: int = MIN_SILOS,
    min_train_examples: int = MIN_TRAIN_EXAMPLES,
) -> SiloCheck:
    """Check every silo folder under ``root`` and return every problem found.

    Parameters
    ----------
    root : str or Path
        The data root: one sub-folder per silo (hidden folders are skipped).
    text_column, label_column : str
        Column (CSV) or key (JSONL) names of the text and the label of text silos.
    min_silos : int
        Fewest silo folders the root must hold.
    min_train_examples : int
        Fewest training examples per silo, after missing val/test splits are carved out.

    Returns
    -------
    SiloCheck
        The silos, their modality and label set, and every problem (none: ready).
    """
    root = Path(root)
    if not root.is_dir():
        problem = SiloProblem(
            "",
            str(root),
            "not a folder" if root.exists() else "does not exist",
            "pass --data-root a folder that holds one sub-folder per silo",
        )
        return SiloCheck(root, (), None, (), (problem,))
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    silos = [
        _check_silo(
            folder,
            text_column=text_column,
            label_column=label_column,
            min_train=min_train_examples,
        )
        for folder in folders
    ]
    found = [s for s in silos if s.modality is not None]
    modality = _majority([s.modality for s in found])
    labels = _majority([s.labels for s in found if s.modality == modality and s.labels])
    cross = _across_silos(root, silos, modality, labels, min_silos=min_silos)
    problems = tuple(cross + [p for s in silos for p in s.problems])
    return SiloCheck(root, tuple(folders), modality, labels or (), problems)


_T = TypeVar("_T")


def _majority(values: Sequence[_T | None]) -> _T | None:
    """The most common value (the first seen among equals); None for none."""
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def _across_silos(
    root: Path,
    silos: Sequence[_Silo],
    modality: str | None,
    labels: tuple[str, ...] | None,
    *,
    min_silos: int,
) -> list[SiloProblem]:
    """Problems that only show across silos: count, modality, label set, names."""
    problems = []
    if len(silos) < min_silos:
        problems.append(
            SiloProblem(
                "",
                "",
                f"{root} holds {len(silos)} silo folder(s); a federation needs at least "
                f"{min_silos}",
                "put one sub-folder per silo under the data root (each with its train file, "
                f"{METADATA_FILE} and {LABELS_FILE})",
            )
        )
    for silo in silos:
        if silo.modality is not None and modality is not None and silo.modality != modality:
            silo.add(
                "",
                f"an {silo.modality} silo among {modality} silos",
                f"one federation trains one modality: move this folder to a data root of "
                f"{silo.modality} silos, or replace it with a {modality} silo",
            )
        elif silo.labels and labels and silo.labels != labels:
            silo.add(
                LABELS_FILE,
                f"label set {list(silo.labels)} differs from the other silos' {list(labels)}",
                f"every silo needs the same labels in the same order: write {LABELS_FILE} "
                f"with {json.dumps(list(labels))} into this folder (and correct its rows)",
            )
    by_name: dict[str, list[str]] = {}
    for silo in silos:
        by_name.setdefault(silo.path.name.lower(), []).append(silo.path.name)
    for names in by_name.values():
        if len(names) > 1:
            problems.append(
                SiloProblem(
                    "",
                    "",
                    f"silo names {names} differ only in case; they name the clients and their "
                    "certificates, which ignore case",
                    "rename the folders so that their names differ in more than case",
                )
            )
    return problems


def _check_silo(folder: Path, *, text_column: str, label_column: str, min_train: int) -> _Silo:
    """Every problem of one silo folder (its modality and labels when they can be read)."""
    silo = _Silo(folder)
    try:
        check_client_id(folder.name, field="silo folder name")
    except FedPromptError as exc:
        silo.add(
            "",
            str(exc),
            "rename the folder: 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, and not a service's name",
        )
    has_text = any(split_file_candidates(folder, split) for split in SPLIT_NAMES)
    has_image = any((folder / f"{s}{IMAGE_SPLIT_SUFFIX}").is_file() for s in SPLIT_NAMES)
    if has_text and has_image:
        silo.add(
            "",
            "holds both text split files (.jsonl/.csv) and image split files (.npz)",
            "a silo is either text or images: keep one kind of split file",
        )
        return silo
    if has_image:
        silo.modality = IMAGE
        _check_image_silo(silo, min_train=min_train)
    else:  # text, or nothing yet: the text checks say which file is missing
        silo.modality = TEXT if has_text else None
        _check_text_silo(
            silo, text_column=text_column, label_column=label_column, min_train=min_train
        )
    return silo


def _check_metadata(silo: _Silo, *, flat: bool) -> None:
    """``metadata.json``: readable, an object, and what the coordinator accepts."""
    file = silo.path / METADATA_FILE
    if not file.is_file():
        silo.add(
            METADATA_FILE,
            "missing",
            f"add {METADATA_FILE}: a flat JSON object describing the silo publicly (e.g. "
            '{"region": "north", "specialty": "cardiology"}); use {} to publish nothing',
        )
        return
    try:
        metadata = read_metadata(file, flat=flat)
    except ValueError as exc:
        silo.error(
            METADATA_FILE,
            exc,
            "make it one flat JSON object of strings, numbers and booleans (no nested objects "
            "or lists)",
        )
        return
    try:  # what the agent sends and the coordinator parses
        parse_metadata(json.dumps(metadata, sort_keys=True), field=METADATA_FILE)
    except (FedPromptError, ValueError) as exc:
        silo.add(
            METADATA_FILE,
            f"the coordinator would refuse it: {exc}",
            "keep the metadata a small flat JSON object of strings, numbers and booleans",
        )


def _check_labels_file(silo: _Silo, *, required: bool) -> tuple[str, ...] | None:
    """The names of ``labels.json`` (None: missing or broken, reported when it matters)."""
    file = silo.path / LABELS_FILE
    if not file.is_file():
        if required:
            silo.add(
                LABELS_FILE,
                "missing; image silos name their labels in it",
                f'add {LABELS_FILE}: the JSON list of label names in id order, e.g. ["0", "1"]',
            )
        return None
    try:
        return read_image_labels(file) if required else read_label_names(file)
    except ValueError as exc:
        silo.error(
            LABELS_FILE,
            exc,
            'make it a JSON list of distinct, non-empty label names in id order, e.g. ["a", "b"]',
        )
        return None


def _check_sizes(silo: _Silo, sizes: dict[str, list[int]], *, min_train: int, unit: str) -> None:
    """Too few examples once missing val/test splits are carved out of train (seed 0)."""
    if "train" not in sizes or not sizes["train"]:
        return
    carved = fill_missing_splits(
        {name: list(labels) for name, labels in sizes.items()},
        seed=0,
        labels_of=lambda labels: labels,
        subset=lambda labels, positions: [labels[i] for i in positions],
    )
    missing = [name for name in DEFAULT_HOLDOUT if name not in sizes]
    source = f" (after {' and '.join(missing)} are carved out of it)" if missing else ""
    if len(carved["train"]) < min_train:
        silo.add(
            f"train{unit}",
            f"{len(carved['train'])} training examples{source}; at least {min_train} needed",
            "add training examples, or merge this silo with another of the same owner",
        )
    for name in ("val", "test"):
        if name in missing and not carved[name]:
            silo.add(
                f"train{unit}",
                f"too few examples per label to carve a {name} split out of train "
                f"({len(sizes['train'])} examples)",
                f"add a {name} file of your own, or more training examples (about 7 per label)",
            )


def _check_text_silo(silo: _Silo, *, text_column: str, label_column: str, min_train: int) -> None:
    """Split files, rows, labels, metadata and sizes of a text silo."""
    folder = silo.path
    files: dict[str, Path] = {}
    for split in SPLIT_NAMES:
        found = split_file_candidates(folder, split)
        if len(found) > 1:
            silo.add(
                found[0].name,
                f"both {found[0].name} and {found[1].name} exist, so the {split} split is "
                "ambiguous (the client agent would exit after the federation started)",
                f"keep one of them: delete or rename {found[1].name} (or {found[0].name})",
            )
        elif found:
            files[split] = found[0]
    if not any(split_file_candidates(folder, "train")):
        others = sorted(p.name for p in folder.glob("train.*") if p.is_file())
        hint = f"rename {others[0]} to train.jsonl or train.csv, or add" if others else "add"
        silo.add(
            "",
            "no train file" + (f" ({', '.join(others)} is not a split file)" if others else ""),
            f"{hint} train.jsonl (one JSON object per line with {text_column!r} and "
            f"{label_column!r}) or train.csv (a header naming {text_column!r} and {label_column!r})",
        )
    _check_metadata(silo, flat=False)
    rows: dict[str, list[RawRow]] = {}
    for split, file in files.items():
        rows[split] = _scan_text_file(
            silo, file, text_column=text_column, label_column=label_column
        )
    for split, kept in rows.items():
        if not kept and split in files and not _has_problem(silo, files[split].name):
            silo.add(
                files[split].name,
                "no rows" if split != "train" else "no training rows",
                "add rows"
                + (
                    ""
                    if split == "train"
                    else f", or delete the file so {split} is carved out of train"
                ),
            )
    labels_file = _check_labels_file(silo, required=False)
    if (folder / LABELS_FILE).is_file() and labels_file is None:
        return  # the label set is unknown: row labels cannot be judged
    labels = resolve_labels(folder / LABELS_FILE, rows)
    silo.labels = labels or None
    index = {name: i for i, name in enumerate(labels)}
    for split, kept in rows.items():
        unknown = Counter(row.label for row in kept if row.label not in index)
        if unknown:
            names = ", ".join(f"{name!r} ({n} rows)" for name, n in unknown.most_common(5))
            first = next(row.where for row in kept if row.label not in index)
            silo.add(
                files[split].name,
                f"labels not in {LABELS_FILE}: {names}; first at {Path(first).name}",
                f"add them to {LABELS_FILE} (the same list in every silo) or correct the rows",
            )
    sizes = {
        split: [index[r.label] for r in kept if r.label in index] for split, kept in rows.items()
    }
    unit = files["train"].suffix if "train" in files else ""
    _check_sizes(silo, sizes, min_train=min_train, unit=unit)


def _has_problem(silo: _Silo, where: str) -> bool:
    """Whether a problem of this file is already recorded."""
    return any(p.where.split(":")[0] == where for p in silo.problems)


def _scan_text_file(
    silo: _Silo, file: Path, *, text_column: str, label_column: str
) -> list[RawRow]:
    """The valid rows of one split file; its problems go into the silo's list."""
    kept: list[RawRow] = []
    bad: list[ValueError] = []
    try:
        for row in scan_rows(file, text_column=text_column, label_column=label_column):
            if isinstance(row, ValueError):
                bad.append(row)
            else:
                kept.append(row)
    except ValueError as exc:
        silo.error(
            file,
            exc,
            "save it as UTF-8 "
            + (
                f"with a header line naming the columns {text_column!r} and {label_column!r}"
                if file.suffix == ".csv"
                else "with one JSON object per line"
            ),
        )
        return kept
    fix = _ROW_FIX.format(text=text_column, label=label_column)
    for error in bad[:MAX_ROW_PROBLEMS]:
        where, _, message = str(error).partition(": ")
        silo.add(Path(where).name, message, fix)
    if len(bad) > MAX_ROW_PROBLEMS:
        silo.add(file.name, f"{len(bad) - MAX_ROW_PROBLEMS} more malformed rows", fix)
    return kept


def _check_image_silo(silo: _Silo, *, min_train: int) -> None:
    """Split files, arrays, labels, metadata and sizes of an image silo."""
    folder = silo.path
    train_file = folder / f"train{IMAGE_SPLIT_SUFFIX}"
    if not train_file.is_file():
        silo.add(
            "",
            f"no train{IMAGE_SPLIT_SUFFIX}",
            f"add train{IMAGE_SPLIT_SUFFIX}: arrays 'images' (uint8 [N, H, W] or [N, H, W, 3]) "
            "and 'labels' (int [N])",
        )
    stray = sorted(p.name for s in SPLIT_NAMES for p in split_file_candidates(folder, s))
    if stray:
        silo.add("", f"text split files {stray} in an image silo", "delete them or move them out")
    _check_metadata(silo, flat=True)
    labels = _check_labels_file(silo, required=True)
    silo.labels = labels
    num_labels = len(labels) if labels else 2**62
    splits: dict[str, ImageSplit] = {}
    for name in SPLIT_NAMES:
        file = folder / f"{name}{IMAGE_SPLIT_SUFFIX}"
        if not file.is_file():
            continue
        try:
            splits[name] = read_image_split(file, num_labels=num_labels)
        except ValueError as exc:
            silo.error(
                file,
                exc,
                "write it with numpy.savez_compressed(file, images=<uint8 [N, H, W] or "
                f"[N, H, W, 3]>, labels=<int [N], ids below the {LABELS_FILE} count>)",
            )
            continue
        if len(splits[name]) == 0:
            silo.add(
                file.name,
                "no images" if name != "train" else "no training images",
                "add images"
                + (
                    ""
                    if name == "train"
                    else f", or delete the file so {name} is carved out of train"
                ),
            )
            del splits[name]
    shapes = {name: split.image_shape for name, split in splits.items()}
    if len(set(shapes.values())) > 1:
        silo.add(
            "",
            f"image shapes differ between splits: {shapes}",
            "resize every split's images to one shape (and one channel count)",
        )
    if "train" in splits:
        _check_sizes(
            silo,
            {name: split.labels.tolist() for name, split in splits.items()},
            min_train=min_train,
            unit=IMAGE_SPLIT_SUFFIX,
        )
