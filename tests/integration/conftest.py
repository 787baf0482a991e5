"""Shared fixtures of the integration tests: real processes on 127.0.0.1, free ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt_cli.processes import console_script


@pytest.fixture(scope="session")
def silos_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three silo folders of the bundled drug-review task."""
    import subprocess

    out = tmp_path_factory.mktemp("silos")
    subprocess.run(
        [
            console_script("fedprompt-make-silos"),
            "--num-silos",
            "3",
            "--seed",
            "0",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out
