"""Crash-safe file writes shared by every service."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(target: Path, payload: bytes) -> None:
    """Write bytes via a fsynced temporary file in the same folder and ``os.replace``.

    A crash leaves either the old or the new file, never a torn one.

    Parameters
    ----------
    target : Path
        The file; its folder is created if needed.
    payload : bytes
        The content.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """Persist a rename by fsyncing the folder (best effort; not possible on every OS).

    Parameters
    ----------
    folder : Path
        The folder whose entries changed.
    """
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
