"""The silo-folder check: every problem of every silo at once, each with its fix, and the
loaders agree (a silo the check passes loads; one it refuses for its own files does not)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedprompt_client_agent.data.image_silos import load_image_silo_dir
from fedprompt_client_agent.data.silo_check import (
    MAX_ROW_PROBLEMS,
    SiloCheck,
    check_data_root,
)
from fedprompt_client_agent.data.text_silos import load_silo_dir

LABELS = ["a", "b"]


def _rows(n: int, labels: list[str] = LABELS) -> list[dict[str, str]]:
    return [{"text": f"review {i}", "label": labels[i % len(labels)]} for i in range(n)]


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def text_silo(
    root: Path,
    name: str,
    *,
    train: int = 20,
    metadata: object = None,
    labels: list[str] | None = LABELS,
) -> Path:
    """A valid text silo: JSONL train/val/test, metadata and labels."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text(_jsonl(_rows(train)))
    (folder / "val.jsonl").write_text(_jsonl(_rows(4)))
    (folder / "test.jsonl").write_text(_jsonl(_rows(4)))
    (folder / "metadata.json").write_text(json.dumps(metadata or {"region": name}))
    if labels is not None:
        (folder / "labels.json").write_text(json.dumps(labels))
    return folder


def image_silo(root: Path, name: str, *, train: int = 20, shape: tuple[int, ...] = (6, 6)) -> Path:
    """A valid image silo of two labels."""
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", 4), ("test", 4)):
        np.savez_compressed(
            folder / f"{split}.npz",
            images=rng.integers(0, 256, size=(n, *shape), dtype=np.uint8),
            labels=np.arange(n) % 2,
        )
    (folder / "metadata.json").write_text(json.dumps({"site": name}))
    (folder / "labels.json").write_text(json.dumps(LABELS))
    return folder


def _only(check: SiloCheck, silo: str) -> list[str]:
    return [p.line() for p in check.problems if p.silo == silo]


def _assert_one(check: SiloCheck, silo: str, *words: str) -> str:
    lines = _only(check, silo)
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]
    assert "-> fix: " in lines[0] and lines[0].split("-> fix: ")[1].strip()
    return lines[0]


def test_good_text_and_image_roots_pass_and_name_their_task(tmp_path: Path) -> None:
    for name in ("a", "b"):
        text_silo(tmp_path / "text", name)
        image_silo(tmp_path / "images", name)
    text, images = check_data_root(tmp_path / "text"), check_data_root(tmp_path / "images")
    assert text.ok and text.modality == "text" and text.task == "text"
    assert images.ok and images.modality == "image" and images.task == "vision"
    assert text.labels == images.labels == tuple(LABELS)
    assert [p.name for p in text.silos] == ["a", "b"]
    for silo in text.silos:  # the loader agrees
        load_silo_dir(silo)
    for silo in images.silos:
        load_image_silo_dir(silo)


def test_the_bundled_silos_pass(tmp_path: Path) -> None:
    from fedprompt_client_agent.tools.make_silos import main

    assert main(["--num-silos", "3", "--seed", "0", "--out", str(tmp_path)]) == 0
    check = check_data_root(tmp_path)
    assert check.ok, check.lines()
    assert check.task == "text" and len(check.silos) == 3


def _break_both_train_files(f: Path) -> None:
    (f / "train.csv").write_text("text,label\nhello,a\n")


def _break_no_train(f: Path) -> None:
    (f / "train.jsonl").rename(f / "train.txt")


def _break_empty_val(f: Path) -> None:
    (f / "val.jsonl").write_text("\n")


def _break_invalid_json_row(f: Path) -> None:
    (f / "train.jsonl").write_text(_jsonl(_rows(20)) + "{not json\n")


def _break_missing_label_row(f: Path) -> None:
    (f / "train.jsonl").write_text(_jsonl(_rows(20)) + json.dumps({"text": "x"}) + "\n")


def _break_csv_header(f: Path) -> None:
    (f / "train.jsonl").unlink()
    (f / "train.csv").write_text("text,condition\nhello,a\n")


def _break_unreadable(f: Path) -> None:
    (f / "test.jsonl").write_bytes(b"\xff\xfe\xfa not utf-8 \xff")


def _break_unknown_label(f: Path) -> None:
    (f / "test.jsonl").write_text(_jsonl(_rows(4, ["a", "zebra"])))


def _break_labels_file(f: Path) -> None:
    (f / "labels.json").write_text('["a", "a"]')


def _break_no_metadata(f: Path) -> None:
    (f / "metadata.json").unlink()


def _break_metadata_json(f: Path) -> None:
    (f / "metadata.json").write_text("{oops")


def _break_nested_metadata(f: Path) -> None:
    (f / "metadata.json").write_text(json.dumps({"region": {"city": "x"}}))


def _break_too_few(f: Path) -> None:
    (f / "train.jsonl").write_text(_jsonl(_rows(3)))


def _break_cannot_carve_test(f: Path) -> None:
    (f / "val.jsonl").unlink()
    (f / "test.jsonl").unlink()
    (f / "train.jsonl").write_text(_jsonl(_rows(6)))  # 3 per label: 15 % of 3 rounds to 0


BROKEN: dict[str, tuple[Callable[[Path], None], tuple[str, ...], bool]] = {
    # error class: (how to break a good silo, words of its one problem, the loader refuses it)
    "both train files": (_break_both_train_files, ("both", "train.csv", "keep one"), True),
    "no train file": (_break_no_train, ("no train file", "rename train.txt"), True),
    "empty split": (_break_empty_val, ("val.jsonl", "no rows", "carved"), False),
    "invalid JSON row": (_break_invalid_json_row, ("train.jsonl:21", "invalid JSON"), True),
    "missing label": (_break_missing_label_row, ("train.jsonl:21", "missing column"), True),
    "CSV header": (_break_csv_header, ("train.csv", "missing column", "header"), True),
    "unreadable": (_break_unreadable, ("test.jsonl", "cannot read", "UTF-8"), True),
    "unknown label": (_break_unknown_label, ("test.jsonl", "'zebra' (2 rows)", "add them"), True),
    "labels.json": (_break_labels_file, ("labels.json", "duplicate"), True),
    "no metadata": (_break_no_metadata, ("metadata.json", "missing"), True),
    "metadata JSON": (_break_metadata_json, ("metadata.json", "invalid JSON"), True),
    "nested metadata": (_break_nested_metadata, ("metadata.json", "coordinator"), False),
    "too few examples": (_break_too_few, ("3 training examples", "at least 8"), False),
    "no test to carve": (_break_cannot_carve_test, ("carve a val split", "carve a test"), False),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_each_text_problem_is_found_with_its_fix(tmp_path: Path, name: str) -> None:
    brk, words, loader_refuses = BROKEN[name]
    for silo in ("good", "other"):
        text_silo(tmp_path, silo)
    broken = text_silo(tmp_path, "broken")
    brk(broken)
    small = name == "no test to carve"  # judged alone, without the too-few-examples rule
    check = check_data_root(tmp_path, min_train_examples=1 if small else 8)
    assert not check.ok and check.task == "text"
    assert _only(check, "good") == [] and _only(check, "other") == []
    lines = _only(check, "broken")
    if small:  # 3 per label: neither val nor test can be carved
        assert len(lines) == 2 and all(w in " ".join(lines) for w in words)
    else:
        _assert_one(check, "broken", *words)
    if loader_refuses:  # the loader and the check agree: the client agent would exit
        with pytest.raises(ValueError):
            load_silo_dir(broken)


def test_many_bad_rows_are_listed_up_to_a_cap_and_counted(tmp_path: Path) -> None:
    text_silo(tmp_path, "other")
    f = text_silo(tmp_path, "rows")
    (f / "train.jsonl").write_text(_jsonl(_rows(20)) + "[1]\n" * (MAX_ROW_PROBLEMS + 3))
    lines = _only(check_data_root(tmp_path), "rows")
    assert len(lines) == MAX_ROW_PROBLEMS + 1
    assert "expected a JSON object" in lines[0] and "train.jsonl:21" in lines[0]
    assert "3 more malformed rows" in lines[-1]


def test_every_problem_of_every_silo_is_listed_at_once(tmp_path: Path) -> None:
    text_silo(tmp_path, "good")
    a = text_silo(tmp_path, "a")
    _break_both_train_files(a)
    _break_no_metadata(a)
    b = text_silo(tmp_path, "b")
    _break_unknown_label(b)
    _break_invalid_json_row(b)
    image_silo(tmp_path, "scans")
    text_silo(tmp_path, "Good")
    text_silo(tmp_path, "odd", labels=["a", "b", "c"])
    text_silo(tmp_path, "operator")  # a reserved identity
    check = check_data_root(tmp_path)
    assert check.modality == "text" and check.labels == tuple(LABELS)
    assert len(_only(check, "a")) == 2
    assert len(_only(check, "b")) == 2
    _assert_one(check, "scans", "image silo among text silos")
    _assert_one(check, "odd", "label set", "differs")
    _assert_one(check, "operator", "reserved")
    assert any("differ only in case" in line for line in _only(check, ""))
    assert _only(check, "good") == []


def test_mixed_kinds_of_split_files_in_one_silo(tmp_path: Path) -> None:
    text_silo(tmp_path, "t")
    f = text_silo(tmp_path, "both")
    np.savez_compressed(f / "train.npz", images=np.zeros((2, 4, 4), np.uint8), labels=[0, 1])
    _assert_one(check_data_root(tmp_path), "both", "text split files", "image split files")


def test_root_problems(tmp_path: Path) -> None:
    missing = check_data_root(tmp_path / "nope")
    assert not missing.ok and "does not exist" in missing.lines()[0]
    text_silo(tmp_path, "alone")
    alone = check_data_root(tmp_path)
    assert [p.silo for p in alone.problems] == [""]
    assert "1 silo folder(s)" in alone.lines()[0]


def _break_npz(f: Path) -> None:
    (f / "val.npz").write_bytes(b"not a zip")


def _break_arrays(f: Path) -> None:
    np.savez_compressed(f / "test.npz", pixels=np.zeros((2, 6, 6), np.uint8))


def _break_label_range(f: Path) -> None:
    np.savez_compressed(f / "test.npz", images=np.zeros((2, 6, 6), np.uint8), labels=[0, 7])


def _break_image_labels_missing(f: Path) -> None:
    (f / "labels.json").unlink()


def _break_shapes(f: Path) -> None:
    np.savez_compressed(f / "test.npz", images=np.zeros((2, 8, 8), np.uint8), labels=[0, 1])


def _break_empty_images(f: Path) -> None:
    np.savez_compressed(
        f / "val.npz", images=np.zeros((0, 6, 6), np.uint8), labels=np.zeros(0, np.int64)
    )


def _break_no_train_npz(f: Path) -> None:
    (f / "train.npz").unlink()


IMAGE_BROKEN: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "unreadable npz": (_break_npz, ("val.npz", "not a readable")),
    "missing arrays": (_break_arrays, ("test.npz", "missing array")),
    "label out of range": (_break_label_range, ("test.npz", "out of range")),
    "no labels.json": (_break_image_labels_missing, ("labels.json", "missing")),
    "shapes differ": (_break_shapes, ("shapes differ",)),
    "empty split": (_break_empty_images, ("val.npz", "no images")),
    "no train.npz": (_break_no_train_npz, ("no train.npz",)),
}


@pytest.mark.parametrize("name", sorted(IMAGE_BROKEN))
def test_each_image_problem_is_found_and_the_loader_agrees(tmp_path: Path, name: str) -> None:
    brk, words = IMAGE_BROKEN[name]
    image_silo(tmp_path, "good")
    broken = image_silo(tmp_path, "broken")
    brk(broken)
    check = check_data_root(tmp_path)
    assert check.task == "vision"
    _assert_one(check, "broken", *words)
    if name != "empty split":  # the loader carves nothing into an empty split's place
        with pytest.raises(ValueError):
            load_image_silo_dir(broken)
