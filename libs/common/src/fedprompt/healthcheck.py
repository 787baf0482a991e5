"""``fedprompt-healthcheck``: ask a server's ``grpc.health.v1`` service whether it serves.

Container HEALTHCHECKs call it (Kubernetes uses its native gRPC probes instead). The target
comes from ``--target`` or the ``FEDPROMPT_HEALTHCHECK_TARGET`` environment variable; the exit
status is 0 for SERVING and 1 for anything else (not serving, unreachable, timeout).

Against an mTLS server, give the CA and this pod's own certificate and key (``--tls-ca``,
``--tls-cert``, ``--tls-key`` or ``FEDPROMPT_HEALTHCHECK_TLS_CA`` / ``_CERT`` / ``_KEY``):
Kubernetes' native gRPC probes cannot present a client certificate, so the charts use this
command as an exec probe when TLS is on. ``--tls-server-name`` (or
``FEDPROMPT_HEALTHCHECK_TLS_SERVER_NAME``) is the name the server's certificate must carry
whatever address ``--target`` names, as a client agent checks the coordinator's; without it
the dialled host name is verified.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedprompt.server import create_channel

TARGET_ENV = "FEDPROMPT_HEALTHCHECK_TARGET"
TLS_ENV_PREFIX = "FEDPROMPT_HEALTHCHECK_TLS_"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of an mTLS health check."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    #: The name the server's certificate must carry (None: the dialled host name).
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files (client certificate only when both are given)."""
        chain = self.cert.read_bytes() if self.cert is not None else None
        key = self.key.read_bytes() if self.key is not None else None
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(), private_key=key, certificate_chain=chain
        )


async def check(
    target: str, *, service: str = "", timeout_s: float = 3.0, tls: TlsFiles | None = None
) -> str:
    """Return the health status name of ``service`` at ``target`` (``SERVING``, ...).

    Parameters
    ----------
    target
        ``host:port`` of the server.
    service
        Fully qualified service name; ``""`` is the server as a whole.
    timeout_s
        Deadline of the call.
    tls
        CA (and client certificate) for a TLS server; plaintext when None.

    Raises
    ------
    grpc.aio.AioRpcError
        If the server cannot be reached or answers with an error.
    """
    channel = (
        create_channel(target)
        if tls is None
        else create_channel(target, credentials=tls.credentials(), server_name=tls.server_name)
    )
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedprompt-healthcheck``."""
    p = argparse.ArgumentParser(prog="fedprompt-healthcheck", description=__doc__)
    p.add_argument("--target", default=os.environ.get(TARGET_ENV), help="host:port")
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    p.add_argument("--timeout-s", type=float, default=3.0)
    for part in ("ca", "cert", "key"):
        p.add_argument(
            f"--tls-{part}",
            default=os.environ.get(f"{TLS_ENV_PREFIX}{part.upper()}") or None,
            help=f"PEM {part} for mTLS (env {TLS_ENV_PREFIX}{part.upper()})",
        )
    p.add_argument(
        "--tls-server-name",
        default=os.environ.get(f"{TLS_ENV_PREFIX}SERVER_NAME") or None,
        help="name the server's certificate must carry, whatever the target's host "
        f"(env {TLS_ENV_PREFIX}SERVER_NAME; default: the target's host)",
    )
    args = p.parse_args(argv)
    if not args.target:
        print(f"fedprompt-healthcheck: give --target or set {TARGET_ENV}", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_cert and not args.tls_ca):
        print(
            "fedprompt-healthcheck: --tls-cert and --tls-key go together, with --tls-ca",
            file=sys.stderr,
        )
        return 2
    tls = (
        TlsFiles(
            ca=Path(args.tls_ca),
            cert=Path(args.tls_cert) if args.tls_cert else None,
            key=Path(args.tls_key) if args.tls_key else None,
            server_name=args.tls_server_name,
        )
        if args.tls_ca
        else None
    )
    try:
        status = asyncio.run(
            check(args.target, service=args.service, timeout_s=args.timeout_s, tls=tls)
        )
    except OSError as exc:
        print(f"fedprompt-healthcheck: {exc}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as exc:
        print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
