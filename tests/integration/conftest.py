"""Shared fixtures of the integration tests: real processes on 127.0.0.1, free ports."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fedprompt_cli.processes import console_script


@pytest.fixture(scope="session")
def silos_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three silo folders of the bundled drug-review task."""
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


#: Client ids that get a certificate besides the silos (fault tests, load clients).
EXTRA_IDS = ("probe-a", "probe-b")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory, silos_root: Path) -> Path:
    """A federation CA and certificates (services, operator, every silo) by ``fedprompt certs``."""
    out = tmp_path_factory.mktemp("certs")
    silo_ids = sorted(p.name for p in silos_root.iterdir() if p.is_dir())
    argv = [console_script("fedprompt"), "certs", "--out", str(out), "--operator"]
    for sid in (*silo_ids, *EXTRA_IDS):
        argv += ["--silo", sid]
    subprocess.run(argv, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def tls_flags(certs: Path) -> Callable[[str], list[str]]:
    """``--tls-cert/--tls-key/--tls-ca`` of the process whose certificate is ``<name>.crt``."""

    def flags(name: str) -> list[str]:
        return [
            "--tls-cert", str(certs / f"{name}.crt"),
            "--tls-key", str(certs / f"{name}.key"),
            "--tls-ca", str(certs / "ca.crt"),
        ]  # fmt: skip

    return flags
