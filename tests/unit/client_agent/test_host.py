"""Several client agents in one process: one config per silo folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt.compression import Compression
from fedprompt.config import ConfigError
from fedprompt_client_agent.host import configs_of, main, parse_args


def test_one_config_per_silo_with_its_own_id_and_state(tmp_path: Path) -> None:
    args = parse_args(
        ["--coordinator", "127.0.0.1:5", "--silo-dir", str(tmp_path / "a"), "--silo-dir",
         str(tmp_path / "b"), "--state-root", str(tmp_path / "st"), "--strategy", "fedavg",
         "--seed", "3"]
    )  # fmt: skip
    configs = configs_of(args)
    assert [c.client_id for c in configs] == ["a", "b"]
    assert [c.state_dir for c in configs] == [tmp_path / "st" / "a", tmp_path / "st" / "b"]
    assert all(c.coordinator == "127.0.0.1:5" and c.seed == 3 for c in configs)
    assert all(c.strategy.value == "fedavg" for c in configs)


def test_two_silos_with_one_name_are_refused(tmp_path: Path) -> None:
    args = parse_args(
        ["--coordinator", "127.0.0.1:5", "--silo-dir", str(tmp_path / "x" / "a"), "--silo-dir",
         str(tmp_path / "y" / "a"), "--state-root", str(tmp_path / "st")]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="distinct client ids"):
        configs_of(args)


def test_upload_compression_flag_reaches_every_hosted_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDPROMPT_CLIENT_UPLOAD_COMPRESSION", "fp16")  # the flag wins
    base = ["--coordinator", "127.0.0.1:5", "--state-root", str(tmp_path / "st")]
    silos = ["--silo-dir", str(tmp_path / "a"), "--silo-dir", str(tmp_path / "b")]
    configs = configs_of(parse_args([*base, *silos, "--upload-compression", "int8"]))
    assert [c.upload_compression for c in configs] == [Compression.INT8] * 2
    assert {c.upload_compression for c in configs_of(parse_args([*base, *silos]))} == {
        Compression.FP16
    }
    with pytest.raises(SystemExit):
        parse_args([*base, *silos, "--upload-compression", "int4"])


def _silo(folder: Path, train_file: str = "train.jsonl") -> Path:
    folder.mkdir(parents=True)
    (folder / train_file).write_text("")
    return folder


def test_silo_root_hosts_every_silo_folder_below_it(tmp_path: Path) -> None:
    root = tmp_path / "shard-0" / "silos"
    for name, train in (("s-02", "train.csv"), ("s-01", "train.jsonl"), ("s-03", "train.npz")):
        _silo(root / name, train)
    (root / "notes").mkdir()  # no training file: not a silo
    _silo(root / ".hidden")
    (root / "README.txt").write_text("a file, not a folder")
    extra = _silo(tmp_path / "extra")
    base = ["--coordinator", "127.0.0.1:5", "--state-root", str(tmp_path / "st")]
    configs = configs_of(parse_args([*base, "--silo-root", str(root), "--silo-dir", str(extra)]))
    assert [c.client_id for c in configs] == ["extra", "s-01", "s-02", "s-03"]
    assert configs[1].data_dir == root / "s-01"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([], "at least one --silo-dir or a --silo-root"),
        (["--silo-root", "{tmp}/missing"], "not a folder"),
        (["--silo-root", "{tmp}/empty"], "no silo folders"),
        (["--silo-dir", "{tmp}/a", "--max-pass-examples", "0"], "max-pass-examples"),
    ],
)
def test_hosting_nothing_or_nonsense_is_refused(
    tmp_path: Path, extra: list[str], match: str
) -> None:
    (tmp_path / "empty" / "not-a-silo").mkdir(parents=True)
    base = ["--coordinator", "127.0.0.1:5", "--state-root", str(tmp_path / "st")]
    args = parse_args([*base, *(e.format(tmp=tmp_path) for e in extra)])
    with pytest.raises(ConfigError, match=match):
        configs_of(args)


def test_the_hosts_entry_point_exits_2_on_a_bad_silo_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["--coordinator", "127.0.0.1:5", "--state-root", str(tmp_path), "--silo-root",
         str(tmp_path / "nowhere"), "--insecure"]
    )  # fmt: skip
    assert code == 2
    assert "not a folder" in capsys.readouterr().err
