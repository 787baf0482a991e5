"""Tests for the silo folder format: loading, validation errors, round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedprompt_client_agent.data.silo_files import stratified_split
from fedprompt_client_agent.data.text_silos import (
    SiloData,
    TextExample,
    load_silo_dir,
    write_silo_dir,
)


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _write_csv(path: Path, header: str, lines: list[str]) -> None:
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")


def _silo_folder(tmp_path: Path, rows: list[dict[str, object]] | None = None) -> Path:
    """A minimal valid JSONL silo with train only."""
    folder = tmp_path / "silo-a"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", rows or [{"text": "good", "label": "pos"}])
    (folder / "metadata.json").write_text('{"specialty": "x"}', encoding="utf-8")
    return folder


def test_load_csv_with_all_splits(tmp_path: Path) -> None:
    folder = tmp_path / "clinic"
    folder.mkdir()
    _write_csv(folder / "train.csv", "text,label", ['"hello, world",b', "plain,a", "third,b"])
    _write_csv(folder / "val.csv", "text,label", ["v1,a"])
    _write_csv(folder / "test.csv", "text,label", ["t1,b"])
    (folder / "metadata.json").write_text('{"region": "north", "beds": 10}', encoding="utf-8")

    silo = load_silo_dir(folder)

    assert silo.name == "clinic"
    assert silo.labels == ("a", "b")  # sorted union
    assert silo.train == (
        TextExample("hello, world", 1),
        TextExample("plain", 0),
        TextExample("third", 1),
    )
    assert silo.val == (TextExample("v1", 0),)
    assert silo.test == (TextExample("t1", 1),)
    assert silo.metadata == {"region": "north", "beds": 10}


def test_load_jsonl_with_labels_file_int_labels_and_custom_columns(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    _write_jsonl(
        folder / "train.jsonl",
        [{"review": "x", "y": 3}, {"review": "y", "y": "1"}, {"review": "z", "y": 3}],
    )
    _write_jsonl(folder / "val.jsonl", [{"review": "v", "y": 1}])
    _write_jsonl(folder / "test.jsonl", [])
    (folder / "metadata.json").write_text("{}", encoding="utf-8")
    (folder / "labels.json").write_text('["3", "2", "1"]', encoding="utf-8")

    silo = load_silo_dir(folder, text_column="review", label_column="y")

    assert silo.labels == ("3", "2", "1")
    assert [ex.label for ex in silo.train] == [0, 2, 0]
    assert silo.val == (TextExample("v", 2),)
    assert silo.test == ()


def test_missing_val_and_test_are_carved_from_train_deterministically(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(40)]
    folder = _silo_folder(tmp_path, rows)

    first = load_silo_dir(folder, split_seed=3)
    second = load_silo_dir(folder, split_seed=3)
    other = load_silo_dir(folder, split_seed=4)

    assert first == second
    assert first.train != other.train
    assert (len(first.train), len(first.val), len(first.test)) == (28, 6, 6)
    texts = [ex.text for split in (first.train, first.val, first.test) for ex in split]
    assert sorted(texts) == sorted(str(r["text"]) for r in rows)
    assert {ex.label for ex in first.val} == {0, 1}  # stratified


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    silo = SiloData(
        name="clinic-9",
        labels=("zeta", "alpha", "mid"),
        train=(TextExample('un, "deux"\ntrois', 2), TextExample("é ü 日本", 0)),
        val=(TextExample("v", 1),),
        test=(),
        metadata={"specialty": "psychiatry", "num_records": 2, "nested": {"a": [1, 2]}},
    )
    folder = write_silo_dir(silo, tmp_path / "clinic-9")
    assert load_silo_dir(folder) == silo
    # writing again over existing files (and a stale CSV) still round-trips
    (folder / "val.csv").write_text("text,label\nx,zeta\n", encoding="utf-8")
    write_silo_dir(silo, folder)
    assert load_silo_dir(folder) == silo


def test_write_rejects_non_json_metadata(tmp_path: Path) -> None:
    silo = SiloData(name="s", labels=("a",), train=(TextExample("t", 0),), metadata={"x": {1, 2}})
    with pytest.raises(ValueError, match="metadata"):
        write_silo_dir(silo, tmp_path / "s")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"text": "a"}\n', "train.jsonl:1: missing column"),
        (
            '{"text": "a", "label": "pos"}\n{"text": "   ", "label": "pos"}\n',
            "train.jsonl:2: empty text",
        ),
        (
            '{"text": "a", "label": "pos"}\n\n{"text": "b", "label": "neg"}\n',
            "train.jsonl:3: unknown label 'neg'",
        ),
        ('{"text": "a", "label": "pos"}\n{"text": \n', "train.jsonl:2: invalid JSON"),
        ('["text", "label"]\n', "train.jsonl:1: expected a JSON object"),
        ('{"text": "a", "label": true}\n', "train.jsonl:1: label must be"),
        ('{"text": 5, "label": "pos"}\n', "train.jsonl:1: 'text' must be a string"),
        ("\n\n", "train.jsonl: no training rows"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path: Path, content: str, fragment: str) -> None:
    folder = _silo_folder(tmp_path)
    (folder / "train.jsonl").write_text(content, encoding="utf-8")
    (folder / "labels.json").write_text('["pos"]', encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(fragment)) as info:
        load_silo_dir(folder)
    assert str(folder / "train.jsonl") in str(info.value)


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (["body,label", "a,pos"], "train.csv:1: missing column"),
        (["text,label", "a,pos", ",pos"], "train.csv:3: empty text"),
        (["text,label", "a,pos", "b"], "train.csv:3: missing value"),
        (["text,label", "a,pos,extra"], "train.csv:2: more fields"),
        (["text,label"], "train.csv: no training rows"),
        (["text,label", "a,"], "train.csv:2: empty label"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path: Path, lines: list[str], fragment: str) -> None:
    folder = _silo_folder(tmp_path)
    (folder / "train.jsonl").unlink()
    _write_csv(folder / "train.csv", lines[0], lines[1:])
    with pytest.raises(ValueError, match=fragment) as info:
        load_silo_dir(folder)
    assert str(folder / "train.csv") in str(info.value)


def test_unknown_label_in_val_names_val_file(tmp_path: Path) -> None:
    folder = _silo_folder(tmp_path)
    _write_jsonl(
        folder / "val.jsonl", [{"text": "ok", "label": "pos"}, {"text": "no", "label": "other"}]
    )
    (folder / "labels.json").write_text('["pos"]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"val\.jsonl:2: unknown label 'other'"):
        load_silo_dir(folder)


def test_unreadable_file_is_a_value_error(tmp_path: Path) -> None:
    folder = _silo_folder(tmp_path)
    (folder / "train.jsonl").write_bytes(b'{"text": "\xff\xfe", "label": "pos"}\n')
    with pytest.raises(ValueError, match=r"train\.jsonl: cannot read file"):
        load_silo_dir(folder)


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        (lambda f: (f / "train.jsonl").unlink(), "no train.jsonl or train.csv"),
        (lambda f: (f / "metadata.json").unlink(), r"metadata\.json: missing"),
        (
            lambda f: (f / "metadata.json").write_text("[1]"),
            r"metadata\.json: expected a JSON object",
        ),
        (lambda f: (f / "metadata.json").write_text("{oops"), r"metadata\.json:1: invalid JSON"),
        (
            lambda f: (f / "labels.json").write_text('{"a": 1}'),
            r"labels\.json: expected a non-empty JSON list",
        ),
        (lambda f: (f / "labels.json").write_text('["pos", "pos"]'), r"labels\.json: duplicate"),
        (
            lambda f: (f / "train.csv").write_text("text,label\na,pos\n"),
            "both train.jsonl and train.csv",
        ),
    ],
)
def test_folder_level_errors(tmp_path: Path, setup: object, fragment: str) -> None:
    folder = _silo_folder(tmp_path)
    assert callable(setup)
    setup(folder)
    with pytest.raises(ValueError, match=fragment):
        load_silo_dir(folder)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        load_silo_dir(tmp_path / "missing")


def test_stratified_split_partitions_and_keeps_one_per_label_in_train() -> None:
    labels = [0] * 20 + [1] * 10 + [2]
    parts = stratified_split(
        labels, fractions={"val": 0.15, "test": 0.2}, rng=np.random.default_rng(0)
    )
    everything = sorted(parts["train"] + parts["val"] + parts["test"])
    assert everything == list(range(len(labels)))
    assert [labels[i] for i in parts["train"]].count(2) == 1
    assert len(parts["test"]) == 4 + 2 and len(parts["val"]) == 3 + 2
    with pytest.raises(ValueError, match="sum to < 1"):
        stratified_split(labels, fractions={"val": 0.5, "test": 0.5}, rng=np.random.default_rng(0))
