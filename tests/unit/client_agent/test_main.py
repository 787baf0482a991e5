"""The client agent's command line: flags override the environment and the YAML config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt.compression import Compression
from fedprompt_client_agent.__main__ import config_of, parse_args


def test_upload_compression_flag_overrides_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDPROMPT_CLIENT_UPLOAD_COMPRESSION", "fp16")
    base = ["--client-id", "a", "--data-dir", str(tmp_path), "--insecure"]
    assert config_of(parse_args(base)).upload_compression is Compression.FP16
    flagged = config_of(parse_args([*base, "--upload-compression", "int8"]))
    assert flagged.upload_compression is Compression.INT8


def test_an_unknown_upload_compression_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--client-id", "a", "--data-dir", str(tmp_path), "--upload-compression", "zip"])
