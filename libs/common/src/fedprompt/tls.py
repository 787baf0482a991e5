"""Transport security of every fedprompt channel: mutual TLS by default, plaintext on request.

Each service reads the same :class:`TlsConfig` (flags ``--tls-cert``, ``--tls-key``,
``--tls-ca`` and ``--insecure``; a ``tls:`` section in YAML; ``<PREFIX>TLS__CERT`` etc. in
the environment). :func:`server_credentials` and :func:`channel_credentials` turn it into
gRPC credentials: servers require a client certificate signed by the federation CA, and
clients verify the server against the same CA. A peer's identity is the subject common name
of the certificate it presented (:func:`peer_identity`); ``fedprompt certs`` issues a
certificate per silo whose CN is the silo's client id, and one per role: the services
(:data:`COORDINATOR_IDENTITY`, :data:`CLUSTERER_IDENTITY`) and the operator
(:data:`OPERATOR_IDENTITY`, the one identity that reads the coordinator's full status).
These names, and ``ca``, are never a silo's id (:data:`RESERVED_IDENTITIES`).

Clients check the server's *name*, not only its CA: whatever address they dial, a client
agent's channel to the coordinator verifies that the server's certificate names
``coordinator``, through gRPC's target-name override (:func:`expected_server_name`, applied
by :func:`fedprompt.server.create_channel`). ``fedprompt certs`` always puts the service's
name in its certificate's SANs and never gives a silo certificate the server-auth usage, so
a silo certificate cannot serve as the coordinator. ``tls.server_name`` replaces the
expected name for certificates from another PKI.

Private keys are read from disk and handed to gRPC; neither they nor their paths' contents
are ever logged.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict, Field

from fedprompt.server import AnyContext, Handler, guard_handler

logger = logging.getLogger(__name__)

#: Methods that answer any authenticated peer (probes reveal nothing and carry no identity).
HEALTH_METHOD_PREFIX = "/grpc.health.v1.Health/"
#: Identity (certificate CN and SAN) of the coordinator.
COORDINATOR_IDENTITY = "coordinator"
#: Identity (certificate CN and SAN) of the clusterer.
CLUSTERER_IDENTITY = "clusterer"
#: Identity (certificate CN) of the operator: the full GetStatus view, no client rights.
OPERATOR_IDENTITY = "operator"
#: Names no silo may take as its id: the CA, the services and the operator.
RESERVED_IDENTITIES = frozenset({"ca", COORDINATOR_IDENTITY, CLUSTERER_IDENTITY, OPERATOR_IDENTITY})


class TlsError(ValueError):
    """TLS is misconfigured: a file is missing or unreadable, or no mode was chosen."""


class TlsConfig(BaseModel):
    """Certificates of one process (PEM files), or the explicit choice of plaintext."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cert: Path | None = Field(default=None, description="This process's certificate chain (PEM).")
    key: Path | None = Field(default=None, description="This process's private key (PEM).")
    ca: Path | None = Field(default=None, description="The federation CA certificate (PEM).")
    insecure: bool = Field(
        default=False, description="Plaintext gRPC without authentication (logs a warning)."
    )
    server_name: str = Field(
        default="",
        max_length=253,
        description="Name the coordinator's certificate must carry, whatever address a "
        "client agent dials. Empty: `coordinator`, which `fedprompt certs` always puts in the "
        "coordinator's certificate. Set it when your certificates come from another PKI.",
    )

    @property
    def enabled(self) -> bool:
        """Whether mutual TLS is used (certificates given and plaintext not asked for)."""
        return not self.insecure


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--tls-cert``, ``--tls-key``, ``--tls-ca`` and ``--insecure`` to a service's CLI."""
    group = parser.add_argument_group("transport security (mutual TLS unless --insecure)")
    group.add_argument("--tls-cert", help="this process's certificate (PEM)")
    group.add_argument("--tls-key", help="this process's private key (PEM)")
    group.add_argument("--tls-ca", help="the federation CA certificate (PEM)")
    group.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plaintext gRPC without authentication (logs a warning)",
    )


def tls_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides (``tls.*``) from the flags of :func:`add_tls_arguments`."""
    return {
        "tls.cert": args.tls_cert,
        "tls.key": args.tls_key,
        "tls.ca": args.tls_ca,
        "tls.insecure": args.insecure,
    }


def _read(path: Path | None, what: str) -> bytes:
    if path is None:
        raise TlsError(
            f"mutual TLS needs --tls-cert, --tls-key and --tls-ca ({what} is missing); "
            "create them with `fedprompt certs`, or pass --insecure for plaintext"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"cannot read the {what} {path}: {exc.strerror}") from None


def _files(config: TlsConfig) -> tuple[bytes, bytes, bytes]:
    return (
        _read(config.cert, "certificate (--tls-cert)"),
        _read(config.key, "private key (--tls-key)"),
        _read(config.ca, "CA certificate (--tls-ca)"),
    )


def _warn_plaintext(role: str) -> None:
    logger.warning(
        "%s runs WITHOUT TLS (--insecure): traffic is plaintext and peers are not "
        "authenticated; use this on a trusted loopback only",
        role,
    )


def server_credentials(config: TlsConfig, *, role: str = "server") -> grpc.ServerCredentials | None:
    """Server credentials that require a CA-signed client certificate; None with ``insecure``.

    Raises
    ------
    TlsError
        When TLS is asked for (the default) and a file is missing or unreadable.
    """
    if config.insecure:
        _warn_plaintext(role)
        return None
    cert, key, ca = _files(config)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(
    config: TlsConfig, *, role: str = "client"
) -> grpc.ChannelCredentials | None:
    """Channel credentials that present this process's certificate; None with ``insecure``.

    Raises
    ------
    TlsError
        When TLS is asked for (the default) and a file is missing or unreadable.
    """
    if config.insecure:
        _warn_plaintext(role)
        return None
    cert, key, ca = _files(config)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def expected_server_name(config: TlsConfig, *, service: str) -> str:
    """The name a server's certificate must carry on a channel of this process.

    Parameters
    ----------
    config
        The dialling process's TLS settings.
    service
        The identity the server has when ``config.server_name`` is empty
        (:data:`COORDINATOR_IDENTITY` for a client agent's channel).
    """
    return config.server_name or service


def peer_identity(context: AnyContext) -> str | None:
    """The subject CN of the peer's verified certificate; None on a plaintext channel."""
    auth = context.auth_context()
    names = list(auth.get("x509_common_name") or ()) if auth else []
    if not names:
        return None
    first = names[0]
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)


class AllowedPeersInterceptor(grpc.aio.ServerInterceptor):
    """Refuse (``PERMISSION_DENIED``) calls from TLS peers whose CN is not in ``allowed``.

    Health checks are answered for any authenticated peer. On a plaintext server (no
    identity) every call passes: plaintext is an explicit, logged choice.
    """

    def __init__(self, allowed: Collection[str]) -> None:
        self._allowed = frozenset(allowed)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Wrap the handler so that the peer is checked before the servicer runs."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_METHOD_PREFIX):
            return handler
        allowed = self._allowed

        async def check(context: AnyContext) -> None:
            who = peer_identity(context)
            if who is not None and who not in allowed:
                logger.warning("refused %s from peer %r (not an allowed peer)", method, who)
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"peer {who!r} may not call {method}",
                )

        return guard_handler(handler, check)
