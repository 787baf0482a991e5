"""Entry point of the clusterer process (``fedprompt-clusterer``): wiring only.

When the listen port is 0 the bound port is printed on stdout as ``LISTENING <port>`` so that
a parent process can read it. SIGTERM and SIGINT stop the server gracefully; the exit code is
0 after a clean stop, 1 when the address cannot be bound, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import grpc

from fedprompt.config import ConfigError, load_config
from fedprompt.logs import configure_logging
from fedprompt.server import announce_port, start_server, stop_event_on_signals
from fedprompt.telemetry import serve_metrics
from fedprompt.tls import (
    AllowedPeersInterceptor,
    TlsError,
    add_tls_arguments,
    server_credentials,
    tls_overrides,
)
from fedprompt.v1 import clusterer_pb2_grpc
from fedprompt_clusterer.config import ENV_PREFIX, ClustererConfig, listen_port
from fedprompt_clusterer.servicer import SERVICE_NAME, ClustererServicer

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv
        Arguments without the program name; ``sys.argv[1:]`` by default.
    """
    parser = argparse.ArgumentParser(
        prog="fedprompt-clusterer",
        description="Serve fedprompt.v1.Clusterer: HDBSCAN over clients' public metadata.",
    )
    parser.add_argument("--config", default=None, help="YAML file with ClustererConfig fields")
    parser.add_argument("--listen", default=None, help="host:port to bind (port 0: any free)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")
    add_tls_arguments(parser)
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus /metrics port (0: none)"
    )
    parser.add_argument("--metrics-host", default=None, help="address of the /metrics endpoint")
    return parser.parse_args(argv)


async def serve(config: ClustererConfig) -> None:
    """Run the server until SIGTERM or SIGINT, then stop it gracefully.

    Parameters
    ----------
    config
        The process configuration.
    """
    servicer = ClustererServicer(max_members=config.max_members)

    def register(server: grpc.aio.Server) -> None:
        clusterer_pb2_grpc.add_ClustererServicer_to_server(servicer, server)

    handle = await start_server(
        register=register,
        service_names=[SERVICE_NAME],
        address=config.listen,
        interceptors=[AllowedPeersInterceptor(config.allowed_peers)],
        credentials=server_credentials(config.tls, role="clusterer"),
    )
    metrics_server = serve_metrics(
        servicer.metrics.registry, host=config.metrics_host, port=config.metrics_port
    )
    stop = stop_event_on_signals()
    logger.info("clusterer listening on port %d", handle.port)
    if listen_port(config.listen) == 0:
        announce_port(handle)
    try:
        await stop.wait()
    finally:
        logger.info("stopping (grace %.1f s)", config.shutdown_grace_seconds)
        await handle.stop(config.shutdown_grace_seconds)
        if metrics_server is not None:
            metrics_server.close()
    logger.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    """Load the configuration, configure logging and serve until stopped.

    Parameters
    ----------
    argv
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The process exit code.
    """
    args = parse_args(argv)
    try:
        config = load_config(
            ClustererConfig,
            yaml_path=args.config,
            env_prefix=ENV_PREFIX,
            overrides={
                "listen": args.listen,
                "log_level": args.log_level,
                **tls_overrides(args),
                "metrics_port": args.metrics_port,
                "metrics_host": args.metrics_host,
            },
        )
    except ConfigError as exc:
        print(f"fedprompt-clusterer: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, service="clusterer")
    try:
        asyncio.run(serve(config))
    except TlsError as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("cannot serve on %s: %s", config.listen, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
