"""``fedprompt up``'s options: the flags each process of the federation is started with."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fedprompt_cli.__main__ import build_parser
from fedprompt_cli.up import UpOptions

BASE = UpOptions(
    clients=2, rounds=3, local_steps=4, batch_size=8, max_length=32, seed=0, device="cpu",
    run_dir=Path("run"), model_dir=None, data_root=None, timeout_s=60.0, torch_threads=1,
)  # fmt: skip


def test_upload_compression_reaches_every_client_agent() -> None:
    flags = replace(BASE, upload_compression="int8", dp_sgd_epsilon=8.0).client_flags()
    assert flags[flags.index("--upload-compression") + 1] == "int8"
    assert flags[flags.index("--dp-sgd-total-steps") + 1] == "12"
    assert "--upload-compression" not in BASE.client_flags()  # the agents' config decides


def test_fedprompt_up_takes_an_upload_compression() -> None:
    parser = build_parser()
    assert parser.parse_args(["up", "--upload-compression", "fp16"]).upload_compression == "fp16"
    assert parser.parse_args(["up"]).upload_compression is None
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--upload-compression", "int4"])
