"""Tests for ``fedprompt-make-silos --scenario``: the default unchanged, each scenario's truth."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedprompt_client_agent.data.image_silos import load_image_silo_dir
from fedprompt_client_agent.data.silo_check import check_data_root
from fedprompt_client_agent.data.silo_files import read_metadata
from fedprompt_client_agent.data.text_silos import load_silo_dir
from fedprompt_client_agent.tools.make_silos import main
from fedprompt_client_agent.tools.scenarios import (
    SCENARIO_NAMES,
    SIDECAR,
    group_of,
    many_small_classes_per_silo,
    read_sidecar,
)

VISION = ["--task", "vision", "--source", "digits"]


def _make(out: Path, *argv: str) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*argv, "--out", str(out)]) == 0
    return out


def _digest(root: Path) -> str:
    """Every file's name and content (the arrays of an ``.npz``: zip headers hold times)."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        if f.suffix == ".npz":
            with np.load(f) as z:
                for k in sorted(z.files):
                    h.update(k.encode())
                    h.update(np.ascontiguousarray(z[k]).tobytes())
        else:
            h.update(f.read_bytes())
    return h.hexdigest()


def _folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


# Digests of the silos written before scenarios existed (same arguments, same seed).
_BEFORE = {
    ("--num-silos", "4", "--seed", "0"): (
        "49570f176575d32e36bce0266b148a5b9836413fcd7c41a038511e7242219e8e"
    ),
    ("--num-silos", "6", "--seed", "1"): (
        "3f51f05da5d3fb2931c891e280ddeae04dcfb0e6fa8158671e419bd405f7c310"
    ),
    (*VISION, "--num-silos", "6", "--seed", "2", "--max-images", "600"): (
        "f1ff04cf4ec4f4f7c6871acde4819a50eae0d5dfa25e738443e28b5110274955"
    ),
}


@pytest.mark.parametrize("argv", list(_BEFORE))
@pytest.mark.parametrize("explicit", [False, True])
def test_default_scenario_output_is_unchanged(
    tmp_path: Path, argv: tuple[str, ...], explicit: bool
) -> None:
    extra = ["--scenario", "clinics"] if explicit else []
    out = _make(tmp_path / "silos", *argv, *extra)
    assert _digest(out) == _BEFORE[argv]
    assert not (out / SIDECAR).exists()


def test_many_small_text_sizes_and_validator(tmp_path: Path) -> None:
    out = _make(tmp_path / "s", "--scenario", "many-small", "--seed", "0")
    folders = _folders(out)
    assert len(folders) == 24
    sizes = []
    for folder in folders:
        silo = load_silo_dir(folder)
        sizes.append(len(silo.train) + len(silo.val) + len(silo.test))
        assert silo.val and silo.test
    assert sum(sizes) == 24 * 18 and min(sizes) >= 14 and max(sizes) <= 22
    assert check_data_root(out).ok
    truth = read_sidecar(out)
    assert truth is not None and truth["scenario"] == "many-small" and truth["silo_size"] == 18
    assert not any(t["misleading"] for t in truth["silos"].values())


def test_many_small_sizes_are_options(tmp_path: Path) -> None:
    out = _make(
        tmp_path / "s", "--scenario", "many-small", "--num-silos", "10", "--silo-size", "30"
    )
    folders = _folders(out)
    total = sum(
        len(s.train) + len(s.val) + len(s.test) for s in (load_silo_dir(f) for f in folders)
    )
    assert len(folders) == 10 and total == 300


def test_many_small_vision_sizes_and_validator(tmp_path: Path) -> None:
    out = _make(
        tmp_path / "v",
        *VISION,
        "--scenario",
        "many-small",
        "--num-silos",
        "12",
        "--silo-size",
        "60",
    )
    folders = _folders(out)
    sizes = [
        sum(len(s.split(n)) for n in ("train", "val", "test"))
        for s in (load_image_silo_dir(f) for f in folders)
    ]
    assert len(folders) == 12 and sum(sizes) == 720
    assert max(sizes) - min(sizes) <= 0.5 * np.mean(sizes)
    assert check_data_root(out).ok
    # 30 sites form 15 groups: two dominant digits each, every digit home to 6 sites
    assert many_small_classes_per_silo(30) == 2
    assert many_small_classes_per_silo(13) is None  # 7 groups


@pytest.mark.parametrize("task", [[], VISION])
def test_misleading_silos_carry_another_groups_metadata(tmp_path: Path, task: list[str]) -> None:
    argv = [*task, "--num-silos", "6", "--seed", "3"]
    if task:
        argv += ["--max-images", "600"]
    honest = _make(tmp_path / "honest", *argv)
    out = _make(tmp_path / "misled", *argv, "--scenario", "misleading-metadata")
    name = "vision" if task else "text"
    truth = read_sidecar(out)
    assert truth is not None and truth["misleading_fraction"] == 0.33
    silos = truth["silos"]
    misled = [n for n, t in silos.items() if t["misleading"]]
    assert len(misled) == 2  # round(0.33 * 6)
    groups_published = {group_of(name, read_metadata(f / "metadata.json")) for f in _folders(out)}
    for folder in _folders(out):
        entry = silos[folder.name]
        published = read_metadata(folder / "metadata.json")
        original = read_metadata(honest / entry["true_name"] / "metadata.json")
        assert entry["true_group"] == group_of(name, original)
        assert entry["published_group"] == group_of(name, published)
        if entry["misleading"]:
            # another group's metadata, one that some honest silo really has
            assert entry["published_group"] != entry["true_group"]
            assert entry["published_group"] in groups_published
            assert published["num_records"] == original["num_records"]
        else:
            assert published == original and folder.name == entry["true_name"]
        # the truth is in the sidecar only: neither the name nor the metadata tells it
        assert entry["true_group"] not in json.dumps(published) or not entry["misleading"]
    # the data is the honest silos' data
    for n in misled:
        a, b = out / n, honest / silos[n]["true_name"]
        assert _digest_split(a) == _digest_split(b)
    assert check_data_root(out).ok


def _digest_split(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.name.startswith(("train", "val", "test")):
            if f.suffix == ".npz":
                with np.load(f) as z:
                    h.update(z["images"].tobytes() + z["labels"].tobytes())
            else:
                h.update(f.read_bytes())
    return h.hexdigest()


def test_misleading_fraction_is_an_option(tmp_path: Path) -> None:
    out = _make(
        tmp_path / "m",
        "--num-silos",
        "6",
        "--scenario",
        "misleading-metadata",
        "--misleading-fraction",
        "0.5",
    )
    truth = read_sidecar(out)
    assert truth is not None
    assert sum(t["misleading"] for t in truth["silos"].values()) == 3


@pytest.mark.parametrize("task", [[], VISION])
def test_concept_shift_swaps_two_labels_in_one_group_only(tmp_path: Path, task: list[str]) -> None:
    argv = [*task, "--num-silos", "6", "--seed", "1"]
    if task:
        argv += ["--max-images", "600"]
    honest = _make(tmp_path / "honest", *argv)
    out = _make(tmp_path / "shift", *argv, "--scenario", "concept-shift")
    truth = read_sidecar(out)
    assert truth is not None
    shift = truth["concept_shift"]
    a, b = shift["swapped"]
    assert a != b and len(shift["silos"]) == 2
    load = load_image_silo_dir if task else load_silo_dir
    for folder in _folders(out):
        new, old = load(folder), load(honest / folder.name)
        assert new.metadata == old.metadata
        for split in ("train", "val", "test"):
            n_labels = _labels(new.split(split))
            o_labels = _labels(old.split(split))
            if folder.name in shift["silos"]:
                expected = [b if y == a else a if y == b else y for y in o_labels]
                assert n_labels == expected
                assert truth["silos"][folder.name]["label_map"] == shift["label_map"]
            else:
                assert n_labels == o_labels
                assert truth["silos"][folder.name]["label_map"] == {}
    # the swapped labels are the group's two most frequent: the shift really bites
    counts: Counter[int] = Counter()
    for name in shift["silos"]:
        counts.update(_labels(load(honest / name).train))
    ranked = sorted(counts, key=lambda y: (-counts[y], y))  # ties: the smaller id
    assert {a, b} == set(ranked[:2])
    assert check_data_root(out).ok


def _labels(split: object) -> list[int]:
    if isinstance(split, tuple):
        return [ex.label for ex in split]
    return [int(y) for y in split.labels]  # type: ignore[attr-defined]


def test_scenario_options_belong_to_their_scenario(tmp_path: Path) -> None:
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        main(["--silo-size", "10", "--out", str(tmp_path)])
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        main(["--misleading-fraction", "0.2", "--out", str(tmp_path)])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "--scenario",
                "many-small",
                "--num-silos",
                "24",
                "--silo-size",
                "50",
                "--out",
                str(tmp_path),
            ]
        )
    assert code == 2 and "max_reviews" in err.getvalue()


def test_scenarios_are_seeded(tmp_path: Path) -> None:
    for scenario in SCENARIO_NAMES:
        a = _make(tmp_path / f"{scenario}-a", "--num-silos", "6", "--scenario", scenario)
        b = _make(tmp_path / f"{scenario}-b", "--num-silos", "6", "--scenario", scenario)
        assert _digest(a) == _digest(b)
