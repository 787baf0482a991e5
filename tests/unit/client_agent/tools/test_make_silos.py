"""Tests for ``fedprompt-make-silos``: silo folders written, bad arguments reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt_client_agent.data.text_silos import SiloData, load_silo_dir
from fedprompt_client_agent.tools.drug_review_silos import make_drug_review_silos
from fedprompt_client_agent.tools.make_silos import main


@pytest.fixture(scope="module")
def four_silos() -> list[SiloData]:
    return make_drug_review_silos(4, seed=0)


def test_cli_writes_loadable_silo_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], four_silos: list[SiloData]
) -> None:
    assert main(["--num-silos", "4", "--seed", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for silo in four_silos:
        assert silo.name in out
        assert load_silo_dir(tmp_path / silo.name) == silo
    assert "train/val/test=" in out and "0=Birth Control" in out


def test_cli_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--num-silos", "0", "--out", str(tmp_path)]) == 2
    assert "num_silos" in capsys.readouterr().err
