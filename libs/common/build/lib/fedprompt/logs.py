"""Logging set-up shared by every fedprompt process."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "INFO", *, service: str) -> None:
    """Send log records to stderr as ``time level service logger: message``.

    Parameters
    ----------
    level
        Level name, e.g. ``"INFO"``.
    service
        Short name of the process (``coordinator``, ``client-3``, ...), shown on every line.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s", datefmt="%H:%M:%S"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
