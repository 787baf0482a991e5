"""Prometheus ``/metrics`` endpoint shared by every fedprompt process.

Each service keeps its metrics in its own :class:`prometheus_client.CollectorRegistry`
(never the global default registry, so tests can build many in one process) and exposes it
with :func:`serve_metrics` on the port given by its ``--metrics-port`` flag; port 0 means no
endpoint. Metric names start with ``fedprompt_``; labels stay low-cardinality (phase, status,
direction, cluster id), never a client id.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

logger = logging.getLogger(__name__)

#: Prefix of every metric fedprompt exports.
METRIC_PREFIX = "fedprompt_"


def new_registry() -> CollectorRegistry:
    """A fresh registry with the process, platform and garbage-collector collectors.

    ``process_*`` (CPU, resident memory, open files), ``python_info`` and ``python_gc_*``
    are what the system-health dashboard shows for every service.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass(frozen=True)
class MetricsServer:
    """A running ``/metrics`` HTTP endpoint."""

    server: WSGIServer
    thread: threading.Thread
    port: int

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, *, host: str, port: int) -> MetricsServer | None:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread.

    Parameters
    ----------
    registry
        The service's registry.
    host
        Address to bind (``0.0.0.0`` inside containers, ``127.0.0.1`` on a workstation).
    port
        TCP port; 0 disables the endpoint and returns None.

    Raises
    ------
    OSError
        If the port cannot be bound.
    """
    if port == 0:
        return None
    server, thread = start_http_server(port, addr=host, registry=registry)
    logger.info("metrics on http://%s:%d/metrics", host, port)
    return MetricsServer(server=server, thread=thread, port=port)
