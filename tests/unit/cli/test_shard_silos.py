"""``fedprompt shard-silos``: the shard layout on tiny silo folders and real certificates, and
every refusal (nothing is written when anything is wrong)."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from fedprompt_cli.__main__ import main
from fedprompt_cli.certs import write_certs
from fedprompt_cli.shard_silos import (
    MANIFEST,
    ShardError,
    check_certs,
    find_silos,
    plan_shards,
    write_shards,
)

IDS = ("clinic-a", "clinic-b", "clinic-c", "clinic-d", "clinic-e")
#: One silo per training file name the loaders read (text JSONL or CSV, images NPZ).
TRAIN_FILE = {
    "clinic-a": "train.jsonl",
    "clinic-b": "train.csv",
    "clinic-c": "train.npz",
    "clinic-d": "train.jsonl",
    "clinic-e": "train.csv",
}


def make_silos(root: Path, ids: Sequence[str]) -> Path:
    """Tiny silo folders: a training file, a test file and metadata, each with its id."""
    for silo in ids:
        folder = root / silo
        folder.mkdir(parents=True)
        (folder / TRAIN_FILE.get(silo, "train.csv")).write_text(f"train of {silo}\n")
        (folder / "test.csv").write_text(f"test of {silo}\n")
        (folder / "metadata.json").write_text(json.dumps({"site": silo}))
    return root


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real certificates of every silo of the tests, from ``fedprompt certs``."""
    out = tmp_path_factory.mktemp("certs")
    write_certs(out, silos=[*IDS, "clinic-f", "clinic-g"], operator=True)
    return out


@pytest.fixture
def silos(tmp_path: Path) -> Path:
    return make_silos(tmp_path / "silos", IDS)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_shards_hold_their_silos_and_only_their_own_certificates(
    silos: Path, certs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "shards"
    plan = write_shards(silos=silos, certs=certs, out=out, per_pod=2)
    assert plan.shards == (("clinic-a", "clinic-b"), ("clinic-c", "clinic-d"), ("clinic-e",))
    assert (plan.replicas, plan.largest, plan.silos) == (3, 2, 5)
    for index, members in enumerate(plan.shards):
        shard = out / f"shard-{index}"
        assert sorted(p.name for p in (shard / "silos").iterdir()) == list(members)
        for silo in members:
            for name in (TRAIN_FILE[silo], "test.csv", "metadata.json"):
                assert (shard / "silos" / silo / name).read_bytes() == (
                    silos / silo / name
                ).read_bytes()
        own = {"ca.crt"} | {f"{s}.{ext}" for s in members for ext in ("crt", "key")}
        assert {p.name for p in (shard / "certs").iterdir()} == own
        assert (shard / "certs/ca.crt").read_bytes() == (certs / "ca.crt").read_bytes()
        for silo in members:
            key = shard / "certs" / f"{silo}.key"
            assert key.read_bytes() == (certs / f"{silo}.key").read_bytes()
            assert stat.S_IMODE(key.stat().st_mode) == 0o600
    everything = tree(out)
    assert not [p for p in everything if p.endswith(("ca.key", "operator.key", "coordinator.key"))]
    assert {p.split("/")[0] for p in everything} == {"shard-0", "shard-1", "shard-2", MANIFEST}
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == {
        "replicas": 3,
        "per_pod": 2,
        "clients_per_pod": 2,
        "silos": 5,
        "shards": {"shard-0": list(IDS[:2]), "shard-1": list(IDS[2:4]), "shard-2": ["clinic-e"]},
    }
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards", "silos"]  # no staging left


def test_the_cli_writes_shards_and_names_the_chart_values(
    silos: Path, certs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    argv = ["shard-silos", "--silos", str(silos), "--certs", str(certs), "--out", str(out)]
    assert main([*argv, "--per-pod", "3"]) == 0
    printed = capsys.readouterr().out
    assert "simulation.replicas=2" in printed and "simulation.clientsPerPod=3" in printed
    assert sorted(p.name for p in out.iterdir()) == ["shard-0", "shard-1", MANIFEST]
    assert main([*argv, "--per-pod", "3"]) == 2  # the output exists now
    assert "exists" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("count", "per_pod", "replicas", "sizes"),
    [
        (5, 2, None, [2, 2, 1]),
        (7, 3, None, [3, 2, 2]),  # balanced: never 3, 3, 1
        (7, 3, 4, [2, 2, 2, 1]),
        (7, 7, 7, [1] * 7),
        (1000, 50, None, [50] * 20),
        (990, 50, None, [50] * 10 + [49] * 10),
        (3, 50, None, [3]),
    ],
)
def test_plans_are_balanced_contiguous_and_sorted_ids_stay_in_order(
    count: int, per_pod: int, replicas: int | None, sizes: list[int]
) -> None:
    ids = [f"s{i:04d}" for i in range(count)]
    plan = plan_shards(ids, per_pod=per_pod, replicas=replicas)
    assert [len(s) for s in plan.shards] == sizes
    assert [i for shard in plan.shards for i in shard] == ids
    assert plan.largest <= per_pod


@pytest.mark.parametrize(
    ("count", "per_pod", "replicas", "message"),
    [
        (5, 0, None, "--per-pod must be at least 1, got 0"),
        (5, -2, None, "--per-pod must be at least 1"),
        (5, 2, 0, "--replicas must be at least 1, got 0"),
        (5, 2, -1, "--replicas must be at least 1"),
        (0, 2, None, "no silo to shard"),
        (
            1000,
            50,
            19,
            "1000 silos do not fit 19 pod(s) of 50 (950 places): pass --replicas 20 "
            "or --per-pod 53",
        ),
        (5, 2, 2, "5 silos do not fit 2 pod(s) of 2"),
        (5, 2, 6, "would leave 1 pod(s) without a silo: pass --replicas 3"),
    ],
)
def test_plans_that_do_not_fit_are_refused(
    count: int, per_pod: int, replicas: int | None, message: str
) -> None:
    with pytest.raises(ShardError) as info:
        plan_shards([f"s{i}" for i in range(count)], per_pod=per_pod, replicas=replicas)
    assert message in str(info.value)


def test_silo_folders_are_found_sorted_and_hidden_ones_skipped(tmp_path: Path) -> None:
    root = make_silos(tmp_path / "silos", ["b", "a", "c"])
    (root / ".cache").mkdir()
    (root / "scenario.json").write_text("{}")  # fedprompt-make-silos writes this beside them
    assert [p.name for p in find_silos(root)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("file", "not a folder"),
        ("empty", "holds no silo folder"),
        ("half-written", "1 folder(s) under"),
        ("bad-name", "cannot be client ids"),
        ("reserved-name", "reserved"),
        ("ip-name", "IP address"),
    ],
)
def test_bad_silo_folders_are_refused(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "silos"
    if layout == "file":
        root.write_text("not a folder")
    elif layout != "missing":
        root.mkdir()
    named = {"bad-name": "clinic a", "reserved-name": "coordinator", "ip-name": "10.0.0.7"}
    if layout in named:
        make_silos(root, ["clinic-ok", named[layout]])
    if layout == "half-written":
        make_silos(root, ["clinic-ok"])
        (root / "clinic-partial").mkdir()
        (root / "clinic-partial" / "metadata.json").write_text("{}")
    with pytest.raises(ShardError) as info:
        find_silos(root)
    assert message in str(info.value)
    if layout == "half-written":
        assert "clinic-partial" in str(info.value) and "train.csv" in str(info.value)


def _certs_copy(certs: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "certs-copy"
    shutil.copytree(certs, copy)
    return copy


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no-folder", "does not exist"),
        ("no-ca", "ca.crt is missing"),
        ("bad-ca", "is not a PEM certificate"),
        ("no-cert", "clinic-b: no clinic-b.crt"),
        ("no-key", "clinic-b: no clinic-b.key"),
        ("no-cert-no-key", "no clinic-b.crt nor clinic-b.key"),
        ("other-name", "clinic-b: clinic-b.crt names 'clinic-f'"),
        ("other-ca", "clinic-b: clinic-b.crt was not issued by ca.crt"),
        ("other-key", "clinic-b: clinic-b.key is not the key of clinic-b.crt"),
        ("garbage", "clinic-b: unreadable certificate or key"),
    ],
)
def test_missing_or_wrong_certificates_are_refused(
    certs: Path, tmp_path: Path, damage: str, message: str
) -> None:
    copy = _certs_copy(certs, tmp_path)
    if damage == "no-folder":
        shutil.rmtree(copy)
    elif damage == "no-ca":
        (copy / "ca.crt").unlink()
    elif damage == "bad-ca":
        (copy / "ca.crt").write_text("not a certificate")
    elif damage in ("no-cert", "no-cert-no-key"):
        (copy / "clinic-b.crt").unlink()
    if damage in ("no-key", "no-cert-no-key"):
        (copy / "clinic-b.key").unlink()
    elif damage == "other-name":  # another silo's certificate and key under clinic-b's name
        shutil.copyfile(copy / "clinic-f.crt", copy / "clinic-b.crt")
        shutil.copyfile(copy / "clinic-f.key", copy / "clinic-b.key")
    elif damage == "other-ca":  # a clinic-b certificate of another federation
        other = tmp_path / "other-federation"
        write_certs(other, silos=["clinic-b"])
        shutil.copyfile(other / "clinic-b.crt", copy / "clinic-b.crt")
        shutil.copyfile(other / "clinic-b.key", copy / "clinic-b.key")
    elif damage == "other-key":
        shutil.copyfile(copy / "clinic-f.key", copy / "clinic-b.key")
    elif damage == "garbage":
        (copy / "clinic-b.key").write_text("-----BEGIN PRIVATE KEY-----\nnope\n")
    with pytest.raises(ShardError) as info:
        check_certs(copy, IDS)
    assert message in str(info.value)


def test_every_silo_without_a_certificate_is_counted(certs: Path, tmp_path: Path) -> None:
    copy = _certs_copy(certs, tmp_path)
    for silo in IDS:
        (copy / f"{silo}.crt").unlink()
    with pytest.raises(ShardError) as info:
        check_certs(copy, [*IDS, "clinic-f"])
    text = str(info.value)
    assert text.startswith("5 silo(s) lack a valid certificate")
    assert "clinic-a: no clinic-a.crt" in text and "clinic-f" not in text


@pytest.mark.parametrize("where", ["exists", "empty-dir", "inside-silos", "inside-certs"])
def test_an_existing_or_nested_output_is_refused(
    silos: Path, certs: Path, tmp_path: Path, where: str
) -> None:
    copy = _certs_copy(certs, tmp_path)
    out = {
        "exists": tmp_path / "shards",
        "empty-dir": tmp_path / "shards",
        "inside-silos": silos / "shards",
        "inside-certs": copy / "shards",
    }[where]
    if where == "exists":
        make_silos(out, ["old"])
    elif where == "empty-dir":
        out.mkdir()
    before = tree(tmp_path)
    with pytest.raises(ShardError) as info:
        write_shards(silos=silos, certs=copy, out=out, per_pod=2)
    assert ("exists" if where in ("exists", "empty-dir") else "is inside") in str(info.value)
    assert tree(tmp_path) == before


def test_a_refusal_or_a_failed_copy_writes_nothing(
    silos: Path, certs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    with pytest.raises(ShardError):  # checked before anything is written
        write_shards(silos=silos, certs=certs, out=out, per_pod=2, replicas=2)
    assert not out.exists()
    # a silo file that cannot be copied (a dangling link) fails the copy midway
    (silos / "clinic-d" / "val.csv").symlink_to(tmp_path / "gone.csv")
    argv = ["shard-silos", "--silos", str(silos), "--certs", str(certs), "--out", str(out)]
    assert main([*argv, "--per-pod", "2"]) == 2
    printed = capsys.readouterr().out
    assert "copying failed, nothing was written" in printed and "val.csv" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["silos"]  # no shards, no staging
