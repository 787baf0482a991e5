"""Several client agents in one process: one config per silo folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt.compression import Compression
from fedprompt.config import ConfigError
from fedprompt_client_agent.host import configs_of, parse_args


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
