"""A short atheris run of the upload decoding path (skipped where atheris does not install)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "tools" / "fuzz_chunks.py"


def test_short_fuzz_run_finds_no_uncoded_error(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "-runs=50000", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Done 50000 runs" in out
    assert not list(tmp_path.glob("crash-*"))
